"""Shared test fixtures: tiny image folders, broken image files, and a per-test image cache.

Only data-making fixtures live here. Everything is generated on the fly (no files are committed) and
small enough that a fixture costs a few milliseconds.

- ``class_folder``: ``tmp/classes/{cat,dog,fox}/*.{png,jpg}``, 3 classes x 8 images of 20-48 px, modes mixed.
- ``flat_folder``: ``tmp/flat/*.{png,jpg}``, 12 unlabelled images.
- ``make_class_folder(root, classes=3, per_class=8, size=(32, 32))``: build your own labelled tree.
- ``write_image(path, size=(w, h), mode="RGB", seed=0)``: one random image; format from the suffix.
- ``corrupt_image(path)``, ``truncated_image(path)``, ``zero_byte_image(path)``: broken files.
- autouse: ``$SELFSUP_CACHE`` points at a fresh temporary folder, so no test writes to ~/.cache.
- autouse, once per session: the numba view kernel is compiled (or loaded from numba's cache) for uint8 and
  float sources before the first test, so no test's timing or stderr depends on whether it came first.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ImageWriter = Callable[..., Path]


def _write_image(
    path: str | Path, size: tuple[int, int] = (32, 32), mode: str = "RGB", seed: int = 0, **save_kw
) -> Path:
    """Write a random image of ``size=(w, h)`` in PIL ``mode``; format from the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    rgb = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    im = Image.fromarray(rgb, "RGB")
    if mode != "RGB":
        im = im.convert(mode)
    if path.suffix.lower() in (".jpg", ".jpeg") and mode not in ("RGB", "L", "CMYK"):
        im = im.convert("RGB")
    im.save(path, **save_kw)
    return path


def _jpeg_bytes(seed: int = 0, size: tuple[int, int] = (48, 40)) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _corrupt_image(path: str | Path) -> Path:
    """A file with an image extension whose bytes are not an image."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an image at all\n" * 8)
    return path


def _truncated_image(path: str | Path) -> Path:
    """A real JPEG (or PNG, by suffix) cut off at 60% of its bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".png":
        buf = io.BytesIO()
        rng = np.random.default_rng(1)
        Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)).save(buf, "PNG")
        data = buf.getvalue()
    else:
        data = _jpeg_bytes(seed=1)
    path.write_bytes(data[: int(len(data) * 0.6)])
    return path


def _zero_byte_image(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _make_class_folder(
    root: str | Path,
    classes: int | list[str] = 3,
    per_class: int = 8,
    size: tuple[int, int] | None = None,
) -> Path:
    """``root/<class>/NN.{png,jpg}``; ``size`` None = varying sizes 20-48 px and mixed modes."""
    root = Path(root)
    names = [f"class{i}" for i in range(classes)] if isinstance(classes, int) else list(classes)
    modes = ["RGB", "L", "RGBA", "P"]
    for ci, name in enumerate(names):
        for j in range(per_class):
            seed = ci * 1000 + j
            ext = ".jpg" if j % 2 else ".png"
            sz = size or (20 + (seed * 7) % 29, 20 + (seed * 11) % 29)
            mode = modes[j % len(modes)]
            _write_image(root / name / f"{j:02d}{ext}", size=sz, mode=mode, seed=seed)
    return root


@pytest.fixture(autouse=True, scope="session")
def _view_kernel_compiled() -> None:
    import torch

    from selfsup.augment.recipes import simclr_recipe
    from selfsup.augment.views import make_views

    gen = torch.Generator().manual_seed(0)
    for images in (torch.zeros(2, 8, 8, 3, dtype=torch.uint8), torch.zeros(2, 8, 8, 3)):
        make_views(images, simclr_recipe(4), gen, backend="numba")


@pytest.fixture(autouse=True)
def _selfsup_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the image cache at a fresh temporary folder for every test."""
    cache = tmp_path_factory.mktemp("selfsup-cache")
    monkeypatch.setenv("SELFSUP_CACHE", str(cache))
    return cache


@pytest.fixture
def write_image() -> ImageWriter:
    return _write_image


@pytest.fixture
def corrupt_image() -> ImageWriter:
    return _corrupt_image


@pytest.fixture
def truncated_image() -> ImageWriter:
    return _truncated_image


@pytest.fixture
def zero_byte_image() -> ImageWriter:
    return _zero_byte_image


@pytest.fixture
def make_class_folder() -> Callable[..., Path]:
    return _make_class_folder


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """3 classes (cat, dog, fox) x 8 images, PNG and JPEG, sizes 20-48 px, modes RGB/L/RGBA/P."""
    return _make_class_folder(tmp_path / "classes", ["cat", "dog", "fox"], per_class=8)


@pytest.fixture
def flat_folder(tmp_path: Path) -> Path:
    """12 unlabelled images (PNG and JPEG, 24-40 px) directly in the folder."""
    root = tmp_path / "flat"
    for i in range(12):
        ext = ".png" if i % 3 else ".jpg"
        _write_image(root / f"img{i:02d}{ext}", size=(24 + i, 40 - i), seed=100 + i)
    return root
