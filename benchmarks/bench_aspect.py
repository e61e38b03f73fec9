"""Native-aspect data layer: view cost against the previous square layer, photo views against lightly, cache builds.

Three measurements, side by side in one run:
1. CIFAR-10 (square 32 px rows): ``make_views`` of this tree against a baseline tree (``--baseline SRC``, e.g. a
   ``git worktree`` of the last square-cache commit), 2 SimCLR views, bf16, in alternating child processes (a
   round times each tree once; the median over rounds is robust to a drifting machine).
2. A folder of non-square photos (scikit-image's real photos cut to 4:3, 3:2, 3:1 panoramas and 2:3 portraits,
   or generated ones when scikit-image is absent) at 96 px views: selfsup (the native-aspect cache + make_views)
   against lightly's ``SimCLRTransform(input_size=96)`` on the same photos (decoded PIL images, 1 core).
3. Cache build time and size: CIFAR-10 train and the photo folder, into fresh cache folders.

    .venv/bin/python benchmarks/bench_aspect.py --baseline /tmp/base/src [--rounds 9] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# The child measures make_views of whichever selfsup its sys.path finds first (this tree or the baseline's).
CHILD = r"""
import json, sys, time
import numpy as np, torch
from selfsup.data import open_dataset
try:
    from selfsup.augment.views import make_views, simclr_recipe
except ImportError:  # a baseline tree from before the augment/ package
    from selfsup.views import make_views, simclr_recipe
ds = open_dataset(sys.argv[1], 32, progress=False)
images, batch, reps = ds.images, int(sys.argv[2]), int(sys.argv[3])
recipe, gen, rng = simclr_recipe(32, strength=0.5), torch.Generator().manual_seed(0), np.random.default_rng(0)
def one():
    idx = np.sort(rng.choice(images.shape[0], batch, replace=False))
    make_views(torch.from_numpy(images[idx]), recipe, gen, channels_last=True, dtype=torch.bfloat16)
for _ in range(2):
    one()
ts = []
for _ in range(reps):
    t0 = time.perf_counter(); one(); ts.append(time.perf_counter() - t0)
print(json.dumps(min(ts) / batch * 1e6))
"""


def child_us(src: Path, data: Path, batch: int, reps: int) -> float:
    # each tree keeps its own data cache (the formats differ), beside its sources
    env = {**os.environ, "PYTHONPATH": str(src), "SELFSUP_CACHE": str(src.parent / ".cache" / "bench-aspect")}
    out = subprocess.run([sys.executable, "-c", CHILD, str(data), str(batch), str(reps)], env=env,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def photo_folder(root: Path, n: int) -> Path:
    """``n`` non-square photos: scikit-image's real photos cut to several aspect ratios (or generated ones)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    try:
        from skimage import data as skd

        names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
                 "motorcycle_left", "cat", "colorwheel"]
        photos = []
        for name in names:
            fn = getattr(skd, name, None)
            if fn is None:
                continue
            try:
                a = np.asarray(fn())
            except Exception:  # a photo that needs an optional download in this scikit-image: skip it
                continue
            if a.ndim == 3 and a.shape[2] >= 3:
                photos.append(a[..., :3].astype(np.uint8))
        source = f"scikit-image's real photos ({len(photos)})"
    except ImportError:
        photos, source = [], ""
    if not photos:
        rng = np.random.default_rng(0)
        photos = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(4)]
        source = "generated noise photos (scikit-image not installed)"
    aspects = [(3, 4), (2, 3), (1, 3), (3, 2), (1, 1)]  # h:w  4:3, 3:2, 3:1 panorama, 2:3 portrait, square
    rng = np.random.default_rng(1)
    for i in range(n):
        a = photos[i % len(photos)]
        ah, aw = aspects[i % len(aspects)]
        h, w = a.shape[:2]
        scale = min(h / ah, w / aw) * rng.uniform(0.6, 1.0)
        ch, cw = max(8, int(ah * scale)), max(8, int(aw * scale))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        Image.fromarray(a[top : top + ch, left : left + cw]).save(root / f"photo_{i:04d}.jpg", quality=90)
    (root / "SOURCE").write_text(source)
    return root


def timed_open(path: Path, size: int, cache: Path) -> tuple[Any, float, int]:
    from selfsup.data import open_dataset

    t0 = time.perf_counter()
    ds = open_dataset(str(path), size, cache_dir=str(cache), progress=False)
    seconds = time.perf_counter() - t0
    nbytes = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    return ds, seconds, nbytes


def photo_views(ds: Any, batch: int, reps: int, dtype: torch.dtype) -> float:
    from selfsup.augment.views import make_views, simclr_recipe
    from selfsup.data import gather

    recipe, gen, rng = simclr_recipe(96, strength=0.5), torch.Generator().manual_seed(0), np.random.default_rng(0)

    def one() -> None:
        idx = np.sort(rng.choice(len(ds), batch, replace=False))
        images, sizes = gather(ds.images, idx)
        make_views(images, recipe, gen, channels_last=True, dtype=dtype, sizes=sizes)

    return min(common.timed(one, reps, warmup=2)) / batch * 1e6


def lightly_photo_views(folder: Path, reps: int) -> float:
    from PIL import Image

    tf = common.lightly_transform(96)
    imgs = [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.jpg"))]
    for im in imgs:
        im.load()

    def one() -> None:
        for im in imgs:
            tf(im)

    return min(common.timed(one, reps, warmup=1)) / len(imgs) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", type=Path, required=True, help="src/ folder of the baseline (square-cache) tree")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--photos", type=int, default=500)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    threads = common.set_threads()
    dtype = torch.bfloat16 if "avx512_bf16" in common.cpu_flags() else torch.float32
    cifar = common.ensure_cifar()
    if cifar is None:
        raise SystemExit("CIFAR-10 not found: set SELFSUP_CIFAR to the unpacked cifar10 folder")
    ours_src = Path(__file__).resolve().parent.parent / "src"
    lines: list[str] = []

    # 1. CIFAR-10 views, this tree vs the baseline, alternating
    child_us(ours_src, cifar / "train", args.batch, 1)  # builds this tree's cache + compiles its kernel
    child_us(args.baseline, cifar / "train", args.batch, 1)
    ours: list[float] = []
    base: list[float] = []
    for r in range(args.rounds):
        first, second = (ours_src, args.baseline) if r % 2 == 0 else (args.baseline, ours_src)
        a = child_us(first, cifar / "train", args.batch, 5)
        b = child_us(second, cifar / "train", args.batch, 5)
        (ours if first == ours_src else base).append(a)
        (base if first == ours_src else ours).append(b)
        print(f"round {r}: native-aspect {ours[-1]:.1f} µs/img, square baseline {base[-1]:.1f} µs/img", flush=True)
    ratio = np.array(ours) / np.array(base)
    lines += ["CIFAR-10 train, 2 SimCLR views at 32 px, bf16 output (the kernel), batch "
              f"{args.batch}, {threads} threads, {args.rounds} alternating rounds:", "",
              common.table([{"tree": "native-aspect (this)", "median µs/img": f"{np.median(ours):.1f}",
                             "min-max": f"{min(ours):.1f}-{max(ours):.1f}"},
                            {"tree": "square cache (baseline)", "median µs/img": f"{np.median(base):.1f}",
                             "min-max": f"{min(base):.1f}-{max(base):.1f}"}],
                           ["tree", "median µs/img", "min-max"]),
              "", f"ratio native/square per round: median {np.median(ratio):.3f} "
              f"(min {ratio.min():.3f}, max {ratio.max():.3f})", ""]

    # 2 + 3. photo folder at 96 px vs lightly; cache builds
    tmp = Path(tempfile.mkdtemp(prefix="bench-aspect-"))
    try:
        folder = photo_folder(tmp / "photos", args.photos)
        ds, t_photo, b_photo = timed_open(folder, 96, tmp / "cache-photos")
        sizes = np.asarray(ds.images.sizes) if hasattr(ds.images, "sizes") else None
        ours96 = photo_views(ds, min(args.batch, len(ds)), 5, dtype)
        light96 = lightly_photo_views(folder, 2)
        _, t_cifar, b_cifar = timed_open(cifar / "train", 32, tmp / "cache-cifar")
        lines += [f"Photo folder: {args.photos} JPEGs from {(folder / 'SOURCE').read_text()}, aspect 4:3, 3:2, 3:1, "
                  "2:3 and 1:1, 96 px views (2 SimCLR views, cj 0.5, no blur):", "",
                  common.table([
                      {"pipeline": f"selfsup make_views on the native-aspect cache ({str(dtype)[6:]}, {threads} threads)",
                       "µs/img": f"{ours96:.1f}", "vs selfsup": "1.0x"},
                      {"pipeline": "lightly SimCLRTransform(96), decoded PIL images, 1 core",
                       "µs/img": f"{light96:.1f}", "vs selfsup": f"{light96 / ours96:.1f}x"}],
                      ["pipeline", "µs/img", "vs selfsup"]), "",
                  "Cache builds (fresh cache folder, decode + resize, 2 processes):", "",
                  common.table([
                      {"data": "CIFAR-10 train (50,000 x 32x32)", "seconds": f"{t_cifar:.1f}",
                       "size MB": f"{b_cifar / 1e6:.1f}", "bytes/img": f"{b_cifar / 50000:.0f}"},
                      {"data": f"photo folder ({len(ds)} photos, shorter side 96)", "seconds": f"{t_photo:.1f}",
                       "size MB": f"{b_photo / 1e6:.1f}", "bytes/img": f"{b_photo / max(1, len(ds)):.0f}"}],
                      ["data", "seconds", "size MB", "bytes/img"]), ""]
        if sizes is not None:
            lines.append(f"photo rows stored: median {int(np.median(sizes[:, 0]))}x{int(np.median(sizes[:, 1]))}, "
                         f"widest {int(sizes[:, 1].max())} px")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    body = "\n".join([common.header({"baseline": str(args.baseline)}), "", *lines])
    print(body)
    if not args.no_write:
        common.update_section("Native-aspect data layer (bench_aspect.py)", body)
    print(json.dumps({"ratio_median": float(np.median(ratio))}))


if __name__ == "__main__":
    main()
