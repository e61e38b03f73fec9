"""Shared helpers for the CPU benchmarks: machine facts, load, peak RSS, roofline, lightly's recipe, RESULTS.md.

Every benchmark measures its contenders side by side in one process/run on the same machine, prints a
table and replaces its own ``## <title>`` section of ``benchmarks/RESULTS.md`` (other sections are kept).
lightly is imported here only for the peer comparison; ``src/selfsup`` never imports it.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
CIFAR_DIR = Path(os.environ.get("SELFSUP_CIFAR", "/tmp/cifar/cifar10"))
CIFAR_TAR = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"


# ------------------------------------------------------------------------------------------ machine


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_line() -> str:
    flags = cpu_flags()
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        isa = "AVX-512 bf16"
    elif "avx512f" in flags:
        isa = "AVX-512 without native bf16: fp32"
    else:
        isa = "AVX2 only, no native bf16: fp32"
    return (f"{cpu_model()}, {cores()} cores ({isa}); torch {torch.__version__}, "
            f"{torch.get_num_threads()} intra-op threads")


def load() -> str:
    """1/5/15-minute load averages: > cores means other processes compete for the CPU (noisy timings)."""
    a, b, c = os.getloadavg()
    return f"{a:.1f}/{b:.1f}/{c:.1f}"


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident set size of this process (and, if asked, the largest waited-for child), MiB."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if children:
        r = max(r, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    return r


def set_threads() -> int:
    """One intra-op thread per core and no oversubscription (what selfsup.runtime.set_threads does), and
    selfsup's malloc tuning (process-wide, so every contender in the run, lightly included, gets it; the
    DataLoader workers inherit it through fork). ``SELFSUP_MALLOC_TUNING=0`` measures without it."""
    from selfsup.runtime import tune_allocator

    tune_allocator()
    n = cores()
    torch.set_num_threads(n)
    return n


def malloc_line() -> str:
    off = os.environ.get("SELFSUP_MALLOC_TUNING", "1") == "0"
    return "glibc malloc defaults (SELFSUP_MALLOC_TUNING=0)" if off else "selfsup malloc tuning on (runtime.tune_allocator)"


# ------------------------------------------------------------------------------------------ timing


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of each of ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def summary(xs: list[float]) -> tuple[float, float]:
    """(best, median): on a shared machine the best repeat is the least disturbed one."""
    return min(xs), float(np.median(xs))


def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    """Measured GFLOP/s of a large square matmul in ``dtype`` (best of several timed blocks)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b  # warm-up (oneDNN kernel selection)
    best = 0.0
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for _ in range(3):
            a @ b
        dt = (time.perf_counter() - t0) / 3
        best = max(best, 2 * n**3 / dt / 1e9)
    return best


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (forward + backward if it calls backward), by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


# ------------------------------------------------------------------------------------------ data


def ensure_cifar() -> Path | None:
    """/tmp/cifar/cifar10 (extracted from ../shared/data on first use), or None when the archive is absent."""
    if (CIFAR_DIR / "train").is_dir() and (CIFAR_DIR / "test").is_dir():
        return CIFAR_DIR
    if not CIFAR_TAR.is_file():
        return None
    CIFAR_DIR.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-xzf", str(CIFAR_TAR), "-C", str(CIFAR_DIR.parent)], check=True)
    return CIFAR_DIR


def cifar_uint8(split: str = "train", limit: int | None = None) -> tuple[np.ndarray, np.ndarray | None, str]:
    """CIFAR-10 as the selfsup uint8 cache ([N, 32, 32, 3] memmap) + labels, or random pixels if absent."""
    root = ensure_cifar()
    if root is None:
        rng = np.random.default_rng(0)
        n = limit or 4096
        return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), None, "random uint8 (CIFAR-10 not found)"
    from selfsup.data import open_dataset

    ds = open_dataset(str(root / split), 32, progress=False)
    imgs, labels = ds.images, ds.labels
    if limit is not None:
        imgs, labels = imgs[:limit], (labels[:limit] if labels is not None else None)
    return imgs, labels, f"CIFAR-10 {split} (selfsup uint8 cache)"


# ------------------------------------------------------------------------------------------ lightly


def lightly_transform(size: int = 32) -> Any:
    """lightly's documented CIFAR-10 SimCLR transform (cifar10_benchmark.py): cj 0.5, no blur."""
    from lightly.transforms import SimCLRTransform

    return SimCLRTransform(input_size=size, cj_strength=0.5, gaussian_blur=0.0)


class LightlySimCLR(torch.nn.Module):
    """lightly's CIFAR-10 benchmark model: ResNetGenerator('resnet-18') trunk + SimCLRProjectionHead(512, 512, 128)."""

    def __init__(self) -> None:
        super().__init__()
        from lightly.loss import NTXentLoss
        from lightly.models import ResNetGenerator
        from lightly.models.modules import SimCLRProjectionHead

        resnet = ResNetGenerator("resnet-18")
        self.backbone = torch.nn.Sequential(*list(resnet.children())[:-1], torch.nn.AdaptiveAvgPool2d(1))
        self.projection_head = SimCLRProjectionHead(512, 512, 128)
        self.criterion = NTXentLoss()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x).flatten(start_dim=1)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        z0 = self.projection_head(self.features(x0))
        z1 = self.projection_head(self.features(x1))
        return self.criterion(z0, z1)


def lightly_optimizer(model: torch.nn.Module, batch_size: int = 128) -> torch.optim.Optimizer:
    """cifar10_benchmark.py: SGD lr 6e-2 * batch/128, momentum 0.9, weight decay 5e-4."""
    return torch.optim.SGD(model.parameters(), lr=6e-2 * batch_size / 128, momentum=0.9, weight_decay=5e-4)


class PILDataset(torch.utils.data.Dataset):
    """uint8 [N, H, W, 3] rows as PIL images through ``transform`` (lightly's per-sample CPU path)."""

    def __init__(self, images: np.ndarray, transform: Any) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> Any:
        from PIL import Image

        return self.transform(Image.fromarray(np.asarray(self.images[i]))), 0


def lightly_folder_loader(root: Path, batch_size: int = 128, workers: int = 2, shuffle: bool = True) -> Any:
    """lightly's benchmark input pipeline: LightlyDataset over the JPEG folder + SimCLRTransform + 2 workers."""
    from lightly.data import LightlyDataset

    ds = LightlyDataset(input_dir=str(root), transform=lightly_transform(32))
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=True,
                                       num_workers=workers, persistent_workers=workers > 0)


# ------------------------------------------------------------------------------------------ RESULTS.md


def clean_run_dir(arm: Path) -> Path:
    """The clean encoder's run folder of a backdoor arm: ``arm/clean`` for a lone audit, the table's shared
    ``clean/`` beside the arms for bench_security.py."""
    return arm / "clean" if (arm / "clean").is_dir() else arm.parent / "clean"


def command_line() -> str:
    return ".venv/bin/python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def header(extra: dict[str, str] | None = None) -> str:
    lines = [
        f"- command: `{command_line()}`",
        f"- date: {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        f"- machine: {machine_line()}",
        f"- load average (1/5/15 min) at the end: {load()} (> {cores()} means a shared, noisy machine)",
        f"- peak RSS: {peak_rss_mb():.0f} MiB (this process), {peak_rss_mb(children=True):.0f} MiB (incl. workers)",
        f"- allocator: {malloc_line()}",
    ]
    for k, v in (extra or {}).items():
        lines.append(f"- {k}: {v}")
    return "\n".join(lines)


def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.3g}"
        return str(v)

    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        out.append("| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |")
    return "\n".join(out)


def write_text(path: Path | str, text: str) -> None:
    """Write a result file atomically (a temporary beside it, then a rename): an interrupted benchmark never
    leaves half a JSON or half of RESULTS.md."""
    from selfsup.checkpoint import atomic_write_text

    atomic_write_text(path, text)


def update_section(title: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the ``## title`` section of RESULTS.md, keeping every other section."""
    text = path.read_text() if path.exists() else (
        "# Benchmark results\n\nOne `##` section per benchmark, each rewritten by its script "
        "(see benchmarks/README.md). Numbers are only comparable within a section (same run, same machine).\n"
    )
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.strip() == f"## {title}"), None)
    new = [f"## {title}", "", *body.strip().splitlines(), ""]
    if start is None:
        lines = [*lines, "", *new] if lines and lines[-1].strip() else [*lines, *new]
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        lines = lines[:start] + new + lines[end:]
    write_text(path, "\n".join(lines).rstrip() + "\n")
    print(f"updated section '## {title}' in {path.relative_to(ROOT)}")


@contextmanager
def note(msg: str) -> Iterator[None]:
    t0 = time.perf_counter()
    print(f"... {msg}", flush=True)
    yield
    print(f"    done in {time.perf_counter() - t0:.1f} s (load {load()})", flush=True)
