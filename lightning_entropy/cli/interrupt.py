"""SIGTERM and SIGINT during a job: stop cleanly at a Lightning-step boundary, keep what was sampled, exit non-zero.

:func:`interruptible` installs handlers for the job's duration. Before sampling (building data, the start phase in
the strategy's setup) a signal raises :class:`Interrupted` at once: nothing is lost, nothing was sampled. Once
sampling runs (:class:`Checkpointing` marks it), a signal only sets a flag: the current Lightning step ends, the
callback writes ``checkpoint.ckpt`` and stops the Trainer, the job writes the landscape and summary of what was
sampled, and then raises :class:`Interrupted`; the console script prints how to resume and exits with ``128 +
signal``. A second signal while stopping raises at once (the checkpoint written so far stays).

:class:`Checkpointing` also saves ``checkpoint.ckpt`` every ``minutes`` of sampling (atomically: temp file, then
``os.replace``), so a SIGKILL loses at most that interval.

Processes started by the job (``trainer.devices > 1``: one per rank) sample while the job's process waits for them.
There the job forwards the first signal to its ranks (:meth:`_Flag.delegate`), and a second one kills them and raises.
Each rank handles signals itself from ``on_train_start`` (a signal before sampling begins raises there; later ones set
its flag, and it ignores repeats: the job escalates), and every step the ranks decide together (one all-reduce) whether
any of them was asked to stop or is due to checkpoint, so that they all save the same step and stop at the same step.
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
    """The job's interruption state: whether sampling runs (flag mode) and the signal received, if any.

    Args:
        rank: the flag of a process the job's launcher started (a DDP rank), not of the job's own process.
    """

    def __init__(self, *, rank: bool = False) -> None:
        self.sampling = False
        self.signum: int | None = None
        self.trainer = None
        self.launcher = None
        self.rank = rank
        self.pid = os.getpid()

    def delegate(self, launcher) -> None:
        """The job's process waits while ``launcher``'s processes sample: signals go to them (see the module doc)."""
        self.launcher = launcher

    def handler(self, signum, _frame) -> None:
        first = self.signum is None
        if self.rank:  # a rank: stop with the others at a step boundary; repeats are the job's to escalate
            if first:
                self.signum = signum
                if not self.sampling:
                    raise Interrupted(signum)
            return
        self.signum = signum
        if getattr(self.launcher, "procs", None):  # the ranks sample: forward, then kill on a second signal
            if first:
                self.launcher.kill(signum)
                return
            self.launcher.kill(signal.SIGKILL)
            raise Interrupted(signum)
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


def checkpointed_sampler(path: str | Path, *, since: float) -> tuple[dict, int] | None:
    """The sampler state and Lightning step of ``path`` if it was written at or after ``since`` (``time.time()``):
    what the ranks saved when they were told to stop, in a job whose fit then failed (a rank that dies on its way out
    takes the sampled state it would have sent back with it). ``None`` when there is no such checkpoint."""
    import torch

    path = Path(path)
    if not path.is_file() or path.stat().st_mtime < since:
        return None
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    states = checkpoint.get("optimizer_states") or [{}]
    sampler = states[0].get("sampler") if isinstance(states[0], dict) else None
    if not sampler or "landscape" not in sampler:
        return None
    return sampler, int(checkpoint.get("global_step", 0))


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

    _previous: dict | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        """In a rank the job's launcher started (``_FLAG`` is not this process's): handle SIGTERM/SIGINT here, before
        the strategy's start phase, in place of Lightning's handler (which would call a collective from inside it)."""
        global _FLAG
        if trainer.world_size > 1 and (_FLAG is None or _FLAG.pid != os.getpid()):
            _FLAG, self._previous = _Flag(rank=True), {}
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(ValueError):  # not the main thread
                    self._previous[sig] = signal.signal(sig, _FLAG.handler)

    def teardown(self, trainer, pl_module, stage: str | None = None) -> None:
        global _FLAG
        if self._previous is not None:
            for sig, old in self._previous.items():
                signal.signal(sig, old)
            self._previous, _FLAG = None, None

    def on_train_batch_start(self, trainer, *args) -> None:
        if _FLAG is not None:
            _FLAG.trainer = trainer
            _FLAG.sampling = True
            if _FLAG.signum is not None and trainer.world_size == 1:  # heard after setup, before this step: stop
                trainer.should_stop = True  # before sampling more (ranks decide together at the step's end)

    def on_train_batch_end(self, trainer, *args) -> None:
        stop = _FLAG is not None and _FLAG.signum is not None
        due = self.interval_s > 0 and time.monotonic() - self._last >= self.interval_s
        if trainer.world_size > 1:  # every rank saves the same step (a collective) and stops at the same step
            decide = trainer.strategy.reduce_boolean_decision
            stop, due = decide(stop, all=False), decide(due, all=False)
        if stop or due:
            save_checkpoint(trainer, self.path)
            self._last = time.monotonic()
        if stop:
            trainer.should_stop = True
