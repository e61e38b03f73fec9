"""``--time-budget``: fit the schedule to the number of steps that fit in a wall-clock budget.

After a few warm-up steps (first steps are slower: allocator, caches, compile), the measured seconds per
step give the number of steps that fit before the deadline, minus a reserve for the final evaluation.
The warmup + cosine LR schedule and the EMA/temperature schedules are then fitted to that many steps.
The estimate is refreshed periodically (e.g. after an online kNN evaluation ate into the budget), so
the run ends on time even when throughput drifts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class TimeBudget:
    minutes: float
    t0: float  # perf_counter() at the start of the run (before data loading)
    calibration_steps: int = 5  # steps ignored before timing starts
    refit_every: int = 1  # steps between re-estimates (cheap: the mean since the mark is stable)
    min_steps: int = 1
    reserve_s: float = 0.0  # time kept for the final evaluation and saving
    _mark: tuple[int, float] | None = field(default=None, repr=False)
    sec_per_step: float | None = None

    @property
    def deadline(self) -> float:
        return self.t0 + 60.0 * self.minutes

    def observe(self, step: int, now: float) -> int | None:
        """Call after each completed step; returns a new total step count when (re)fitted, else None."""
        if step < self.calibration_steps:
            return None
        if self._mark is None:
            self._mark = (step, now)
            return None
        s0, t0 = self._mark
        done = step - s0
        if done < 3 or (self.sec_per_step is not None and done != 3 and done % self.refit_every):
            return None
        self.sec_per_step = (now - t0) / done
        return self.fit(step, now)

    def fit(self, step: int, now: float) -> int:
        assert self.sec_per_step is not None
        left = self.deadline - now - self.reserve_s
        return max(self.min_steps, step + max(0, math.floor(left / self.sec_per_step)))

    def restart_timing(self, step: int, now: float) -> None:
        """Call after a pause (an evaluation): time only training steps from here."""
        self._mark = (step, now)
