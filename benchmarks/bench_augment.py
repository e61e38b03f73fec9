"""Augmentation cost of 2 SimCLR views at 32 px, µs per image, side by side in one run.

Contenders (same SimCLR CIFAR recipe: random resized crop 0.08-1, flip, colour jitter s=0.5 p 0.8,
grayscale p 0.2, no blur, normalise):
- selfsup: ``selfsup.augment.views.make_views`` on uint8 batches from the cache (bf16 and fp32 output, channels_last);
  every sample gets its own parameters (checked below);
- lightly: ``SimCLRTransform`` on PIL images in a DataLoader with 2 workers (its documented CPU setup),
  and the same transform in the main process (per-core cost);
- torchvision v2 per sample: a Python loop calling a v2 pipeline on each uint8 tensor image.

selfsup is measured with its exact torchvision colour ops in both backends (the default on a CPU: the fused
numba kernel, ``selfsup.augment.kernel``; and the batched torch ops, ``backend="torch"``, what CUDA runs) and with
``colour="linear"`` (the same jitter as one per-sample affine colour map, YIQ hue rotation; see
``selfsup.augment.views.make_views``).

    .venv/bin/python benchmarks/bench_augment.py [--batch 256] [--images 2048] [--repeats 5] [--compile]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from selfsup.augment.recipes import ViewRecipe, simclr_recipe  # noqa: E402
from selfsup.augment.views import make_views  # noqa: E402


def views_of_a_random_batch(images: np.ndarray, batch: int, rng: np.random.Generator, recipe: ViewRecipe,
                            gen: torch.Generator, dtype: torch.dtype, compiled: bool = False,
                            colour: str = "exact", backend: str = "auto") -> None:
    """One training-loop step's augmentation: a sorted memmap gather of ``batch`` random images, make_views."""
    idx = np.sort(rng.choice(images.shape[0], batch, replace=False))
    x = torch.from_numpy(images[idx])  # fancy indexing copies: contiguous and writable
    make_views(x, recipe, gen, channels_last=True, dtype=dtype, compiled=compiled, colour=colour, backend=backend)


def bench_ours(images: np.ndarray, batch: int, repeats: int, dtype: torch.dtype,
               compiled: bool = False, colour: str = "exact", backend: str = "auto") -> tuple[list[float], bool]:
    recipe = simclr_recipe(32, strength=0.5)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    times = common.timed(
        lambda: views_of_a_random_batch(images, batch, rng, recipe, gen, dtype, compiled, colour, backend),
        repeats, warmup=2)
    x = torch.from_numpy(np.array(images[:batch]))
    _, params = make_views(x, recipe, gen, channels_last=True, dtype=dtype, colour=colour, backend=backend)
    per_sample = all(torch.unique(p.boxes, dim=0).shape[0] == batch for p in params)
    return [t / batch * 1e6 for t in times], per_sample


def bench_lightly(images: np.ndarray, workers: int, repeats: int) -> list[float]:
    ds = common.PILDataset(images, common.lightly_transform(32))
    if workers == 0:
        def one() -> None:
            for i in range(len(ds)):
                ds[i]
        return [t / len(ds) * 1e6 for t in common.timed(one, repeats, warmup=0)]
    loader = torch.utils.data.DataLoader(ds, batch_size=128, shuffle=True, num_workers=workers,
                                         persistent_workers=True, drop_last=True)
    out = []
    for r in range(repeats + 1):  # the first epoch pays for starting the workers
        t0 = time.perf_counter()
        n = 0
        for (v0, _v1), _ in loader:
            n += v0.shape[0]
        if r:
            out.append((time.perf_counter() - t0) / n * 1e6)
    return out


def bench_paired(images: np.ndarray, batch: int, rounds: int) -> dict[str, list[float]]:
    """Ratios measured in alternation: each round times lightly's SimCLRTransform on ``batch`` images in this
    process (1 core), then selfsup's make_views on one batch with 2 threads and with 1 thread. On a VM whose speed
    drifts by 15-25% between minutes, back-to-back sections give unsteady ratios; a ratio within one round
    compares contenders under the same conditions, and the median over rounds is robust to a disturbed round.
    """
    recipe = simclr_recipe(32, strength=0.5)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(1)
    lightly_images = images[:batch]
    threads = common.cores()

    def ours_us(nthreads: int, colour: str = "exact", backend: str = "auto") -> float:
        torch.set_num_threads(nthreads)
        (t,) = common.timed(
            lambda: views_of_a_random_batch(images, batch, rng, recipe, gen, torch.bfloat16, colour=colour,
                                            backend=backend), 1, 0)
        return t / batch * 1e6

    arms = {"ours": (threads, "exact", "auto"), "ours_1t": (1, "exact", "auto"),
            "ours_torch": (threads, "exact", "torch"), "ours_linear": (threads, "linear", "auto")}
    for arm in arms.values():  # warm-up
        ours_us(*arm)
    out: dict[str, list[float]] = {"lightly": [], **{k: [] for k in arms}}
    for _ in range(rounds):
        out["lightly"].extend(bench_lightly(lightly_images, 0, 1))
        for key, arm in arms.items():
            out[key].append(min(ours_us(*arm) for _ in range(2)))
    common.set_threads()
    return out


def bench_tv2(images: np.ndarray, repeats: int) -> list[float]:
    from torchvision.transforms import v2

    tf = v2.Compose([
        v2.RandomResizedCrop(32, scale=(0.08, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)

    def one() -> None:
        for img in x:
            tf(img)
            tf(img)

    return [t / x.shape[0] * 1e6 for t in common.timed(one, repeats, warmup=0)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256, help="selfsup batch (the CPU preset's)")
    ap.add_argument("--images", type=int, default=2048, help="images per lightly/torchvision epoch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", action="store_true",
                    help="also measure make_views(compiled=True) (--compile's torch.compiled colour ops)")
    ap.add_argument("--paired-rounds", type=int, default=15,
                    help="rounds of the interleaved lightly-vs-selfsup ratio measurement (0 skips it)")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = ap.parse_args()
    common.set_threads()
    images, _, source = common.cifar_uint8("train")
    sub = np.array(images[: args.images])  # a writable copy (the cache memmap is read-only)
    rows: list[dict[str, Any]] = []

    def add(name: str, us: list[float], extra: str = "") -> None:
        best, med = common.summary(us)
        rows.append({"pipeline": name, "best µs/img": best, "median µs/img": med, "notes": extra,
                     "load": common.load()})
        print(f"{name:55s} best {best:8.1f}  median {med:8.1f} µs/image (2 views)  load {common.load()}", flush=True)

    for dtype in (torch.bfloat16, torch.float32):
        us, ps = bench_ours(images, args.batch, args.repeats, dtype)
        add(f"selfsup make_views, batch {args.batch}, {str(dtype)[6:]} channels_last (numba kernel, default)", us,
            f"per-sample params: {'yes' if ps else 'NO'}; {common.cores()} threads")
    us, ps = bench_ours(images, args.batch, args.repeats, torch.bfloat16, backend="torch")
    add(f"selfsup make_views, batch {args.batch}, bfloat16, torch ops (view_backend=torch)", us,
        f"per-sample params: {'yes' if ps else 'NO'}; {common.cores()} intra-op threads")
    us, ps = bench_ours(images, args.batch, args.repeats, torch.bfloat16, colour="linear")
    add(f"selfsup make_views, batch {args.batch}, bfloat16, linear colour (data.colour=linear)", us,
        f"per-sample params: {'yes' if ps else 'NO'}; one affine colour map per sample, YIQ hue")
    if args.compile:
        t0 = time.perf_counter()
        bench_ours(images, args.batch, 0, torch.bfloat16, compiled=True, backend="torch")  # compiles (not timed)
        t_compile = time.perf_counter() - t0
        us, ps = bench_ours(images, args.batch, args.repeats, torch.bfloat16, compiled=True, backend="torch")
        add(f"selfsup make_views, batch {args.batch}, bfloat16, torch ops compiled (--compile, view_backend=torch)", us,
            f"per-sample params: {'yes' if ps else 'NO'}; first call {t_compile:.0f} s (compilation)")
    torch.set_num_threads(1)  # per-core cost, comparable with lightly's main-process row; robust to load
    us, ps = bench_ours(images, args.batch, args.repeats, torch.bfloat16)
    add(f"selfsup make_views, batch {args.batch}, bfloat16, 1 thread (numba kernel)", us, "per-core cost")
    us, ps = bench_ours(images, args.batch, args.repeats, torch.bfloat16, backend="torch")
    add(f"selfsup make_views, batch {args.batch}, bfloat16, 1 thread (torch ops)", us, "per-core cost")
    common.set_threads()
    add("lightly SimCLRTransform + DataLoader(2 workers), PIL", bench_lightly(sub, 2, max(2, args.repeats // 2)),
        "2 worker processes, batch 128")
    add("lightly SimCLRTransform, main process (1 core)", bench_lightly(sub[:1024], 0, 2), "per-core cost")
    add("torchvision v2 per sample (loop), uint8 tensors", bench_tv2(sub[:1024], 2), "1 process")

    ours = float(rows[0]["best µs/img"])
    for r in rows:
        r["vs selfsup bf16"] = f"{float(r['best µs/img']) / ours:.1f}x"
    cols = ["pipeline", "best µs/img", "median µs/img", "vs selfsup bf16", "load", "notes"]
    tab = common.table(rows, cols)
    print(tab)
    paired = ""
    if args.paired_rounds:
        p = bench_paired(images, args.batch, args.paired_rounds)
        lt = np.array(p["lightly"])
        prow = []
        for key, what in (("ours", f"numba kernel, {common.cores()} threads"), ("ours_1t", "numba kernel, 1 thread"),
                          ("ours_torch", f"torch ops, {common.cores()} threads"),
                          ("ours_linear", f"{common.cores()} threads, linear colour")):
            ratio = lt / np.array(p[key])
            prow.append({"ratio": f"lightly SimCLRTransform (1 core) / selfsup bf16 ({what})",
                         "median ratio": f"{np.median(ratio):.1f}x",
                         "min-max over rounds": f"{ratio.min():.1f}-{ratio.max():.1f}x",
                         "selfsup median µs/img": f"{np.median(p[key]):.1f}",
                         "lightly median µs/img": f"{np.median(lt):.0f}"})
        paired = common.table(prow, list(prow[0]))
        print(paired)
        paired = (f"\n\nInterleaved ({args.paired_rounds} rounds; each: lightly on {args.batch} images in this "
                  f"process, then selfsup's arms on one batch of {args.batch} each, best of 2; ratio per round, then the "
                  "median):\n\n" + paired)
    head = common.header({"data": source, "target": "selfsup >= 20x cheaper than lightly's DataLoader path"})
    print(head)  # also with --no-write: command, date, machine, peak RSS for a hand-written RESULTS entry
    if not args.no_write:
        body = head + ("\n\nµs per image for BOTH views (lower is better); best and median of the repeats. "
                 "'load' is the 1/5/15-min load average when the row finished.\n\n" + tab + paired)
        common.update_section("Augmentation: 2 SimCLR views at 32 px (bench_augment.py)", body)


if __name__ == "__main__":
    main()
