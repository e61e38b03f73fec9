"""Loading saved weights into a module: strictly, with a one-line error that names the file and the mismatch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from selfsup.errors import CheckpointError


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str, source: str | Path) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the file and the mismatch."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{source}: its {what} weights are not a mapping of tensors; pass a checkpoint "
                              "written by `selfsup pretrain`")
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shape:
        detail = []
        if shape:
            k = shape[0]
            detail.append(f"shape of {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        if missing:
            detail.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise CheckpointError(
            f"{source}: weights do not fit this {what} ({'; '.join(detail)}); the checkpoint was made with a "
            "different backbone/method configuration — use the matching --backbone or another checkpoint"
        )
    module.load_state_dict(state, strict=True)


@contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode with no parameter requiring gradients (an attack or probe optimises its inputs,
    not the weights); its training mode and each parameter's ``requires_grad`` are restored afterwards."""
    was, flags = module.training, [p.requires_grad for p in module.parameters()]
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)
        module.train(was)
