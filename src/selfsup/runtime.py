"""Device, precision and thread settings: switches that do nothing when off."""

from __future__ import annotations

import contextlib
import os
from functools import lru_cache

import torch

from .errors import ConfigError


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 instructions (AVX512-BF16 or AMX); otherwise bf16 is emulated and slow."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return dev


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, str]:
    """Return (autocast dtype or None for fp32, a note for the log)."""
    p = precision.lower()
    if p not in ("auto", "bf16", "fp16", "fp32"):
        raise ConfigError(f"--precision {precision}: choose auto, bf16, fp16 or fp32")
    if device.type == "cuda":
        if p == "auto":
            p = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[p], p
    if p == "fp16":
        raise ConfigError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    if p == "auto":
        if cpu_has_bf16():
            return torch.bfloat16, "bf16 (CPU has native bf16)"
        return None, "fp32 (this CPU has no native bf16; bf16 would be emulated and slower)"
    return (torch.bfloat16, "bf16") if p == "bf16" else (None, "fp32")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def set_threads(threads: int | None, local_world_size: int = 1) -> int:
    """Use every core this process is entitled to, and no more (no oversubscription under torchrun)."""
    if threads is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
        threads = max(1, cores // max(1, local_world_size))
    torch.set_num_threads(threads)
    return threads
