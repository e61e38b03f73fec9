"""One optimisation step: forward, loss, backward, optimizer step, the method's after-step hook.

The training loop and ``benchmarks/bench_step.py`` both call :func:`train_step`. Mixed precision is a switch:
``amp_dtype=None`` runs in full precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from selfsup.errors import TrainingDiverged
from selfsup.methods import Batch, Method, Progress, StepOutput
from selfsup.runtime import autocast
from selfsup.training.optim import clip_gradients


@dataclass
class StepResult:
    out: StepOutput  # the method's output (its loss still attached to the graph)
    grad_norm: float | None  # global gradient norm before clipping; None without clipping


def train_step(
    model: nn.Module,
    method: Method,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    progress: Progress,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    clip_grad: float | None = None,
    checkpoint: Path | None = None,
) -> StepResult:
    """One step on ``batch``. ``model`` is what runs the forward pass (``method`` itself, or its DDP / compiled
    wrapper); ``method`` gets the hooks. ``checkpoint``: named in the error when the loss is not finite."""
    with autocast(device, amp_dtype):
        out: StepOutput = model(batch, progress)
    loss = out.loss
    if not torch.isfinite(loss):
        hint = (f"last good checkpoint: {checkpoint}" if checkpoint is not None and checkpoint.exists()
                else "no checkpoint was saved yet")
        raise TrainingDiverged(
            f"loss became {float(loss.detach())} at step {progress.step} (epoch {progress.epoch}); {hint}; lower the "
            "learning rate (--lr), add --set optim.clip_grad=1.0, or use --precision fp32"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = clip_gradients(model, clip_grad)  # a DDP / compiled wrapper lists the method's parameters
    optimizer.step()
    method.after_step(progress)
    return StepResult(out, grad_norm)

