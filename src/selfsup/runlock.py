"""One process per run folder: a lock that a second run on the same ``--out`` meets at once.

``RUN/.selfsup.lock`` is an OS file lock (:mod:`filelock`: ``flock`` on Unix), so the kernel releases it when its
holder dies, even by ``kill -9``; ``RUN/.selfsup.lock.pid`` names the holder. A second process fails at once
with a one-line :class:`RunFolderBusy` naming that PID. If the lock is still held but its PID is dead (a child
process inherited the lock's descriptor and outlived a killed run), the lock is stale: it is taken over by
replacing the lock file. Every step of acquiring and taking over happens under a short-lived guard lock, so
two processes can never both take over.

While the lock is held, the temporary files a killed run left in the folder are deleted
(:func:`selfsup.checkpoint.clean_stale_temp`): no live writer owns them.

The lock is re-entrant within a process (``selfsup demo`` holds its folder and calls ``pretrain`` on it), and
a folder the lock itself created is removed again on release if nothing but the lock files is in it, so a run
that fails validation leaves nothing behind.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock, Timeout

from selfsup.errors import UserError

LOCK_NAME = ".selfsup.lock"
PID_NAME = ".selfsup.lock.pid"
_GUARD_NAME = ".selfsup.lock.guard"
_HELD: dict[Path, list[Any]] = {}  # folder -> [lock, depth, created]; this process's locks
_HELD_LOCK = threading.Lock()

F = TypeVar("F", bound=Callable[..., Any])


class RunFolderBusy(UserError):
    """Another live process holds the run folder."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _read_pid(folder: Path) -> int | None:
    try:
        return int((folder / PID_NAME).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _acquire(folder: Path, what: str) -> FileLock:
    lock_path = folder / LOCK_NAME
    with FileLock(str(folder / _GUARD_NAME), timeout=10):
        lock = FileLock(str(lock_path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            holder = _read_pid(folder)
            if holder is not None and (holder == os.getpid() or _pid_alive(holder)):
                raise RunFolderBusy(
                    f"{what} {folder} is in use by another selfsup process (PID {holder}); wait for it to finish, "
                    f"stop it, or choose another {what}") from None
            # stale: the recorded holder is dead but the lock is still held (by an orphaned child). A new lock
            # file replaces it; the orphan keeps a lock on the old, unlinked file only.
            lock_path.unlink(missing_ok=True)
            lock = FileLock(str(lock_path), timeout=0)
            try:
                lock.acquire()
            except Timeout:
                raise RunFolderBusy(f"{what} {folder} is locked by another process; choose another {what}") from None
            print(f"note: took over the stale lock of {folder} from PID {holder} (no longer running)",
                  file=sys.stderr)
        (folder / PID_NAME).write_text(f"{os.getpid()}\n")
    return lock


def acquire_run_folder(path: str | os.PathLike[str], what: str = "--out") -> None:
    """Lock run folder ``path`` for this process (creating it if needed); re-entrant. Raises RunFolderBusy."""
    from selfsup.checkpoint import clean_stale_temp
    from selfsup.config.validate import check_output_dir

    check_output_dir(path, what)
    folder = Path(os.path.abspath(path))
    with _HELD_LOCK:
        held = _HELD.get(folder)
        if held is not None:
            held[1] += 1
            return
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        try:
            lock = _acquire(folder, what)
        except BaseException:
            if created:
                _remove_if_only_locks(folder)
            raise
        _HELD[folder] = [lock, 1, created]
    clean_stale_temp(folder)


def release_run_folder(path: str | os.PathLike[str]) -> None:
    folder = Path(os.path.abspath(path))
    with _HELD_LOCK:
        held = _HELD.get(folder)
        if held is None:
            return
        held[1] -= 1
        if held[1] > 0:
            return
        del _HELD[folder]
        lock, _, created = held
        if created and folder.is_dir() and _only_locks(folder):
            _remove_if_only_locks(folder)  # the run failed before writing anything: leave nothing behind
        lock.release()


def _only_locks(folder: Path) -> bool:
    return all(p.name in (LOCK_NAME, PID_NAME, _GUARD_NAME) for p in folder.iterdir())


def _remove_if_only_locks(folder: Path) -> None:
    try:
        if not _only_locks(folder):
            return
        for name in (PID_NAME, _GUARD_NAME, LOCK_NAME):
            (folder / name).unlink(missing_ok=True)
        folder.rmdir()
    except OSError:
        pass


@contextmanager
def run_folder_lock(path: str | os.PathLike[str], what: str = "--out") -> Iterator[Path]:
    """``with run_folder_lock(out):`` hold the run folder for the block."""
    acquire_run_folder(path, what)
    try:
        yield Path(path)
    finally:
        release_run_folder(path)


def locks_run_folder(func: F) -> F:
    """Decorator for ``pretrain(cfg, ...)``: holds ``cfg.out`` for the call (on the main process only)."""

    @functools.wraps(func)
    def wrapper(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        from selfsup import distributed

        if not distributed.env_info().is_main:
            return func(cfg, *args, **kwargs)
        with run_folder_lock(cfg.out):
            return func(cfg, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


RUN_MARKERS = ("config.yaml", "checkpoint.pt", "metrics.jsonl", "summary.json", "encoder.safetensors")


def is_run_folder(path: str | os.PathLike[str], *, allow_empty: bool = False) -> bool:
    """True for a folder ``selfsup pretrain`` wrote (it holds config.yaml, a checkpoint or metrics); with
    ``allow_empty`` also for a missing or empty one."""
    folder = Path(path)
    if not folder.is_dir():
        return allow_empty and not folder.exists()
    if any((folder / m).is_file() for m in RUN_MARKERS):
        return True
    return allow_empty and _only_locks(folder)


def clear_run_folder(path: str | os.PathLike[str]) -> None:
    """Delete everything in a run folder this process holds, except the lock files."""
    import shutil

    folder = Path(os.path.abspath(path))
    if not is_held(folder):
        raise RuntimeError(f"clear_run_folder({folder}) without holding its lock")
    for child in folder.iterdir():
        if child.name in (LOCK_NAME, PID_NAME, _GUARD_NAME):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def is_held(path: str | os.PathLike[str]) -> bool:
    """True while this process holds the lock of ``path``."""
    return Path(os.path.abspath(path)) in _HELD


__all__ = ["RunFolderBusy", "acquire_run_folder", "release_run_folder", "run_folder_lock", "locks_run_folder",
           "is_held", "clear_run_folder", "is_run_folder", "LOCK_NAME", "PID_NAME"]
