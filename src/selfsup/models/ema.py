"""Exponential moving average teachers (BYOL, MoCo, DINO) and their momentum schedule."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def cosine_momentum(base: float, fraction: float, final: float = 1.0) -> float:
    """BYOL (Grill et al. 2020, Sec. 3.2): tau = 1 - (1 - tau_base) * (cos(pi k / K) + 1) / 2."""
    return final - (final - base) * (math.cos(math.pi * min(max(fraction, 0.0), 1.0)) + 1) / 2


def make_teacher(module: nn.Module) -> nn.Module:
    """A frozen copy that receives no gradient (updated only by :func:`ema_update`)."""
    teacher = copy.deepcopy(module)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- m * teacher + (1 - m) * student, for parameters; buffers (BN stats) are copied."""
    t_params: list[torch.Tensor] = list(teacher.parameters())
    s_params: list[torch.Tensor] = [p.detach() for p in student.parameters()]
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        tb.copy_(sb)


@torch.no_grad()
def ema_update_all(momentum: float, *pairs: tuple[nn.Module, nn.Module]) -> None:
    """:func:`ema_update` of every ``(teacher, student)`` pair with the same momentum."""
    for teacher, student in pairs:
        ema_update(teacher, student, momentum)
