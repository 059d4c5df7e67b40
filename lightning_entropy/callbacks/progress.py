"""``SamplerProgressBar``: one bar over sampler steps, with a total, an ETA and the sampler's figures.

Lightning's own bar counts batches per epoch; a sampler's "epoch" is one full-batch Lightning step, so it would show
``Epoch 118`` with no total. This bar counts sampler steps (``strategy.sampler_steps``; Lightning steps for other
strategies). Its total is what the run will reach: the steps ``max_steps`` (or ``max_epochs``) allows, or, when
``max_time`` ends the run first, the steps the measured rate reaches by then, so the ETA counts down to whichever
limit comes first. The figures the strategy shows (``wl/factor``, ``wl/flatness``, ``wl/acceptance``, the walkers'
ln L_train range; ``md/*`` for ``entropy_md``) are on it, without their prefix.

    Trainer(strategy="wang_landau", max_steps=200, callbacks=[SamplerProgressBar()])
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks.progress import ProgressBar

from lightning_entropy.strategies import budget

PREFIXES = ("wl/", "md/")


def _figure(value: Any) -> str:
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.3g}"


class SamplerProgressBar(ProgressBar):
    """A tqdm bar over sampler steps (see the module docstring).

    Args:
        refresh_every: Lightning steps between redraws.
        leave: keep the finished bar on screen.
    """

    def __init__(self, refresh_every: int = 1, leave: bool = True) -> None:
        super().__init__()
        if not isinstance(refresh_every, int) or refresh_every < 1:
            raise ValueError(f"refresh_every={refresh_every!r} must be a positive integer.")
        self.refresh_every = refresh_every
        self.leave = leave
        self._enabled = True
        self.bar = None
        self._origin: tuple[float, int] | None = None  # (time, steps) when sampling started

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.trainer.is_global_zero

    # -- counting --------------------------------------------------------------------------------------------------

    @staticmethod
    def steps_done(trainer: Trainer) -> int:
        """Sampler steps so far (Lightning steps for a strategy that is not a sampler)."""
        steps = getattr(trainer.strategy, "sampler_steps", None)
        return int(steps) if steps is not None else int(trainer.global_step)

    def expected_total(self, trainer: Trainer) -> int | None:
        """The sampler steps the run will end at: the step limit, or what the measured rate reaches by ``max_time``
        when that comes first (``None``: neither is known)."""
        done = self.steps_done(trainer)
        chunk = int(getattr(trainer.strategy, "steps_per_lightning_step", 1))
        by_steps = budget.planned_steps(trainer, chunk, done)
        left = budget.remaining(trainer)
        by_time = None
        if left is not None and self._origin is not None:
            seconds, steps = time.monotonic() - self._origin[0], done - self._origin[1]
            if seconds > 0 and steps > 0:
                by_time = done + int(max(0.0, left) * steps / seconds)
        totals = [t for t in (by_steps, by_time) if t is not None]
        return max(done, min(totals)) if totals else None

    # -- hooks -----------------------------------------------------------------------------------------------------

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self.bar is None and self.is_enabled:  # after the strategy's start phase (on_train_start)
            from tqdm.auto import tqdm

            self._origin = (time.monotonic(), self.steps_done(trainer))
            self.bar = tqdm(total=self.expected_total(trainer), initial=self.steps_done(trainer), desc="sampling",
                            unit="step", dynamic_ncols=True, leave=self.leave, file=sys.stdout, smoothing=0.1)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self.bar is None or (trainer.global_step % self.refresh_every and not trainer.should_stop):
            return
        total = self.expected_total(trainer)
        if total is not None and total != self.bar.total:
            self.bar.total = total
        self.bar.update(self.steps_done(trainer) - self.bar.n)
        self.bar.set_postfix(self.figures(trainer), refresh=True)

    def figures(self, trainer: Trainer) -> dict[str, str]:
        """The strategy's progress-bar values, prefix dropped, three significant digits."""
        out = {}
        for name, value in trainer.progress_bar_metrics.items():
            short = next((name[len(p):] for p in PREFIXES if name.startswith(p)), name)
            out[short] = _figure(value)
        return out

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.bar is not None:
            self.bar.total = self.bar.n  # the run ended here (max_steps, max_time or an interruption)
            self.bar.refresh()
            self.bar.close()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if self.bar is not None:
            self.bar.close()
