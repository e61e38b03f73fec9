"""The on-disk uint8 cache of decoded images.

Each image folder is decoded once into ``<cache_dir>/<key>.u8`` + ``<key>.json``. Format version 2:

- ``<key>.u8``: the rows back to back, each a raw C-order ``uint8 [h, w, 3]`` image at its own aspect ratio
  with its shorter side equal to the cache size S (see :func:`selfsup.data.folder.decode_native`);
- ``<key>.json``: ``sizes`` (height, width per row: the index; row i starts at byte
  ``sum(h_j * w_j * 3 for j < i)``), the labels, class names, relative paths and the skipped files.

A dataset whose rows are all ``S x S`` is memory-mapped as one dense ``[N, S, S, 3]`` array (the layout of
the old square cache); otherwise as a :class:`selfsup.data.images.RaggedImages` over the same bytes.

The key is the sha256 of (format version, size, sorted list of (relative path, file size, mtime_ns)), so
adding, removing, renaming or modifying any image invalidates the cache automatically; an unchanged folder
is never decoded twice. A cache of another format version has another key and is never read; when one is
found for the same folder a one-line note says it is being rebuilt (:func:`old_format_cache`). Files are
written to a temporary name in the cache folder and moved into place with ``os.replace`` (data first, then
the JSON, which acts as the commit marker), so a crash, Ctrl-C or SIGTERM never leaves a half-written cache
that a later run would trust; temporaries left by a process that was killed outright (SIGKILL, power loss)
carry its host and pid in their name and are deleted by the next build (:func:`clean_stale_temporaries`). The data
is opened as a read-only ``np.memmap``, so DataLoader workers and concurrent processes share the page cache
instead of each holding a copy.

Old entries are never deleted automatically; remove ``<cache_dir>`` (see :func:`default_cache_dir`) to
reclaim the space.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from selfsup.data.images import RaggedImages
from selfsup.errors import DataError

#: Bump whenever decoding or the layout changes: a cache of another version is never read.
#: 1: one resized, centre-cropped S x S square per image; 2: native aspect, shorter side S, packed rows.
FORMAT_VERSION = 2


def default_cache_dir() -> Path:
    """``$SELFSUP_CACHE`` if set, else ``~/.cache/selfsup``."""
    env = os.environ.get("SELFSUP_CACHE")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/selfsup").expanduser()


def default_cache_size(image_size: int) -> int:
    """The stored shorter side for views of ``image_size`` px when ``data.cache_size`` is not set.

    Above 96 px: ``round(image_size * 8 / 7)``, torchvision's ImageNet convention (256 stored for 224 px
    views, 146 for 128), so that the crops of the usual scale range are mostly downsampled rather than
    enlarged. Up to 96 px: ``image_size`` itself. The small-image datasets are usually trained at their
    native side (CIFAR 32, Tiny-ImageNet 64, STL-10 96), where storing at the view size means no resampling
    at all, and an 8/7 upscale would add interpolation, not information; it also keeps the rows of the
    cpu-32/64/96px presets exactly what they were measured with.
    """
    return int(image_size) if image_size <= 96 else int(round(image_size * 8 / 7))


def cache_key(size: int, entries: Sequence[tuple[str, int, int]], version: int = FORMAT_VERSION) -> str:
    """sha256 hex of (format version, size, [(relative path, file size, mtime_ns), ...])."""
    payload = json.dumps([int(version), int(size), [list(e) for e in entries]], separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    return cache_dir / f"{key}.u8", cache_dir / f"{key}.json"


def old_format_cache(cache_dir: Path, size: int, entries: Sequence[tuple[str, int, int]]) -> Path | None:
    """The data file of a cache of an older format version for the same files and size, if one exists."""
    for version in range(1, FORMAT_VERSION):
        data_path, meta_path = _paths(cache_dir, cache_key(size, entries, version))
        if meta_path.is_file():
            return data_path
    return None


def _open_rows(data_path: Path, meta: dict[str, Any]) -> np.ndarray | RaggedImages | None:
    side = int(meta["side"])
    sizes = np.asarray(meta["sizes"], dtype=np.int64).reshape(-1, 2)
    n = sizes.shape[0]
    if n < 1 or side < 1 or sizes.min() < 1 or (sizes.min(axis=1) != side).any():
        return None
    total = int((sizes[:, 0] * sizes[:, 1]).sum()) * 3
    if data_path.stat().st_size != total:
        return None
    if (sizes == side).all():  # every row is the S x S square: the dense layout, zero cost
        return np.memmap(data_path, dtype=np.uint8, mode="r", shape=(n, side, side, 3))
    buf = np.memmap(data_path, dtype=np.uint8, mode="r", shape=(total,))
    return RaggedImages.from_sizes(buf, sizes, side)


def load_cache(cache_dir: Path, key: str) -> tuple[np.ndarray | RaggedImages, dict[str, Any]] | None:
    """The cached ``(images, meta)`` for ``key``, or None when absent, of another version, incomplete or
    unreadable."""
    data_path, meta_path = _paths(cache_dir, key)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("version") != FORMAT_VERSION:
            return None
        images = _open_rows(data_path, meta)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if images is None:
        return None
    return images, meta


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists (another user's process)
        return True
    return True


def owner_tag() -> str:
    """``<host>-<pid>`` of this process, as it appears in its temporaries' names (dots of the host replaced)."""
    host = "".join(c if c.isalnum() or c == "-" else "_" for c in socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


#: A temporary of another host is only judged by its age (its pid means nothing here).
_FOREIGN_TMP_AGE_S = 24 * 3600


def clean_stale_temporaries(cache_dir: Path) -> int:
    """Delete the temporaries (``.<key>.<host>-<pid>.*.tmp``) of cache builds whose process no longer
    exists; returns how many. Builds in progress in live processes are left alone; a temporary written on
    another host (a shared cache folder) is deleted only when it has not changed for a day, and so is one
    whose name carries no owner."""
    removed = 0
    mine = owner_tag()
    host = mine.rsplit("-", 1)[0]
    try:
        names = [e.name for e in os.scandir(cache_dir) if e.name.startswith(".") and e.name.endswith(".tmp")]
    except OSError:
        return 0
    for name in names:
        parts = name.split(".")
        owner = parts[2] if len(parts) > 3 else ""
        o_host, _, o_pid = owner.rpartition("-")
        if owner == mine:
            continue
        if o_host == host and o_pid.isdigit():
            stale = not _pid_alive(int(o_pid))
        else:
            try:
                stale = time.time() - (cache_dir / name).stat().st_mtime > _FOREIGN_TMP_AGE_S
            except OSError:
                continue
        if stale:
            with contextlib.suppress(OSError):
                os.unlink(cache_dir / name)
                removed += 1
    return removed


class CacheWriter:
    """Streams decoded rows into a temporary file; :meth:`commit` moves data + JSON into place atomically.

    Use as a context manager: leaving the block without ``commit`` (an exception, Ctrl-C, SIGTERM) deletes
    the temporary file and leaves any previous cache untouched.
    """

    def __init__(self, cache_dir: Path, key: str, side: int) -> None:
        self.cache_dir = Path(cache_dir)
        self.key = key
        self.side = int(side)
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            clean_stale_temporaries(self.cache_dir)
            fd, tmp = tempfile.mkstemp(prefix=self._prefix(), suffix=".u8.tmp", dir=self.cache_dir)
        except OSError as e:
            raise DataError(
                f"cannot write the image cache in {self.cache_dir} ({e.strerror or e}); "
                "pass --cache-dir or set SELFSUP_CACHE to a writable folder"
            ) from None
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self.sizes: list[tuple[int, int]] = []
        self._committed = False

    def _prefix(self) -> str:
        return f".{self.key[:16]}.{owner_tag()}."

    @property
    def rows(self) -> int:
        return len(self.sizes)

    def write(self, row: np.ndarray) -> None:
        """Append one ``uint8 [h, w, 3]`` row."""
        if row.ndim != 3 or row.shape[2] != 3:  # pragma: no cover - decode guarantees it
            raise ValueError(f"cache rows must be [h, w, 3], got {row.shape}")
        self._file.write(np.ascontiguousarray(row, dtype=np.uint8).tobytes())
        self.sizes.append((int(row.shape[0]), int(row.shape[1])))

    def commit(self, meta: dict[str, Any]) -> tuple[np.ndarray | RaggedImages, dict[str, Any]]:
        """Finish the data file, write the JSON, and return the read-only images and meta."""
        data_path, meta_path = _paths(self.cache_dir, self.key)
        meta = {"version": FORMAT_VERSION, "side": self.side, **meta, "sizes": [list(s) for s in self.sizes]}
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, data_path)
        fd, tmp_meta = tempfile.mkstemp(prefix=self._prefix(), suffix=".json.tmp", dir=self.cache_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(meta, f, separators=(",", ":"))
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
