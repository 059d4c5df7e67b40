"""The job's time cap (``trainer.max_time``), counted from the job's start and shared by everything in it.

The sampler's Trainer gets what is left when it starts, less a reserve for the report (figures, tables, the summary)
so that the job, not only the sampler, ends within the cap. The ``lightning-entropy`` command counts from the start
of its process (:func:`process_age`: the imports and Hydra's composition take several seconds); a job of a multirun,
a program that calls ``main()`` (tests, notebooks) and :func:`lightning_entropy.cli.run` count from the job's start.
The baseline beside the sampler (a second process) stops just before it; a baseline that runs before the sampler in
this process (``baseline.parallel=false``) takes at most half of what is left.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta

#: The report's reserve (the report, the baseline's last records, the interpreter's exit): this fraction of the cap,
#: within [RESERVE_MIN_S, RESERVE_MAX_S] seconds (never more than a fifth of the cap).
RESERVE_FRACTION = 0.05
RESERVE_MIN_S, RESERVE_MAX_S = 4.0, 15.0
#: The baseline process stops this many seconds before the sampler (it still writes its records and exits).
BASELINE_LEAD_S = 2.0
#: The least time the sampler's Trainer is given (the walkers start and take at least one step).
MINIMUM_S = 1.0


def process_age() -> float:
    """Seconds since this process started (Linux: ``/proc``; elsewhere ``0``)."""
    try:
        with open("/proc/self/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))  # field 22: start time in ticks
    except (OSError, ValueError, IndexError):
        return 0.0


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
        if self.cap is None:
            return 0.0
        return min(0.2 * self.cap, max(RESERVE_MIN_S, min(RESERVE_MAX_S, RESERVE_FRACTION * self.cap)))

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

    def wall_clock(self, lead: float = 0.0) -> float | None:
        """The moment the work must stop, ``lead`` seconds early, as ``time.time()`` (for another process)."""
        left = self.left()
        return None if left is None else time.time() + max(0.0, left - lead)


def stopped_by(trainer, *, interrupted: bool = False) -> str:
    """What ended a fit: ``"interrupted"``, ``"max_steps"``, ``"max_time"`` or ``"max_epochs"``."""
    from lightning_entropy.strategies import budget

    if interrupted:
        return "interrupted"
    if trainer.max_steps is not None and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
        return "max_steps"
    timer = budget.timer(trainer)
    if getattr(trainer.strategy, "stopped_by_time", False) or (
            timer is not None and timer.time_elapsed("train") >= timer._duration):
        return "max_time"  # the cap passed, or not even one more sampler step fitted in it
    return "max_epochs"
