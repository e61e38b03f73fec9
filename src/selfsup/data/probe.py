"""What a folder of images looks like, read from file headers only (no decoding), to pick a training size.

A user who runs ``selfsup pretrain --data photos/`` without a size should not get 32 px thumbnails of 4000x3000
photos. ``suggest_image_size`` reads the header of an evenly spaced sample of the folder's images (PIL reads the
size without decoding the pixels) and maps the median shorter side to the nearest standard training size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from selfsup.data.decode import open_image
from selfsup.data.folder import IMAGE_EXTENSIONS

# The standard sizes a preset exists for (32: CIFAR, 64: ImageNet-64 / Tiny-ImageNet, 96: STL-10) and the GPU
# size of the papers (224: ImageNet). An image is trained at the largest of these that its shorter side covers
# without upscaling, so tiny images are never blown up and photos are never shrunk to thumbnails.
CPU_SIZES = (32, 64, 96)
GPU_SIZES = (32, 64, 96, 224)
PROBE_FILES = 64  # headers read: enough for a stable median, milliseconds on any disk


@dataclass(frozen=True)
class FolderShape:
    """The sizes seen in a sample of a folder's image headers."""

    files: int  # image files found
    probed: int  # headers read successfully
    median_short: int  # median shorter side (pixels)
    median_long: int  # median longer side (pixels)


def _image_files(root: Path, limit: int) -> list[Path]:
    """Up to ``limit`` image paths spread over the sorted walk (every k-th file), skipping hidden entries."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(folder) / f for f in sorted(files)
                     if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
    step = max(1, len(found) // limit)
    return found[::step][:limit]


def probe_folder(path: str | Path, limit: int = PROBE_FILES) -> FolderShape | None:
    """Header sizes of up to ``limit`` images of the folder ``path``; None when it holds no readable image
    (the data layer then reports the folder properly when it is opened)."""
    root = Path(path)
    if not root.is_dir():
        return None
    files = _image_files(root, limit)
    shorts: list[int] = []
    longs: list[int] = []
    for f in files:
        try:
            with open_image(f) as im:  # reads the header only
                w, h = im.size
        except (OSError, ValueError):
            continue  # corrupt files are the cache's business (skipped and counted there)
        if min(w, h) >= 2:
            shorts.append(min(w, h))
            longs.append(max(w, h))
    if not shorts:
        return None
    shorts.sort()
    longs.sort()
    return FolderShape(len(files), len(shorts), shorts[len(shorts) // 2], longs[len(longs) // 2])


def size_for(shape: FolderShape, gpu: bool = False) -> int:
    """The largest standard size (``CPU_SIZES``, or ``GPU_SIZES`` on a GPU) that the median shorter side covers;
    the smallest one for images smaller than all of them."""
    sizes = GPU_SIZES if gpu else CPU_SIZES
    fitting = [s for s in sizes if s <= shape.median_short]
    return fitting[-1] if fitting else sizes[0]


def suggest_image_size(path: str | Path, gpu: bool = False) -> tuple[int, FolderShape] | None:
    """(training size, what was seen) for a local image folder, or None (not a folder, no readable image)."""
    shape = probe_folder(path)
    return None if shape is None else (size_for(shape, gpu), shape)


__all__ = ["CPU_SIZES", "GPU_SIZES", "FolderShape", "probe_folder", "size_for", "suggest_image_size"]
