"""The step schedule: how many steps the run takes, where it stops, how long the LR warms up."""

from __future__ import annotations

from dataclasses import dataclass, field

OPEN_ENDED = 10**9  # total steps of a --time-budget run until its first fit


@dataclass
class Schedule:
    """``total_steps`` spans the LR and method schedules; ``end_step`` is where this run stops (``max_steps``)."""

    steps_per_epoch: int
    epochs: int
    warmup_epochs: float
    max_steps: int | None = None
    total_steps: int = field(init=False)
    end_step: int = field(init=False)
    warmup_steps: int = field(init=False)

    def __post_init__(self) -> None:
        self.fit(self.epochs * self.steps_per_epoch)

    def fit(self, total: int, *, provisional: bool = False) -> None:
        """Set the number of steps: the one place ``total_steps`` changes. ``provisional`` (a time budget's
        open-ended start) keeps the warm-up of the epoch-based schedule until the budget's first fit."""
        self.total_steps = total
        self.end_step = min(total, self.max_steps) if self.max_steps else total
        if not provisional:
            # short runs: never warm up for more than half of the steps
            self.warmup_steps = min(int(round(self.warmup_epochs * self.steps_per_epoch)), total // 2)
