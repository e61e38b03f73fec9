"""Decoded images in memory: :class:`ImageDataset`, native-aspect rows (:class:`RaggedImages`) and batches.

Every image is stored at its own aspect ratio with its **shorter side equal to the dataset's size S**
(see :mod:`selfsup.data.folder`), so a dataset holds rows of different shapes ``[h, w, 3]`` with
``min(h, w) == S``. Two representations:

- all rows ``S x S`` (CIFAR, MNIST, the builtins, any folder of square images): a dense ``uint8
  [N, S, S, 3]`` array, exactly as before; batches are dense and cost nothing extra;
- otherwise a :class:`RaggedImages` over one packed ``uint8`` buffer with an index (offset, height, width)
  per row.

:func:`gather` turns rows into a training batch: a dense ``[B, H, W, 3]`` tensor when the rows share one
shape (``sizes`` None), else a ``[B, Hmax, Wmax, 3]`` tensor padded by replicating each image's last row
and column, plus ``sizes [B, 2]`` (each sample's own height and width). Replicate padding makes bilinear
sampling anywhere in the padded frame equal to border-clamped sampling of the sample's own image, which
is what the views need (:func:`selfsup.augment.views.make_views` takes ``sizes``).

Code that needs square arrays (pixel baselines, security audits, report grids) indexes a
:class:`RaggedImages` like an array: ``images[i]``, ``images[a:b]``, ``images[idx]`` and ``np.asarray``
give the centre ``S x S`` square of each row (what the square cache stored: the resize-shorter-side,
centre-crop square). The native rows are read with :meth:`RaggedImages.row` and :meth:`RaggedImages.padded`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image


class RaggedImages:
    """Rows of different shapes ``[h_i, w_i, 3]`` (uint8) packed in one flat buffer.

    buffer:  uint8 [total bytes] (a read-only memmap over the cache file, or an array);
    offsets: int64 [N] byte offset of each row; sizes: int64 [N, 2] (height, width) of each row;
    side:    S, the shorter side every row has (``min(h, w) == S``).
    """

    def __init__(self, buffer: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, side: int) -> None:
        self.buffer = buffer
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
        self.side = int(side)
        self.dtype = np.dtype(np.uint8)

    @classmethod
    def from_sizes(cls, buffer: np.ndarray, sizes: np.ndarray, side: int) -> RaggedImages:
        """Rows stored back to back in ``buffer`` in order: offsets are the running sum of h * w * 3."""
        sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
        nbytes = sizes[:, 0] * sizes[:, 1] * 3
        offsets = np.concatenate([[0], np.cumsum(nbytes)[:-1]]).astype(np.int64)
        return cls(buffer, offsets, sizes, side)

    # --- the array-like (centre squares) view ---

    def __len__(self) -> int:
        return int(self.offsets.shape[0])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(N, S, S, 3)``: the shape of the centre-square view."""
        return (len(self), self.side, self.side, 3)

    @property
    def ndim(self) -> int:
        return 4

    def row(self, i: int) -> np.ndarray:
        """Row ``i`` at its native aspect: uint8 [h, w, 3] (a read-only view of the buffer)."""
        h, w = (int(v) for v in self.sizes[i])
        o = int(self.offsets[i])
        return self.buffer[o : o + h * w * 3].reshape(h, w, 3)

    def square(self, i: int) -> np.ndarray:
        """The centre ``S x S`` square of row ``i`` (a view)."""
        r = self.row(i)
        h, w = r.shape[:2]
        s = min(self.side, h, w)
        top, left = (h - s) // 2, (w - s) // 2
        return r[top : top + s, left : left + s]

    def _rows(self, key: Any) -> np.ndarray:
        return np.arange(len(self))[key]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):  # images[i, y, x, c] style: square view first, then the rest
            head = self[key[0]]
            return head[(slice(None),) + key[1:]] if np.ndim(self._rows(key[0])) else head[key[1:]]
        if isinstance(key, int | np.integer):
            return self.square(int(key) % len(self) if key < 0 else int(key))
        rows = self._rows(key)
        out = np.empty((len(rows), self.side, self.side, 3), np.uint8)
        for j, i in enumerate(rows):
            out[j] = self.square(int(i))
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __iter__(self) -> Any:
        return (self.square(i) for i in range(len(self)))

    # --- native access ---

    def subset(self, rows: Sequence[int] | np.ndarray) -> RaggedImages:
        """The rows ``rows`` as a RaggedImages sharing this buffer."""
        rows = np.asarray(rows, dtype=np.int64)
        return RaggedImages(self.buffer, self.offsets[rows], self.sizes[rows], self.side)

    def padded(self, rows: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Rows ``rows`` as one uint8 batch: ``([B, H, W, 3], None)`` when they share a shape, else
        ``([B, Hmax, Wmax, 3], sizes [B, 2])`` with each image's last row and column replicated into the
        padding (see the module docstring)."""
        rows = np.asarray(rows, dtype=np.int64)
        return pad_rows([self.row(int(i)) for i in rows], self.side)

    def __repr__(self) -> str:
        return f"RaggedImages(n={len(self)}, shorter side {self.side})"


def pad_rows(rows: Sequence[np.ndarray], side: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 images ``[h_i, w_i, 3]`` -> ``([B, H, W, 3], None)`` when they share one shape, else
    ``([B, Hmax, Wmax, 3], sizes [B, 2])``, each image top-left with its last row and column replicated into
    the padding (see the module docstring). ``side``: the frame of an empty batch."""
    sizes = np.array([r.shape[:2] for r in rows], dtype=np.int64).reshape(-1, 2)
    if len(rows) and (sizes == sizes[0]).all():
        return np.stack(rows), None
    hmax, wmax = (int(v) for v in sizes.max(axis=0)) if len(rows) else (side, side)
    out = np.empty((len(rows), hmax, wmax, 3), np.uint8)
    for j, r in enumerate(rows):
        h, w = r.shape[:2]
        out[j, :h, :w] = r
        if w < wmax:
            out[j, :h, w:] = r[:, w - 1 : w]
        if h < hmax:
            out[j, h:] = out[j, h - 1 : h]
    return out, sizes


def spread_rows(total: int, n: int) -> np.ndarray:
    """``min(n, total)`` distinct rows evenly spaced over ``0 .. total - 1`` (int64, ascending): a sample that
    shows every part of a folder (class folders are read in order, so the first rows are one class)."""
    n = min(n, total)
    return np.unique(np.linspace(0, total - 1, n).round().astype(np.int64)) if n > 0 else np.zeros(0, np.int64)


def gather(images: Any, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Training batch of dataset rows: (uint8 [B, H, W, 3] tensor, sizes int64 [B, 2] or None).

    ``sizes`` is None when every row has the batch's full height and width (dense datasets, or a
    ragged batch whose rows happen to share one shape); else the batch is replicate-padded (module
    docstring). Rows are read in the order given (sorted rows read the memmap sequentially).
    """
    rows = np.asarray(rows, dtype=np.int64)
    if isinstance(images, RaggedImages):
        arr, sizes = images.padded(rows)
        return torch.from_numpy(arr), (None if sizes is None else torch.from_numpy(sizes))
    return torch.from_numpy(np.ascontiguousarray(images[rows])), None


@dataclass(repr=False)
class ImageDataset:
    """Decoded images plus their labels and provenance.

    images:  uint8 ``[N, S, S, 3]`` when every image is square (a read-only ``np.memmap`` over the cache
             file for folders, a read-only array for builtin datasets), else a :class:`RaggedImages` of
             native-aspect rows with shorter side S (which indexes like the centre squares).
    labels:  int64 [N] class ids, or None for an unlabelled folder.
    classes: class names (sorted sub-folder names), ``[]`` when unlabelled.
    paths:   source path of each row (builtin: ``"builtin:mnist/train/00012"``).
    skipped: ``(path, reason)`` of corrupt/unreadable files that were left out.
    root:    the spec the user gave.
    """

    images: Any
    labels: np.ndarray | None
    classes: list[str]
    paths: list[str]
    skipped: list[tuple[str, str]]
    root: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def size(self) -> int:
        """The shorter side S of every stored image (the side of the squares for square data)."""
        return int(self.images.shape[1])

    @property
    def native(self) -> bool:
        """True when the rows keep non-square native aspect ratios (``images`` is a RaggedImages)."""
        return isinstance(self.images, RaggedImages)

    def sizes(self) -> np.ndarray:
        """int64 [N, 2]: (height, width) of every stored row."""
        if isinstance(self.images, RaggedImages):
            return self.images.sizes.copy()
        n, h, w = (int(s) for s in self.images.shape[:3])
        return np.tile(np.array([[h, w]], np.int64), (n, 1))

    def batch_rows(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:func:`gather` of this dataset's rows (uint8 tensor, sizes or None)."""
        return gather(self.images, rows)

    def __repr__(self) -> str:
        kind = f"{self.num_classes} classes" if self.labels is not None else "unlabelled"
        shape = "native aspect, shorter side" if self.native else "size"
        return (
            f"ImageDataset(root={self.root!r}, n={len(self)}, {shape}={self.size}, {kind}, "
            f"skipped={len(self.skipped)})"
        )


def resize_center_crop(im: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (antialiased bicubic) and crop the centre ``size x size``."""
    w, h = im.size
    if w == size and h == size:
        return im
    s = min(w, h)
    left, top = (w - s) / 2.0, (h - s) / 2.0
    # Resizing the centre square of side min(w, h) to size x size == resize-shorter-side-then-centre-crop.
    return im.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + s, top + s))


#: The longest stored side is at most this many times the shorter side (see :func:`native_box`).
MAX_ASPECT = 10.0


def native_box(w: int, h: int, size: int) -> tuple[tuple[float, float, float, float], tuple[int, int]]:
    """Source box and output (w, h) of the native-aspect resize: shorter side -> ``size``, longer side in
    proportion (rounded, at least 1). An image longer than :data:`MAX_ASPECT` : 1 keeps its centre
    ``MAX_ASPECT : 1`` part (the ends of an extreme panorama are cut), so a stored row never exceeds
    ``size x MAX_ASPECT * size`` pixels."""
    s = min(w, h)
    cw, ch = min(w, s * MAX_ASPECT), min(h, s * MAX_ASPECT)
    left, top = (w - cw) / 2.0, (h - ch) / 2.0
    ow = max(1, round(cw * size / s))
    oh = max(1, round(ch * size / s))
    if w <= h:
        ow = size
    if h <= w:
        oh = size
    return (left, top, left + cw, top + ch), (ow, oh)


def resize_native(im: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (antialiased bicubic), the longer side in proportion; aspect
    ratios beyond :data:`MAX_ASPECT` are centre-cropped to it first (:func:`native_box`)."""
    w, h = im.size
    box, (ow, oh) = native_box(w, h, size)
    if (ow, oh) == (w, h) and box == (0.0, 0.0, float(w), float(h)):
        return im
    return im.resize((ow, oh), Image.Resampling.BICUBIC, box=box)
