"""SIGTERM and SIGINT during a job: stop cleanly at a Lightning-step boundary, keep what was sampled, exit non-zero.

:func:`interruptible` installs handlers for the job's duration. Before sampling (building data, the start phase in
the strategy's setup) a signal raises :class:`Interrupted` at once: nothing is lost, nothing was sampled. Once
sampling runs (:class:`Checkpointing` marks it), a signal only sets a flag: the current Lightning step ends, the
callback writes ``checkpoint.ckpt`` and stops the Trainer, the job writes the landscape and summary of what was
sampled, and then raises :class:`Interrupted`; the console script prints how to resume and exits with ``128 +
signal``. A second signal while stopping raises at once (the checkpoint written so far stays).

:class:`Checkpointing` also saves ``checkpoint.ckpt`` every ``minutes`` of sampling (atomically: temp file, then
``os.replace``), so a SIGKILL loses at most that interval.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Iterator

from lightning.pytorch.callbacks import Callback

CHECKPOINT = "checkpoint.ckpt"


class Interrupted(Exception):
    """The job was stopped by a signal (``signum``); what was sampled up to then is in the run directory."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"interrupted by {signal.Signals(self.signum).name}")


class _Flag:
    """The job's interruption state: whether sampling runs (flag mode) and the signal received, if any."""

    def __init__(self) -> None:
        self.sampling = False
        self.signum: int | None = None
        self.trainer = None

    def handler(self, signum, _frame) -> None:
        first = self.signum is None
        self.signum = signum
        if self.sampling and first:
            if self.trainer is not None:  # our callback stops the Trainer; Lightning's own SIGTERM exit would exit 0
                with contextlib.suppress(AttributeError):
                    self.trainer._signal_connector.received_sigterm = False
            return
        raise Interrupted(signum)


_FLAG: _Flag | None = None


@contextlib.contextmanager
def interruptible() -> Iterator[_Flag]:
    """Handle SIGTERM and SIGINT as described in the module doc while the ``with`` block runs."""
    global _FLAG
    flag, previous = _Flag(), {}
    outer, _FLAG = _FLAG, flag
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers, the job still runs
                previous[sig] = signal.signal(sig, flag.handler)
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _FLAG = outer


def save_checkpoint(trainer, path: str | Path) -> Path:
    """``trainer.save_checkpoint`` into a temp file beside ``path``, then ``os.replace`` (never half a checkpoint)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        trainer.save_checkpoint(str(tmp))  # every rank calls it; only global rank 0 writes
        if tmp.exists():
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class Checkpointing(Callback):
    """Saves ``<dirpath>/checkpoint.ckpt`` every ``minutes`` of sampling and when a signal asks the job to stop.

    Args:
        dirpath: the run directory.
        minutes: wall-clock minutes between saves (``0``: only when interrupted).
    """

    def __init__(self, dirpath: str | Path, minutes: float) -> None:
        self.path = Path(dirpath) / CHECKPOINT
        self.interval_s = float(minutes) * 60.0
        self._last = time.monotonic()

    def on_train_batch_start(self, trainer, *args) -> None:
        if _FLAG is not None:
            _FLAG.trainer = trainer
            _FLAG.sampling = True
            if _FLAG.signum is not None:  # heard after setup, before this step: stop before sampling more
                trainer.should_stop = True

    def on_train_batch_end(self, trainer, *args) -> None:
        stop = _FLAG is not None and _FLAG.signum is not None
        due = self.interval_s > 0 and time.monotonic() - self._last >= self.interval_s
        if stop or due:
            save_checkpoint(trainer, self.path)
            self._last = time.monotonic()
        if stop:
            trainer.should_stop = True
