"""One optimisation step: forward, loss, backward, optimizer step, the method's after-step hook.

The training loop and ``benchmarks/bench_step.py`` both call :func:`train_step`. Mixed precision is a switch:
``amp_dtype=None`` runs in full precision.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from selfsup.augment.recipes import ViewParams
from selfsup.errors import TrainingDiverged
from selfsup.methods import Batch, Method, Progress, StepOutput
from selfsup.runtime import autocast
from selfsup.training.optim import clip_gradients


@dataclass
class StepResult:
    out: StepOutput  # the method's output (its loss still attached to the graph)
    grad_norm: float | None  # global gradient norm before clipping; None without clipping


def micro_batches(batch: Batch, n: int) -> list[Batch]:
    """``batch`` cut into ``n`` consecutive slices of its samples (every view, index and view parameter alike);
    empty slices (a batch smaller than ``n``) are left out."""
    if n == 1:
        return [batch]
    b = batch.index.shape[0]
    bounds = [(b * k // n, b * (k + 1) // n) for k in range(n)]
    return [Batch([v[i:j] for v in batch.views], batch.index[i:j],
                  [ViewParams(p.boxes[i:j], p.flip[i:j], None if p.sizes is None else p.sizes[i:j])
                   for p in batch.params])
            for i, j in bounds if j > i]


def _merge(outs: list[StepOutput], weights: list[float], loss: torch.Tensor) -> StepOutput:
    """One output for the whole batch: the loss (detached), logs weighted by micro-batch size, all embeddings."""
    if len(outs) == 1:
        return outs[0]
    logs = {k: sum(w * o.logs[k] for o, w in zip(outs, weights)) for k in outs[0].logs}
    embs = [o.embeddings for o in outs if o.embeddings is not None]
    return StepOutput(loss, logs, torch.cat(embs) if len(embs) == len(outs) else None)


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
    accumulate_steps: int = 1,
) -> StepResult:
    """One step on ``batch``. ``model`` is what runs the forward pass (``method`` itself, or its DDP / compiled
    wrapper); ``method`` gets the hooks. ``checkpoint``: named in the error when the loss is not finite.

    ``accumulate_steps`` > 1 (only for methods whose loss is a mean of per-sample terms; the config refuses the
    others): forward and backward on that many slices of the batch, each loss weighted by its share of the batch,
    so the summed gradient is the full batch's; then one clip, one optimizer step, one ``after_step``."""
    parts = micro_batches(batch, accumulate_steps)
    b = batch.index.shape[0]
    weights = [p.index.shape[0] / b for p in parts]
    optimizer.zero_grad(set_to_none=True)
    outs: list[StepOutput] = []
    total = torch.zeros((), device=device)
    for k, (part, w) in enumerate(zip(parts, weights)):
        # DDP: all-reduce the gradients once, with the last micro-batch's backward
        ddp = model if isinstance(model, nn.parallel.DistributedDataParallel) else None
        with ddp.no_sync() if ddp is not None and k < len(parts) - 1 else contextlib.nullcontext():
            with autocast(device, amp_dtype):
                out: StepOutput = model(part, progress)
            loss = out.loss
            if not torch.isfinite(loss):
                hint = (f"last good checkpoint: {checkpoint}" if checkpoint is not None and checkpoint.exists()
                        else "no checkpoint was saved yet")
                raise TrainingDiverged(
                    f"loss became {float(loss.detach())} at step {progress.step} (epoch {progress.epoch}); {hint}; "
                    "lower the learning rate (--lr), add --set optim.clip_grad=1.0, or use --precision fp32"
                )
            (loss * w if len(parts) > 1 else loss).backward()
        outs.append(out)
        total = total + w * loss.detach().float()
    grad_norm = clip_gradients(model, clip_grad)  # a DDP / compiled wrapper lists the method's parameters
    optimizer.step()
    method.after_step(progress)
    return StepResult(_merge(outs, weights, total), grad_norm)
