"""Distributed helpers that do nothing when not distributed (nanoGPT-style switches).

Under ``torchrun`` the environment variables RANK / WORLD_SIZE / LOCAL_RANK are set; ``setup()`` then
initialises the default process group (gloo on CPU, NCCL on CUDA). Losses that need the global batch
call :func:`gather` which is autograd-aware (:class:`_AllGather`; its backward sums every process's
gradient onto the rank that produced each sample, so DDP's averaging gives the single-process gradient of
the global batch). There is no switch to turn this off. See docs/scaling.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
    )


def setup(device: torch.device) -> DistInfo:
    """Initialise the process group if launched by torchrun; returns this process's rank info."""
    info = env_info()
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


class _AllGather(torch.autograd.Function):
    """All-gather along dim 0 whose backward *sums* every process's gradient onto the owner's slice.

    Summing is what makes DDP's gradient averaging exact (lightly issue #1920: a backward that only
    keeps the local gradient is off by 1/world_size); tests/test_distributed.py checks it.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.b = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        if dist.get_backend() == "nccl":
            out = torch.empty((ctx.b, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter_tensor(out, grad)
            return out
        grad = grad.clone()
        dist.all_reduce(grad)  # gloo: no reduce-scatter, so reduce everything and keep this slice
        return grad[ctx.rank * ctx.b : (ctx.rank + 1) * ctx.b]


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [B, ...] from every process along dim 0, with gradients; identity if single.

    Every process must pass the same B (the loop's per-process batch is global batch / world size).
    """
    if not is_initialized() or dist.get_world_size() == 1:
        return x
    return _AllGather.apply(x.contiguous())


def any_true(flag: bool) -> bool:
    """``flag`` OR-ed over all processes (a signal that reached only some ranks stops all of them together)."""
    if not is_initialized() or dist.get_world_size() == 1:
        return flag
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([int(flag)], device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_int(value: int, src: int = 0) -> int:
    """Rank ``src``'s integer on every process (e.g. the step count fitted to a --time-budget)."""
    if not is_initialized() or dist.get_world_size() == 1:
        return value
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([value], dtype=torch.long, device=dev)
    dist.broadcast(t, src=src)
    return int(t.item())


def is_comm_error(exc: BaseException) -> bool:
    """True for errors of the collective layer (a peer died, a connection broke, a collective timed out)."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("gloo", "NCCL", "Connection reset", "Connection closed", "Broken pipe", "timed out")
    )


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over processes without gradient (statistics such as DINO's center)."""
    if not is_initialized() or dist.get_world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()
