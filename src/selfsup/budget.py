"""``--time-budget``: fit the schedule to the number of steps that fit in a wall-clock budget.

After a few warm-up steps (first steps are slower: allocator, caches, compile), the measured seconds per
step give the number of steps that fit before the deadline, minus a reserve for the final evaluation.
The warmup + cosine LR schedule and the EMA/temperature schedules are then fitted to that many steps.
The estimate is refreshed every step from a sliding window of recent steps, so the run ends on time
even when throughput drifts (another process took a core for a while, an online kNN evaluation ran).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass
class TimeBudget:
    minutes: float
    t0: float  # perf_counter() at the start of the run (before data loading)
    calibration_steps: int = 5  # steps ignored before timing starts
    window: int = 30  # recent steps used for the seconds-per-step estimate
    min_steps: int = 1
    reserve_s: float = 0.0  # time kept for the final evaluation and saving
    sec_per_step: float | None = None
    _marks: deque[tuple[int, float]] = field(default_factory=deque, repr=False)

    @property
    def deadline(self) -> float:
        return self.t0 + 60.0 * self.minutes

    def observe(self, step: int, now: float) -> int | None:
        """Call after each completed step; returns the fitted total step count once calibrated, else None."""
        if step < self.calibration_steps:
            return None
        self._marks.append((step, now))
        while len(self._marks) > self.window + 1:
            self._marks.popleft()
        (s0, t0), (s1, t1) = self._marks[0], self._marks[-1]
        if s1 - s0 < 3:
            return None
        self.sec_per_step = (t1 - t0) / (s1 - s0)
        return self.fit(step, now)

    def fit(self, step: int, now: float) -> int:
        assert self.sec_per_step is not None
        left = self.deadline - now - self.reserve_s
        return max(self.min_steps, step + max(0, math.floor(left / self.sec_per_step)))

    def restart_timing(self, step: int, now: float) -> None:
        """Call after a pause (an evaluation): time only training steps from here."""
        self._marks.clear()
        self._marks.append((step, now))
