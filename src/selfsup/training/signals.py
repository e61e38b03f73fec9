"""Stopping a run from outside: Ctrl-C / SIGTERM save and exit; a lost peer of a distributed run is reported."""

from __future__ import annotations

import signal
import sys
import time
from types import FrameType
from typing import Any

from selfsup.errors import UserError


class Interrupted(UserError):
    """Ctrl-C or SIGTERM: the run was saved and can be resumed."""

    exit_code = 130


class PeerLost(UserError):
    """Another process of a distributed run died or its connection broke; resume from the last checkpoint."""

    exit_code = 3


class StopFlag:
    """First Ctrl-C/SIGTERM asks the loop to save and stop after the current step; a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        self._t_first = 0.0

    def __enter__(self) -> StopFlag:
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            # under torchrun a terminal Ctrl-C reaches a worker twice (from the tty, then forwarded by the
            # launcher): only a second Ctrl-C a moment later means "abort"
            if signum == signal.SIGINT and time.monotonic() - self._t_first > 1.0:
                raise KeyboardInterrupt
            return
        self.signum, self._t_first = signum, time.monotonic()
        print(f"\n{signal.Signals(signum).name} received: finishing this step, saving, then exiting "
              "(press Ctrl-C again to abort without saving)", file=sys.stderr)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGTERM).name

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
