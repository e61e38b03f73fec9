"""Optimisers and the learning-rate schedule.

- SGD and AdamW from torch; LARS from timm (``timm.optim.Lars``, You et al. 2017), which skips the
  trust-ratio adaptation for parameter groups without weight decay.
- Weight-decay exclusion: biases and normalisation parameters (all tensors with ndim <= 1) get no
  weight decay and hence no LARS adaptation, as in SimCLR/BYOL.
- Schedule: linear warmup from 0, then half-cosine down to ``min_lr``, evaluated per step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from selfsup.config import OptimConfig
from selfsup.errors import ConfigError

OPTIMIZERS = ("sgd", "lars", "adamw")


def param_groups(module: nn.Module, weight_decay: float, exclude_norm_bias: bool = True,
                 custom: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Split trainable parameters into decayed and non-decayed groups.

    ``custom``: a method's own groups (``Method.param_groups()``, e.g. SimSiam's predictor with a fixed LR:
    ``{"params": [...], "fixed_lr": True}``), each split again by the same rule; None: all of ``module``'s
    trainable parameters.
    """
    base_groups = custom if custom is not None else [{"params": [p for p in module.parameters() if p.requires_grad]}]
    groups: list[dict[str, Any]] = []
    for g in base_groups:
        params = [p for p in g["params"] if p.requires_grad]
        extra = {k: v for k, v in g.items() if k != "params"}
        decay = [p for p in params if not (exclude_norm_bias and p.ndim <= 1)]
        no_decay = [p for p in params if exclude_norm_bias and p.ndim <= 1]
        if decay:
            groups.append({"params": decay, "weight_decay": weight_decay, **extra})
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0, **extra})
    return groups


def build_optimizer(cfg: OptimConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """``cfg`` must be resolved (name, lr, weight_decay set)."""
    assert cfg.lr is not None and cfg.weight_decay is not None and cfg.name is not None
    name = cfg.name.lower()
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.betas or (0.9, 0.999))[:2], weight_decay=cfg.weight_decay)
    if name == "lars":
        from timm.optim import Lars

        return Lars(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ConfigError(f"unknown optimizer '{cfg.name}'; choose one of: {', '.join(OPTIMIZERS)}")


def lr_at(step: int, total_steps: int, warmup_steps: int, peak_lr: float, min_lr: float = 0.0) -> float:
    """Linear warmup to ``peak_lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, lr: float, peak_lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = peak_lr if g.get("fixed_lr") else lr


def clip_gradients(module: nn.Module, max_norm: float | None) -> float | None:
    if not max_norm:
        return None
    params = [p for p in module.parameters() if p.grad is not None]
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
