"""How much the command line says: one process-wide verbosity level, set by ``selfsup -q`` / ``-v``.

    0 quiet    errors, warnings and results only
    1 normal   (default) plus a short header and the end-of-run summary
    2 verbose  plus details such as the resolved configuration (always saved as RUN/config.yaml)

Library calls (``selfsup.pretrain(...)``) run at the normal level unless the caller sets another one.
Messages go to stderr so that stdout stays for results (tables, ``--json``).
"""

from __future__ import annotations

import sys

QUIET, NORMAL, VERBOSE = 0, 1, 2

_level = NORMAL


def set_verbosity(level: int) -> None:
    """Set the level (clamped to QUIET..VERBOSE)."""
    global _level
    _level = max(QUIET, min(VERBOSE, int(level)))


def verbosity() -> int:
    return _level


def bars() -> bool:
    """Whether progress bars may be drawn: not at the quiet level (a bar is neither a result nor a warning)."""
    return _level >= NORMAL


def info(message: str) -> None:
    """Print at the normal level and above (one write per message: ranks under torchrun share stderr)."""
    if _level >= NORMAL:
        sys.stderr.write(message.rstrip("\n") + "\n")
        sys.stderr.flush()


def detail(message: str) -> None:
    """Print at the verbose level only."""
    if _level >= VERBOSE:
        sys.stderr.write(message.rstrip("\n") + "\n")
        sys.stderr.flush()
