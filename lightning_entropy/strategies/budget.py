"""The Trainer's time cap (``max_time``) as a sampler strategy sees it: how much is left, what a sampler step costs,
and how many steps the next Lightning step may run so the run ends at the cap, not one long chunk after it.

Lightning's ``Timer`` callback (added by ``Trainer(max_time=...)``) starts at ``on_train_start``, before the
strategy's own ``on_train_start`` reads the data and starts the walkers, so the start phase counts against the cap.
The Timer stops the fit only between Lightning steps; one Lightning step of a large model (``steps_per_lightning_step``
sampler steps of every walker) can take longer than the whole cap. :class:`StepClock` measures the host time of
the chunks (no extra synchronisation: the chunks end with a host read of their figures) and shortens the next chunk
to the steps that fit in the time left.
"""

from __future__ import annotations

import math
from typing import Any


def timer(trainer: Any) -> Any:
    """The Trainer's ``Timer`` callback with a duration (``max_time``), or ``None``."""
    from lightning.pytorch.callbacks import Timer  # not at import: the startup hook imports the strategies while
    # lightning.pytorch is still initialising

    for callback in getattr(trainer, "callbacks", None) or ():
        if isinstance(callback, Timer) and callback._duration is not None:  # no public accessor of the duration
            return callback
    return None


def remaining(trainer: Any) -> float | None:
    """Seconds left before ``max_time`` ends the fit (``None``: no time cap)."""
    t = timer(trainer)
    return None if t is None else float(t.time_remaining("train"))


def duration(trainer: Any) -> float | None:
    """The Trainer's ``max_time`` in seconds (``None``: none)."""
    t = timer(trainer)
    return None if t is None else float(t._duration)


class StepClock:
    """Seconds per sampler step (all walkers), measured over the chunks run so far.

    Args:
        prior: an estimate before the first chunk (e.g. from the start phase's optimiser steps), or ``None``.
    """

    def __init__(self, prior: float | None = None) -> None:
        self.prior = prior if prior is not None and math.isfinite(prior) and prior > 0 else None
        self.chunks = 0
        self._per_step: float | None = None

    @property
    def per_step(self) -> float | None:
        """Measured seconds per sampler step (the prior until a chunk has run)."""
        return self._per_step if self._per_step is not None else self.prior

    def record(self, steps: int, seconds: float) -> None:
        """A chunk of ``steps`` sampler steps took ``seconds``. The second chunk replaces the first (compilation,
        cold caches); later chunks enter a moving average (weight 0.3), so a machine that gets busier shows."""
        if steps < 1:
            return
        self.chunks += 1
        per = seconds / steps
        self._per_step = per if self.chunks <= 2 else 0.7 * self._per_step + 0.3 * per

    def steps_for(self, requested: int, left: float | None, minimum: int = 1) -> int:
        """Sampler steps of the next chunk: ``requested``, or fewer (at least ``minimum``) when they would run past
        the ``left`` seconds of the cap."""
        per = self.per_step
        if left is None or per is None or requested * per <= left:
            return requested
        return max(minimum, min(requested, int(max(0.0, left) / per)))

    def estimate(self, steps: int) -> float | None:
        """Seconds ``steps`` sampler steps would take (``None`` when nothing is known)."""
        per = self.per_step
        return None if per is None else per * steps


def planned_steps(trainer: Any, chunk: int, done: int = 0) -> int | None:
    """Sampler steps ``max_steps`` (or ``max_epochs``) still allows after ``done``: the Lightning steps left times
    ``chunk`` (``None`` when the Trainer has no finite step limit)."""
    try:
        total = float(trainer.estimated_stepping_batches)
    except Exception:  # noqa: BLE001 - no sized loader yet, or an unsized one
        return None
    if not math.isfinite(total):
        return None
    return max(0, int(total) - int(trainer.global_step)) * chunk + done


def forecast(per_step: float | None, steps: int | None, left: float | None, walkers: int, *,
             measured: bool = True) -> tuple[str, float]:
    """One sentence on how long the ``steps`` sampler steps left will take, and the share of them the time cap
    allows (``inf`` without a cap). ``measured``: ``per_step`` comes from chunks run, not from an estimate."""
    if per_step is None:
        return "", math.inf
    how = "" if measured else " (estimated from the start phase)"
    cost = f"Sampling{how}: about {per_step:.3g} s per sampler step of {walkers} walkers"
    if left is None:
        if steps is None:
            return f"{cost}.", math.inf
        return f"{cost}; the {steps:,} steps left take about {_clock(per_step * steps)}.", math.inf
    reach = int(max(0.0, left) / per_step) if per_step > 0 else (steps or 0)
    if steps is not None and reach >= steps:
        return (f"{cost}; the {steps:,} steps left take about {_clock(per_step * steps)}, within the"
                f" {_clock(left)} left of max_time.", reach / max(steps, 1))
    limit = f"of the {steps:,} that max_steps allows " if steps is not None else ""
    return (f"{cost}; the {_clock(left)} left of max_time allow about {reach:,} more steps {limit}(the run stops at"
            " the cap). For more steps raise max_time, or use fewer walkers or a smaller model.",
            reach / max(steps, 1) if steps is not None else 0.0)


def _clock(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def progress(trainer: Any) -> float:
    """Fraction of the run done: of the Trainer's steps, or of ``max_time``, whichever is further."""
    from lightning.pytorch.callbacks import Timer  # not at import (see timer)

    done = 0.0
    try:
        total = float(trainer.estimated_stepping_batches)
    except Exception:  # no loaders sized yet, or an unsized loader
        total = math.inf
    if math.isfinite(total) and total > 0:
        done = (trainer.global_step + 1) / total
    for callback in trainer.callbacks:
        if isinstance(callback, Timer):
            elapsed, remaining = callback.time_elapsed("train"), callback.time_remaining("train")
            if remaining is not None and elapsed + remaining > 0:
                done = max(done, elapsed / (elapsed + remaining))
    return done


def snapshot_interval(trainer: Any, chunk: int, snapshot_every: int | None) -> int:
    """Sampler steps between convergence snapshots, a multiple of the ``chunk`` length: ``snapshot_every`` rounded
    up, else a twentieth of the run (``max_steps`` Lightning steps; 100 without a step limit)."""
    if snapshot_every is not None:
        return max(chunk, int(math.ceil(snapshot_every / chunk)) * chunk)
    max_steps = int(getattr(trainer, "max_steps", -1) or -1)
    total = max_steps * chunk if max_steps > 0 else 100 * chunk
    return max(chunk, (total // 20) // chunk * chunk)
