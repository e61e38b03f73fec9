"""The on-disk uint8 cache of decoded images.

Each image folder is decoded once, at one square size, into ``<cache_dir>/<key>.u8``: a raw C-order
``uint8 [N, S, S, 3]`` array (the resized, centre-cropped square, see :func:`selfsup.data.folder.decode_image`),
next to ``<key>.json`` holding the shape, labels, class names, relative paths and the skipped files.

The key is the sha256 of (format version, size, sorted list of (relative path, file size, mtime_ns)), so
adding, removing, renaming or modifying any image invalidates the cache automatically; an unchanged folder
is never decoded twice. Files are written to a temporary name in the cache folder and moved into place with
``os.replace`` (data first, then the JSON, which acts as the commit marker), so a crash or Ctrl-C never
leaves a half-written cache that a later run would trust. The data is opened as a read-only ``np.memmap``,
so DataLoader workers and concurrent processes share the page cache instead of each holding a copy.

Old entries are never deleted automatically; remove ``<cache_dir>`` (see :func:`default_cache_dir`) to
reclaim the space.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from selfsup.errors import DataError

#: Bump whenever decoding changes (resize filter, colour conversion, layout rules): old caches are ignored.
FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """``$SELFSUP_CACHE`` if set, else ``~/.cache/selfsup``."""
    env = os.environ.get("SELFSUP_CACHE")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/selfsup").expanduser()


def cache_key(size: int, entries: Sequence[tuple[str, int, int]]) -> str:
    """sha256 hex of (format version, size, [(relative path, file size, mtime_ns), ...])."""
    payload = json.dumps([FORMAT_VERSION, int(size), [list(e) for e in entries]], separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    return cache_dir / f"{key}.u8", cache_dir / f"{key}.json"


def load_cache(cache_dir: Path, key: str) -> tuple[np.memmap, dict[str, Any]] | None:
    """The cached ``(images, meta)`` for ``key``, or None when absent, incomplete or unreadable."""
    data_path, meta_path = _paths(cache_dir, key)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        shape = tuple(int(s) for s in meta["shape"])
        if meta.get("version") != FORMAT_VERSION or len(shape) != 4 or shape[0] < 1:
            return None
        if data_path.stat().st_size != int(np.prod(shape)):
            return None
        images = np.memmap(data_path, dtype=np.uint8, mode="r", shape=shape)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return images, meta


class CacheWriter:
    """Streams decoded rows into a temporary file; :meth:`commit` moves data + JSON into place atomically.

    Use as a context manager: leaving the block without ``commit`` (an exception, Ctrl-C) deletes the
    temporary file and leaves any previous cache untouched.
    """

    def __init__(self, cache_dir: Path, key: str) -> None:
        self.cache_dir = Path(cache_dir)
        self.key = key
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".u8.tmp", dir=self.cache_dir)
        except OSError as e:
            raise DataError(
                f"cannot write the image cache in {self.cache_dir} ({e.strerror or e}); "
                "pass --cache-dir or set SELFSUP_CACHE to a writable folder"
            ) from None
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self.rows = 0
        self._committed = False

    def write(self, row: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(row, dtype=np.uint8).tobytes())
        self.rows += 1

    def commit(self, meta: dict[str, Any]) -> tuple[np.memmap, dict[str, Any]]:
        """Finish the data file, write the JSON, and return the read-only memmap and meta."""
        data_path, meta_path = _paths(self.cache_dir, self.key)
        meta = {"version": FORMAT_VERSION, **meta}
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, data_path)
        fd, tmp_meta = tempfile.mkstemp(prefix=f".{self.key[:16]}.", suffix=".json.tmp", dir=self.cache_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(meta, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_meta, meta_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_meta)
            raise
        self._committed = True
        loaded = load_cache(self.cache_dir, self.key)
        if loaded is None:  # pragma: no cover - only if the disk lies to us
            raise DataError(f"the image cache {data_path} could not be read back; delete it and retry")
        return loaded

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._committed:
            with contextlib.suppress(OSError):
                self._file.close()
            with contextlib.suppress(OSError):
                self._tmp.unlink()
