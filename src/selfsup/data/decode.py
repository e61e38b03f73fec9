"""Opening one image file: Pillow's modes to 8-bit RGB, upright, with a decompression-bomb guard sized for photos.

Pillow refuses any image over 179 million pixels (and warns from 89 million) when it *opens* it, before a
single pixel is decoded. A 108- or 200-megapixel phone photo is a photo, not a bomb, and a JPEG is decoded at a
reduced DCT scale (down to 1/8 per side) anyway. So :func:`open_image` opens without Pillow's fixed check, and
:func:`open_rgb` applies selfsup's own after the JPEG draft: at most :data:`MAX_DECODED_PIXELS` pixels are
decoded (768 MiB as RGB). A JPEG can never exceed it (65,535 px a side at 1/8 is 67 Mpx); a PNG, TIFF, ...
claiming more (a decompression bomb, or a scan too large to hold) raises ``ValueError`` and is skipped and
counted like a corrupt file.

Colour rules (:func:`to_rgb`) are listed in :mod:`selfsup.data.folder`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageFile, ImageOps

#: Most pixels decoded from one file (after a JPEG's DCT-scale reduction).
MAX_DECODED_PIXELS = 1 << 28
_OPEN_LOCK = threading.Lock()  # Image.MAX_IMAGE_PIXELS is a module global: never leave it changed
_SWAPS_SIDES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 or 270 degrees


@contextlib.contextmanager
def _quiet_pillow() -> Iterator[None]:
    """Pillow's warnings about a damaged EXIF block ("Corrupt EXIF data") are not the user's to read per file:
    the pixels decode, and the orientation falls back to none."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        yield


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """``Image.open`` without Pillow's open-time pixel limit (see the module docstring); header only."""
    with _OPEN_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def upright_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of the image as shown (EXIF orientation applied), from the header alone."""
    with _quiet_pillow(), open_image(path) as im:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)
    return (h, w) if orientation in _SWAPS_SIDES else (w, h)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB (see :mod:`selfsup.data.folder` for the rules)."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        a = np.asarray(im).astype(np.float32)
        if mode != "I" or a.max(initial=0) > 255:  # 32-bit "I" holding 8-bit values stays as it is
            a = a / 257.0
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(g, "L").convert("RGB")
    if mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        if a.max(initial=0) <= 1.0:  # float images in 0..1 (the usual convention) -> 0..255, not black
            a = a * 255.0
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(g, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint16)
        rgb = (rgba[..., :3] * rgba[..., 3:4] + 127) // 255
        return Image.fromarray(rgb.astype(np.uint8), "RGB")
    return im.convert("RGB")


def open_rgb(path: str, size: int) -> Image.Image:
    """Decode a file to upright 8-bit RGB at (at least) ``size`` on the shorter side; raises ``ValueError``
    for a 1-pixel image or one over :data:`MAX_DECODED_PIXELS`, ``OSError`` for a corrupt or truncated file."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must raise, not decode half grey
    with _quiet_pillow(), open_image(path) as im:
        if im.width * im.height <= 1:
            raise ValueError(f"image is {im.width}x{im.height} pixels: nothing to crop")
        if im.format == "JPEG":
            w, h = im.size
            k = size / min(w, h)  # DCT-domain downscale, keeps the shorter side >= size
            im.draft(None, (max(size, int(w * k)), max(size, int(h * k))))
        if im.width * im.height > MAX_DECODED_PIXELS:
            raise ValueError(
                f"image is {im.width}x{im.height} pixels ({im.width * im.height / 1e6:.0f} Mpx), over the "
                f"{MAX_DECODED_PIXELS / 1e6:.0f} Mpx selfsup decodes from one file (decompression-bomb guard); "
                "downscale it first"
            )
        im.load()
        return to_rgb(ImageOps.exif_transpose(im))
