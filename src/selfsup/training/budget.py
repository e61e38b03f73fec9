"""``--time-budget``: fit the schedule to the number of steps that fit in a wall-clock budget.

After a few warm-up steps (first steps are slower: allocator, caches, compile), the measured seconds per
step give the number of steps that fit before the deadline, minus a reserve for the final evaluation.
The warmup + cosine LR schedule and the EMA/temperature schedules are then fitted to that many steps.
The estimate is refreshed every step from a sliding window of recent steps, so the run ends on time
even when throughput drifts (another process took a core for a while, an online kNN evaluation ran).

Steps need not cost the same: with a resolution schedule (``data.low_res_size``) the first part of the
run takes cheaper, smaller views. ``phases`` gives each part's start (fraction of the fitted steps) and
its nominal cost relative to a full step; the window then measures seconds per unit of nominal work, and
the fit solves for the step count whose remaining work fits. Once the last (full-cost) phase is reached
only measured full steps remain, so a wrong nominal cost can only shift the switch point, not the end.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Callable, Sized
from dataclasses import dataclass, field

from selfsup import distributed
from selfsup.config import DataConfig
from selfsup.eval.knn import knn_search_seconds


def phase_cost(phases: tuple[tuple[float, float], ...], step: int, total: int) -> float:
    """Nominal cost of step ``step`` (0-based) of a ``total``-step run: the cost of the last phase whose start
    fraction it has reached. The one rule for which phase a step is in (the training loop uses it too)."""
    c = phases[0][1]
    for start, cost in phases:
        if step >= start * total:
            c = cost
    return c


@dataclass
class TimeBudget:
    minutes: float
    t0: float  # perf_counter() at the start of the run (before data loading)
    calibration_steps: int = 5  # steps ignored before timing starts
    window: int = 30  # recent steps used for the seconds-per-step estimate
    min_steps: int = 1
    reserve_s: float = 0.0  # time kept for the final evaluation and saving
    sec_per_step: float | None = None  # seconds per full-cost step (per unit of nominal work)
    phases: tuple[tuple[float, float], ...] = ((0.0, 1.0),)  # (start fraction, relative cost), ascending
    _marks: deque[tuple[int, float, float]] = field(default_factory=deque, repr=False)  # (step, time, work)
    _work: float = field(default=0.0, repr=False)  # nominal work done since timing started

    def __post_init__(self) -> None:
        starts = [f for f, _ in self.phases]
        if not self.phases or starts[0] != 0.0 or starts != sorted(starts) or min(c for _, c in self.phases) <= 0:
            raise ValueError(f"TimeBudget: phases must start at 0.0, ascend and cost > 0, got {self.phases}")

    @property
    def deadline(self) -> float:
        return self.t0 + 60.0 * self.minutes

    def cost(self, step: int, total: int) -> float:
        """Nominal cost of step ``step`` (0-based) of a ``total``-step run (:func:`phase_cost`)."""
        return phase_cost(self.phases, step, total)

    def remaining_work(self, step: int, total: int) -> float:
        """Nominal work of steps ``step .. total - 1`` (closed form over the phases)."""
        work = 0.0
        for k, (start, cost) in enumerate(self.phases):
            end = self.phases[k + 1][0] if k + 1 < len(self.phases) else 1.0
            # steps i with start * total <= i < end * total, intersected with [step, total)
            lo = max(step, math.ceil(start * total))
            hi = total if k + 1 == len(self.phases) else min(total, math.ceil(end * total))
            work += cost * max(0, hi - lo)
        return work

    def observe(self, step: int, now: float, cost: float = 1.0) -> int | None:
        """Call after each completed step (``cost``: its nominal cost, also for any steps since the last call);
        returns the fitted total step count once calibrated, else None."""
        if step < self.calibration_steps:
            return None
        if self._marks:  # the steps since the last mark (one per call in training); the first mark starts the clock
            self._work += cost * (step - self._marks[-1][0])
        self._marks.append((step, now, self._work))
        while len(self._marks) > self.window + 1:
            self._marks.popleft()
        (s0, t0, w0), (s1, t1, w1) = self._marks[0], self._marks[-1]
        if s1 - s0 < 3:
            return None
        self.sec_per_step = (t1 - t0) / (w1 - w0)
        return self.fit(step, now)

    def fit(self, step: int, now: float) -> int:
        """The largest total step count whose remaining nominal work fits before the deadline and reserve."""
        assert self.sec_per_step is not None
        units = max(0.0, self.deadline - now - self.reserve_s) / self.sec_per_step
        if len(self.phases) == 1:
            return max(self.min_steps, step + math.floor(units / self.phases[0][1]))
        # remaining_work grows with total (a longer run moves the switch later but adds steps): bisect
        lo, hi = step, step + math.floor(units / min(c for _, c in self.phases)) + 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.remaining_work(step, mid) <= units else (lo, mid)
        return max(self.min_steps, lo)

    def restart_timing(self, step: int, now: float) -> None:
        """Call after a pause (an evaluation): time only training steps from here."""
        self._marks.clear()
        self._marks.append((step, now, self._work))


def budget_phases(data: DataConfig) -> tuple[tuple[float, float], ...]:
    """(start fraction, nominal cost) of the resolution schedule's phases: a step's nominal cost scales with the
    view area (measured against real steps in benchmarks/RESULTS.md, "Time to accuracy")."""
    if not data.low_res_size:
        return ((0.0, 1.0),)
    return ((0.0, (data.low_res_size / data.image_size) ** 2), (data.low_res_fraction, 1.0))


def refit_budget(
    budget: TimeBudget, step: int, train_ds: Sized, val_ds: Sized | None, local_batch: int, n_views: int,
    eval_probe: Callable[[], tuple[float, int]] | None = None, cost: float = 1.0,
) -> int | None:
    """Re-estimate the steps that fit, keeping a reserve for saving and the final kNN.

    The kNN reserve is measured once, when the throughput is first known: ``eval_probe()`` returns the
    seconds per image of the final feature extraction (timed on a few training batches), plus the
    similarity search (~2 N_train N_val F FLOPs at a conservative 50 GFLOP/s). Without a probe it falls
    back to 1/3 of a training step per image (forward only). ``cost``: the nominal cost of the step just
    taken (below 1 in a resolution schedule's low-resolution phase).
    """
    fitted = budget.observe(step, time.perf_counter(), cost)
    if fitted is not None and budget.sec_per_step is not None and budget.reserve_s == 0.0:
        # final checkpoint + encoder export + one slow step; fixed costs capped at 1% of the budget
        budget.reserve_s = min(3.0, 0.6 * budget.minutes) + budget.sec_per_step
        if val_ds is not None:
            n = len(train_ds) + len(val_ds)
            if eval_probe is not None:
                per_image, dim = eval_probe()
                budget.reserve_s += per_image * n + knn_search_seconds(len(train_ds), len(val_ds), dim)
                budget.restart_timing(step, time.perf_counter())  # the probe's pause is not a training step
            else:
                budget.reserve_s += budget.sec_per_step / max(1, local_batch * n_views) / 3 * n
        now = time.perf_counter()
        left = budget.deadline - now
        if left < budget.reserve_s and distributed.env_info().is_main:
            print(f"warning: --time-budget {budget.minutes:g} min leaves {max(0.0, left):.0f} s, but saving and the "
                  f"final kNN need about {budget.reserve_s:.0f} s: the run stops after this step and will overrun. "
                  "Raise --time-budget, or drop --val to skip the final kNN.", file=sys.stderr, flush=True)
        fitted = budget.fit(step, now)
    return fitted
