"""Distributed helpers that do nothing when not distributed (nanoGPT-style switches).

Under ``torchrun`` the environment variables RANK / WORLD_SIZE / LOCAL_RANK are set; ``setup()`` then
initialises the default process group (gloo on CPU, NCCL on CUDA). Losses that need the global batch
call :func:`gather` which is autograd-aware (``torch.distributed.nn.functional.all_gather``): gradients
flow back to the rank that produced each sample. There is no switch to turn this off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

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


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [B, ...] from every process along dim 0, with gradients; identity if single."""
    if not is_initialized() or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


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
