"""Device, precision and thread settings: switches that do nothing when off."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from functools import lru_cache
from typing import Any

import torch

from selfsup.errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return dev


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True on x86 CPUs with native bf16 matmul (AVX512-BF16 or AMX-BF16).

    Reads the ``flags`` line of ``/proc/cpuinfo`` (Linux); ``torch.backends.cpu.get_cpu_capability()``
    is checked too for builds that report AMX. Without native support bf16 autocast is emulated and
    slower than fp32, so "auto" picks fp32 there.
    """
    try:
        cap = str(torch.backends.cpu.get_cpu_capability()).upper()
    except Exception:  # pragma: no cover - very old torch
        cap = ""
    if "AMX" in cap or "BF16" in cap:
        return True
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def precision_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """Map ``auto | bf16 | fp16 | fp32`` to an autocast dtype on ``device`` (None = plain fp32).

    "auto" -> bf16 on CUDA GPUs that support it and on CPUs with native bf16, else fp32.
    "fp16" is CUDA only (CPU fp16 autocast is slow and loses accuracy): raises ConfigError elsewhere.
    """
    device = torch.device(device)
    p = str(precision).lower()
    aliases = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "32": "fp32"}
    p = aliases.get(p, p)
    if p not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'; choose one of: {', '.join(PRECISIONS)}")
    if p == "fp32":
        return None
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if p == "auto":
            return torch.bfloat16 if bf16_ok else None
        if p == "bf16" and not bf16_ok:
            raise ConfigError("precision 'bf16' is not supported by this GPU; use --precision fp16 or fp32")
        return torch.bfloat16 if p == "bf16" else torch.float16
    if p == "fp16":
        raise ConfigError(
            f"precision 'fp16' needs a CUDA GPU (device is {device.type}); use --precision bf16, fp32 or auto"
        )
    if device.type == "cpu":
        if p == "auto":
            return torch.bfloat16 if cpu_supports_bf16() else None
        return torch.bfloat16
    # mps and other backends: fp32 unless bf16 is requested explicitly
    return torch.bfloat16 if p == "bf16" else None


def autocast_context(device: torch.device | str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op context when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, str]:
    """(autocast dtype or None for fp32, a note for the run log)."""
    dtype = precision_dtype(precision, device)
    name = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[dtype]
    if device.type == "cpu" and str(precision).lower() == "auto":
        why = "CPU has native bf16" if dtype is not None else "this CPU has no native bf16; emulated bf16 is slower"
        return dtype, f"{name} ({why})"
    return dtype, name


autocast = autocast_context  # the training loop's name for it


def check_compile_toolchain(device: torch.device) -> None:
    """``--compile`` on a CPU: torch.compile's inductor backend builds C++ kernels at run time, so without a
    compiler the first step would die deep inside inductor. Say so up front instead."""
    if device.type != "cpu":
        return
    candidates = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    if not any(c and shutil.which(c) for c in candidates):
        raise ConfigError(
            "--compile on a CPU needs a C++ compiler (torch.compile builds C++ kernels): install one "
            "(e.g. `apt install g++`, or set CXX) or run without --compile"
        )


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


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


@lru_cache(maxsize=1)
def tune_allocator() -> bool:
    """Keep freed tensor memory in the heap instead of handing it back to the OS after every op (glibc only).

    PyTorch's CPU allocator calls malloc/free for every tensor. glibc serves blocks above 128 KiB with a fresh
    mmap and returns them with munmap (and trims the heap top), so each new activation or augmentation buffer
    is page-faulted in again (the measured cost is in benchmarks/RESULTS.md, "Notes moved from code"). PyTorch's
    CPU tuning guide suggests jemalloc/tcmalloc for this; the mallopt switches below
    get the same effect without a dependency: blocks up to 32 MiB (glibc's maximum) come from the heap, freed
    memory is kept for reuse (trim threshold 1 GiB) and the heap grows in 64 MiB steps. Peak RSS is unchanged;
    RSS no longer shrinks after a peak. Set ``SELFSUP_MALLOC_TUNING=0`` to leave malloc alone. Returns True
    when applied. Idempotent.
    """
    if os.environ.get("SELFSUP_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        if not hasattr(libc, "mallopt"):
            return False
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
        ok &= libc.mallopt(_M_TOP_PAD, 64 << 20)
        return bool(ok)
    except OSError:  # not glibc (musl, macOS): nothing to tune
        return False


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); CPU for a module with neither."""
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")
