"""The job's time cap (``trainer.max_time``), counted from the job's start and shared by everything in it.

The sampler's Trainer gets what is left when it starts, less a reserve for the report (figures, tables, the summary)
so that the job, not only the sampler, ends within the cap. The baseline beside it (a second process) stops at the
same moment; a baseline that runs before the sampler in this process (``baseline.parallel=false``) takes at most
half of what is left.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta

#: The report's reserve: this fraction of the cap, at most :data:`RESERVE_MAX_S` seconds.
RESERVE_FRACTION = 0.05
RESERVE_MAX_S = 15.0
#: The least time the sampler's Trainer is given (the walkers start and take at least one step).
MINIMUM_S = 1.0


def seconds(max_time: str | None) -> float | None:
    """``"DD:HH:MM:SS"`` in seconds (``None``: no cap)."""
    if max_time is None:
        return None
    parts = str(max_time).split(":")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        from lightning_entropy.cli.config import ConfigError

        raise ConfigError(f"trainer.max_time={max_time!r}: use 'DD:HH:MM:SS' (e.g. '00:00:04:00') or null.")
    days, hours, minutes, secs = (int(p) for p in parts)
    return float(((days * 24 + hours) * 60 + minutes) * 60 + secs)


@dataclass
class Deadline:
    """The job's cap: ``started`` (``time.monotonic()`` at the job's start) plus ``cap`` seconds (``None``: none)."""

    started: float
    cap: float | None

    @classmethod
    def of(cls, max_time: str | None, started: float | None = None) -> Deadline:
        return cls(time.monotonic() if started is None else started, seconds(max_time))

    @property
    def reserve(self) -> float:
        return 0.0 if self.cap is None else min(RESERVE_MAX_S, RESERVE_FRACTION * self.cap)

    def left(self) -> float | None:
        """Seconds until the work must stop (the cap less the report's reserve), ``None`` without a cap."""
        if self.cap is None:
            return None
        return self.started + self.cap - self.reserve - time.monotonic()

    def trainer_max_time(self) -> timedelta | None:
        """The sampler Trainer's ``max_time``: what is left now (at least :data:`MINIMUM_S`)."""
        left = self.left()
        return None if left is None else timedelta(seconds=max(MINIMUM_S, left))

    def share(self, fraction: float) -> float | None:
        """``fraction`` of what is left, in seconds (``None`` without a cap)."""
        left = self.left()
        return None if left is None else max(0.0, fraction * left)

    def wall_clock(self) -> float | None:
        """The moment the work must stop as ``time.time()`` (for another process), ``None`` without a cap."""
        left = self.left()
        return None if left is None else time.time() + left


def stopped_by(trainer, *, interrupted: bool = False) -> str:
    """What ended a fit: ``"interrupted"``, ``"max_steps"``, ``"max_time"`` or ``"max_epochs"``."""
    from lightning_entropy.strategies import budget

    if interrupted:
        return "interrupted"
    if trainer.max_steps is not None and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
        return "max_steps"
    timer = budget.timer(trainer)
    if timer is not None and timer.time_elapsed("train") >= timer._duration:
        return "max_time"
    return "max_epochs"
