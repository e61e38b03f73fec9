"""Image folders -> ``uint8`` images at their own aspect ratio, decoded once and cached on disk.

Layout rules (``open_dataset(folder, size)``):

- A **class-folder tree** is a folder where *every* image sits exactly one level down, in a sub-folder:
  ``root/<class>/*.jpg``. Labels come from the sub-folder names, sorted; ``classes[i]`` names label ``i``.
- Anything else is a **plain folder** of images, searched recursively (nested folders allowed), unlabelled.
- Accepted extensions: .jpg .jpeg .jpe .jfif .png .webp .bmp .tif .tiff .gif .avif .ppm .pgm .pnm (any
  case; a multi-frame GIF or TIFF gives its first frame; AVIF needs a Pillow built with it, else those files
  are skipped and counted like corrupt ones). Files in image formats Pillow cannot decode (camera raw,
  HEIC, SVG, ...) are left out with a one-line warning that names them, so a folder of iPhone HEIC photos is
  never silently read as empty. Hidden files and folders (names starting with ``.``, e.g. macOS
  ``._x.jpg`` forks) are ignored. Paths are sorted, so row order is deterministic.

Decoding (:func:`decode_image`), identical for every source:

1. EXIF orientation is applied (``ImageOps.exif_transpose``), so a phone photo is upright.
2. Colour: grayscale ``L``/``1``/palette ``P``/``CMYK``/``YCbCr`` are converted to RGB; 16-bit and 32-bit
   integer grayscale (``I;16*``, ``I``) is scaled from 0..65535 to 0..255 (divide by 257, round), not
   clipped (a 32-bit ``I`` image whose values all fit 0..255 is kept as it is); float grayscale (``F``,
   e.g. a float TIFF) in 0..1 is scaled by 255, any other range is clipped to 0..255, NaN becomes 0;
   images with transparency (``RGBA``, ``LA``, ``PA``, ``P`` or ``L``/``RGB`` with a transparent
   colour) are **composited on black** (colour premultiplied by alpha), so fully transparent pixels
   become black whatever colour they happened to store.
3. **Native aspect** (:func:`decode_native`): the shorter side is resized to ``size`` with antialiased
   bicubic filtering (small images are enlarged), the longer side in proportion, rounded. **The cache stores
   this whole image**, so random-resized crops (drawn later, on the fly, in each image's own height and
   width) can reach every part of it. (Large JPEGs are first decoded at a reduced DCT scale that is still
   >= ``size`` on the shorter side, which is much faster and visually equivalent.)
4. **Extreme aspect ratios**: an image longer than 10:1 (either way) keeps its centre 10:1 part; the ends of
   an extreme panorama are cut. This bounds a stored row to ``size x 10 size`` pixels (and a padded batch,
   see :mod:`selfsup.data.images`); ratios up to 10:1 are stored whole.

Cost on disk: ``h * w * 3`` bytes per image, i.e. ``3 S^2`` times the aspect ratio (S = ``size``): at
S = 256 a 4:3 photo takes 262 KB, a 3:2 photo 295 KB.

Very large photos (100-200 Mpx) are read: Pillow's open-time limit is replaced by a limit on the pixels
actually decoded, after a JPEG's DCT-scale reduction (:mod:`selfsup.data.decode`), which stops
decompression bombs.

Corrupt, truncated, zero-byte and zero-area or 1-pixel files, and files over that limit, are skipped and
listed in ``ImageDataset.skipped`` with a one-line summary on stderr; ``strict=True`` raises
:class:`~selfsup.errors.DataError` on the first one instead. See :mod:`selfsup.data.cache` for the cache
format. :func:`decode_image` (the centre square) is kept for callers that want one square per file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from selfsup import console
from selfsup.data import cache as _cache
from selfsup.data.builtin import open_builtin
from selfsup.data.decode import open_rgb
from selfsup.data.images import ImageDataset, RaggedImages, resize_center_crop, resize_native
from selfsup.errors import ConfigError, DataError

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".avif",
    ".ppm", ".pgm", ".pnm",
)  # fmt: skip
#: Image formats that Pillow does not decode: left out, but named in a warning (convert them first).
UNDECODED_IMAGE_EXTENSIONS: frozenset[str] = frozenset({
    ".heic", ".heif", ".jxl", ".svg", ".psd", ".dng", ".raw", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".raf",
    ".rw2", ".srw", ".pef",
})  # fmt: skip
_EXT_TEXT = " ".join(IMAGE_EXTENSIONS)
_LABEL_HINT = "needs class sub-folders root/<class>/*.jpg"
#: Decode with a process pool from this many images on (pool start-up costs more than it saves below).
_POOL_MIN_IMAGES = 1024


# ----------------------------------------------------------------------------------------------- decode


def decode_native(path: str, size: int) -> np.ndarray:
    """Decode one image file at its own aspect ratio: ``uint8 [h, w, 3]`` with ``min(h, w) == size`` (the
    longer side in proportion, at most 10x; see the module docstring). Raises on corrupt or truncated
    files and on zero-area or 1-pixel images."""
    im = open_rgb(path, size)
    arr = np.asarray(resize_native(im, size), dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) != size:  # pragma: no cover - defensive
        raise ValueError(f"decoded to shape {arr.shape}")
    return arr


def decode_image(path: str, size: int) -> np.ndarray:
    """Decode one image file to its centre square ``uint8 [size, size, 3]`` (shorter side resized to
    ``size``, centre crop); raises on corrupt or truncated files."""
    im = open_rgb(path, size)
    arr = np.asarray(resize_center_crop(im, size), dtype=np.uint8)
    if arr.shape != (size, size, 3):  # pragma: no cover - defensive
        raise ValueError(f"decoded to shape {arr.shape}")
    return arr


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _decode_safe(args: tuple[str, int]) -> tuple[np.ndarray | None, str]:
    """``(array, "")`` or ``(None, reason)``; never raises for a bad file."""
    path, size = args
    try:
        if os.path.getsize(path) == 0:
            return None, "zero-byte file"
        return decode_native(path, size), ""
    except MemoryError:
        raise
    except Exception as e:  # any decoder failure means "this file is unreadable"
        msg = str(e)
        if "truncated" in msg:
            return None, _one_line(f"truncated image ({msg})")
        return None, _one_line(f"{type(e).__name__}: {msg}" if msg else type(e).__name__)


def _num_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def _decode_chunk(args: tuple[list[str], int]) -> tuple[list[np.ndarray], list[str]]:
    """Pool task: decode a chunk of files; returns (the good rows, reason per file, "" when good).

    Whole chunks (not single images) cross the process boundary: per-image IPC would cost as much as
    decoding a 32-px JPEG and leave the pool no faster than one process.
    """
    paths, size = args
    rows: list[np.ndarray] = []
    reasons: list[str] = []
    for p in paths:
        arr, reason = _decode_safe((p, size))
        reasons.append(reason)
        if arr is not None:
            rows.append(arr)
    return rows, reasons


def _worker_init() -> None:
    """Pool workers leave interrupts to the parent: Ctrl-C (sent to the whole process group) and the
    SIGTERM that ``Pool.terminate`` sends end them quietly, with no traceback per worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _decoded(paths: list[str], size: int) -> Iterator[tuple[np.ndarray | None, str]]:
    """Decode in order, in a forked process pool when the set is large and cores are available."""
    workers = _num_workers()
    if len(paths) < _POOL_MIN_IMAGES or workers < 2 or sys.platform != "linux":
        for p in paths:
            yield _decode_safe((p, size))
        return
    import multiprocessing as mp

    chunk = max(1, min(512, len(paths) // (workers * 16)))
    jobs = [(paths[i : i + chunk], size) for i in range(0, len(paths), chunk)]
    # fork: workers inherit the imported modules instantly (spawn would re-import torch per worker);
    # they only run PIL/numpy, never torch, so forking a process that has torch loaded is safe.
    with mp.get_context("fork").Pool(workers, initializer=_worker_init) as pool:
        for block, reasons in pool.imap(_decode_chunk, jobs):
            j = 0
            for reason in reasons:
                if reason:
                    yield None, reason
                else:
                    yield block[j], ""
                    j += 1


# ------------------------------------------------------------------------------------------------- scan


@dataclass
class _Scan:
    rels: list[str]  # sorted relative posix paths of the images
    entries: list[tuple[str, int, int]]  # (rel, size, mtime_ns)
    other_files: int  # non-image files seen
    other_exts: list[str]  # a few of their extensions, for the error message
    undecoded: dict[str, int]  # files in image formats Pillow cannot decode, per extension


def _scan(root: Path) -> _Scan:
    found: list[tuple[tuple[str, ...], int, int]] = []
    other = 0
    exts: set[str] = set()
    undecoded: dict[str, int] = {}
    seen_dirs: set[tuple[int, int]] = set()
    stack: list[tuple[Path, tuple[str, ...]]] = [(root, ())]
    while stack:
        folder, parts = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen_dirs:  # symlink loop
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            it = list(os.scandir(folder))
        except OSError as e:
            raise DataError(
                f"cannot read folder {folder} ({e.strerror or e}); check its permissions"
            ) from None
        for entry in it:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=True):
                    stack.append((Path(entry.path), (*parts, entry.name)))
                    continue
                ext = os.path.splitext(entry.name)[1].lower()
                if ext not in IMAGE_EXTENSIONS:
                    other += 1
                    if ext:
                        exts.add(ext)
                    if ext in UNDECODED_IMAGE_EXTENSIONS:
                        undecoded[ext] = undecoded.get(ext, 0) + 1
                    continue
                st = entry.stat(follow_symlinks=True)
            except OSError:  # dangling symlink or a file that vanished: nothing to decode
                continue
            found.append(((*parts, entry.name), st.st_size, st.st_mtime_ns))
    found.sort(key=lambda t: t[0])
    rels = ["/".join(p) for p, _, _ in found]
    entries = [(r, s, m) for r, (_, s, m) in zip(rels, found)]
    return _Scan(rels, entries, other, sorted(exts)[:5], undecoded)


def _check_labels(root: str, classes: list[str] | None, require_labels: bool, min_classes: int) -> None:
    if classes is None:
        if require_labels or min_classes > 0:
            raise DataError(f"{root} is a plain folder of images without labels: this {_LABEL_HINT}")
        return
    if len(classes) < min_classes:
        raise DataError(
            f"needs at least {min_classes} classes, found {len(classes)} in {root}; "
            "add one sub-folder per class (root/<class>/*.jpg)"
        )


def _warn_skipped(root: str, skipped: list[tuple[str, str]]) -> None:
    """One line on stderr: the count, the fix, then the first three files and why."""
    if not skipped:
        return
    first = "; ".join(f"{p} ({_one_line(r, 60)})" for p, r in skipped[:3])
    more = f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    print(
        f"selfsup: warning: skipped {len(skipped)} unreadable image(s) in {root} "
        f"(pass --strict to stop on them instead): {first}{more}",
        file=sys.stderr,
    )


def _strict_error(path: str, reason: str) -> DataError:
    return DataError(
        f"unreadable image {path} ({reason}); remove the file, or drop --strict to skip unreadable images"
    )


def _open_folder(
    spec: str,
    size: int,
    cache_dir: str | None,
    strict: bool,
    require_labels: bool,
    min_classes: int,
    progress: bool,
) -> ImageDataset:
    root = Path(os.path.expanduser(spec))
    if not root.exists():
        raise DataError(f"data folder {spec} does not exist; check the path (or try builtin:mnist)")
    if not root.is_dir():
        raise DataError(
            f"{spec} is a file, not a folder; pass the folder that contains the images "
            "(root/<class>/*.jpg or root/*.jpg)"
        )
    root_abs = os.path.abspath(root)
    scan = _scan(root)
    undecoded = ", ".join(f"{n} {e}" for e, n in sorted(scan.undecoded.items()))
    if not scan.rels:
        if undecoded:
            raise DataError(
                f"no images selfsup can decode in {spec}: {undecoded} file(s) in formats Pillow does not read; "
                f"convert them to JPEG or PNG first (accepted extensions: {_EXT_TEXT})"
            )
        if scan.other_files == 0:
            raise DataError(
                f"data folder {spec} is empty; put images in it as root/<class>/*.jpg (labelled) "
                "or root/*.jpg (unlabelled)"
            )
        raise DataError(
            f"no images found in {spec} ({scan.other_files} other files, e.g. {' '.join(scan.other_exts)}); "
            f"accepted extensions: {_EXT_TEXT}"
        )

    if undecoded:
        print(
            f"selfsup: warning: left out {undecoded} file(s) in {spec}: Pillow cannot decode these formats; "
            "convert them to JPEG or PNG to include them",
            file=sys.stderr,
        )
    labelled = all(r.count("/") == 1 for r in scan.rels)
    classes = sorted({r.split("/", 1)[0] for r in scan.rels}) if labelled else None
    _check_labels(spec, classes, require_labels, min_classes)

    cdir = Path(cache_dir).expanduser() if cache_dir else _cache.default_cache_dir()
    key = _cache.cache_key(size, scan.entries)
    loaded = _cache.load_cache(cdir, key)
    if loaded is None:
        old = _cache.old_format_cache(cdir, size, scan.entries)
        if old is not None:
            print(f"selfsup: note: the image cache {old} is in an older format (square crops); decoding {spec} "
                  "again at native aspect (delete the old file to reclaim its space)", file=sys.stderr)
        loaded = _build_cache(spec, root_abs, scan.rels, size, cdir, key, classes, strict, progress)
    images, meta = loaded
    return _from_meta(spec, root_abs, images, meta, strict)


def _build_cache(
    spec: str,
    root_abs: str,
    rels: list[str],
    size: int,
    cdir: Path,
    key: str,
    classes: list[str] | None,
    strict: bool,
    progress: bool,
) -> tuple[np.ndarray | RaggedImages, dict[str, Any]]:
    class_index = {c: i for i, c in enumerate(classes)} if classes is not None else {}
    kept: list[str] = []
    labels: list[int] = []
    skipped: list[tuple[str, str]] = []
    full = [os.path.join(root_abs, r) for r in rels]
    with _cache.CacheWriter(cdir, key, size) as writer, _sigterm_exits():
        bar = tqdm(
            total=len(rels), desc=f"decoding {spec} @{size}px", unit="img", disable=not (progress and console.bars()),
            mininterval=0.5, file=sys.stderr,
        )  # fmt: skip
        try:
            for rel, path, (arr, reason) in zip(rels, full, _decoded(full, size)):
                bar.update(1)
                if arr is None:
                    if strict:
                        raise _strict_error(path, reason)
                    skipped.append((rel, reason))
                    continue
                writer.write(arr)
                kept.append(rel)
                if classes is not None:
                    labels.append(class_index[rel.split("/", 1)[0]])
        finally:
            bar.close()
        if not kept:
            p, r = skipped[0]
            raise DataError(
                f"all {len(skipped)} images in {spec} are unreadable (e.g. {os.path.join(root_abs, p)}: {r}); "
                "check that the files are real images"
            )
        meta: dict[str, Any] = {
            "source": root_abs,
            "classes": classes,
            "labels": labels if classes is not None else None,
            "paths": kept,
            "skipped": [list(s) for s in skipped],
        }
        return writer.commit(meta)


class _Terminated(SystemExit):
    """SIGTERM during a cache build: unwinds like Ctrl-C (the temporary file is deleted), exit status 143."""


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """While decoding into the cache, SIGTERM raises :class:`_Terminated` in the main thread, so the
    ``CacheWriter`` block unwinds and deletes its temporary file (the default action would kill the process
    and leave it behind). The previous handler is restored afterwards. Off the main thread it does nothing
    (only the main thread can set signal handlers)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        print("selfsup: terminated (SIGTERM) while decoding images; nothing was cached", file=sys.stderr)
        raise _Terminated(128 + signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _from_meta(
    spec: str, root_abs: str, images: np.ndarray | RaggedImages, meta: dict[str, Any], strict: bool
) -> ImageDataset:
    skipped = [(os.path.join(root_abs, p), str(r)) for p, r in meta["skipped"]]
    if skipped and strict:
        raise _strict_error(*skipped[0])
    _warn_skipped(spec, skipped)
    classes = meta["classes"]
    labels = np.asarray(meta["labels"], dtype=np.int64) if classes is not None else None
    if labels is not None:
        labels.flags.writeable = False
    return ImageDataset(
        images=images,
        labels=labels,
        classes=list(classes) if classes is not None else [],
        paths=[os.path.join(root_abs, p) for p in meta["paths"]],
        skipped=skipped,
        root=spec,
    )


# ---------------------------------------------------------------------------------------------- public


def open_dataset(
    spec: str,
    size: int,
    *,
    cache_dir: str | None = None,
    strict: bool = False,
    require_labels: bool = False,
    min_classes: int = 0,
    progress: bool = True,
) -> ImageDataset:
    """Open an image folder (class-folder tree or plain folder) or ``builtin:NAME[:SPLIT]``.

    Returns RGB images at their own aspect ratio with the shorter side ``size`` (see the module docstring;
    square data gives a dense ``[N, size, size, 3]`` array). Folders are decoded once and cached in
    ``cache_dir`` (default :func:`~selfsup.data.cache.default_cache_dir`); later opens of the unchanged
    folder only memory-map the cache. ``require_labels`` / ``min_classes`` raise a
    :class:`~selfsup.errors.DataError` when the data cannot serve a labelled use (kNN monitor, eval).
    """
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ConfigError(f"image size must be a positive integer, got {size!r}")
    size = int(size)
    spec = str(spec)
    if spec.startswith("builtin:"):
        ds = open_builtin(spec, size)
        _check_labels(spec, ds.classes if ds.labels is not None else None, require_labels, min_classes)
        return ds
    return _open_folder(spec, size, cache_dir, strict, require_labels, min_classes, progress)
