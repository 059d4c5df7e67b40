"""Intra-op threads for the sampler's chunks: small steps run on one thread, large steps on the faster of one
thread and torch's setting, timed while the run goes.

A sampler step of a small network is hundreds of tiny kernels. With several OpenMP threads each kernel wakes them
all, and on a machine where another process is busy the threads spin and wait for each other: a 128-walker
spiral run made 2.1k walker-steps/s beside one busy process against 24.3k with one thread. Small steps (below
:data:`SMALL_STEP_FLOP`, counted by ``torch.utils.flop_counter`` on one walker, so deterministic) therefore always
run on one thread. Large steps (a CNN over hundreds of images) gain from threads on a quiet machine and lose beside a
busy process (MNIST CNN, 32 walkers: two threads 64.5 walker-steps/s quiet, 17.9 beside a busy process; one thread
36.5 and 32.7), so no fixed choice is right: :class:`Trial` times the sampler's chunks under both and keeps the
faster, trying the other again every :data:`RETRY_EVERY` chunks, since the load of a machine changes. Threads are
applied only inside the sampler's work: the user's setting is restored after each chunk.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator

import torch

SMALL_STEP_FLOP = 2e8  # below this many FLOP per step (all walkers, forward and backward) one thread is faster
RETRY_EVERY = 16  # a timed trial runs one chunk in 16 on the choice it does not hold, to notice a change of load


def step_flop(evaluate, theta: torch.Tensor) -> float:
    """FLOP of one evaluation (forward and backward) of all walkers, from counting one walker; ``inf`` if the
    counter cannot run on this evaluator."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        def unit(cv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return cv.sum(-1), torch.ones_like(cv)

        with FlopCounterMode(display=False) as counter:
            evaluate.value_and_grad(theta[:1].detach(), unit)
        flop = float(counter.get_total_flops())
    except Exception:  # an exotic module the counter cannot trace: leave threads as they are
        return float("inf")
    return flop * theta.shape[0] if flop > 0 else float("inf")


class Trial:
    """The faster of ``choices`` (intra-op thread counts) for equal pieces of work, from their measured seconds per
    step: each is tried once, then the faster is kept and the other retried every :data:`RETRY_EVERY` pieces.

    ``current()`` is the count for the next piece; ``record(threads, seconds, steps)`` adds a measurement (the
    latest counts half, so a change of load shows within a few pieces). Work that is not a chunk of sampler steps
    (the start phase, probes) runs on :meth:`best` and records nothing. A performance choice only: not part of a
    run's state (a resumed run times again).
    """

    def __init__(self, choices: tuple[int, ...]) -> None:
        if len(choices) < 2 or any(not isinstance(c, int) or c < 1 for c in choices):
            raise ValueError(f"choices={choices!r}: give at least two positive thread counts.")
        self.choices = tuple(choices)
        self.seconds: dict[int, float | None] = dict.fromkeys(self.choices)  # per step, smoothed
        self.pieces = 0

    def best(self) -> int:
        """The fastest count measured so far (the largest before any measurement)."""
        measured = {c: s for c, s in self.seconds.items() if s is not None}
        return min(measured, key=measured.get) if measured else max(self.choices)

    def current(self) -> int:
        """The count for the next piece: an untried one first, then the best, the others every RETRY_EVERY pieces."""
        for choice in self.choices:
            if self.seconds[choice] is None:
                return choice
        best = self.best()
        if self.pieces % RETRY_EVERY == RETRY_EVERY - 1:
            others = [c for c in self.choices if c != best]
            return others[(self.pieces // RETRY_EVERY) % len(others)]
        return best

    def record(self, threads: int, seconds: float, steps: int) -> None:
        self.pieces += 1
        if threads not in self.seconds or steps <= 0 or not math.isfinite(seconds):
            return
        per_step = seconds / steps
        previous = self.seconds[threads]
        self.seconds[threads] = per_step if previous is None else 0.5 * (previous + per_step)

    def __repr__(self) -> str:
        rates = ", ".join(f"{c}: {'untried' if s is None else f'{s:.3g} s/step'}" for c, s in self.seconds.items())
        return f"Trial({rates}; best {self.best()})"


def choose(evaluate, theta: torch.Tensor, threads: int | str = "auto") -> int | Trial | None:
    """The intra-op threads for the chunks: ``threads`` if an int; for ``"auto"`` on a CPU, 1 for steps below
    :data:`SMALL_STEP_FLOP`, else a :class:`Trial` of one thread against torch's setting (None: leave torch's
    setting: on a GPU, or where torch has one thread anyway)."""
    if threads != "auto":
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads={threads!r}: give a positive number of threads or 'auto'.")
        return threads
    if theta.device.type != "cpu":
        return None
    if step_flop(evaluate, theta) < SMALL_STEP_FLOP:
        return 1
    many = torch.get_num_threads()
    return Trial((1, many)) if many > 1 else None


@contextlib.contextmanager
def using(threads: int | Trial | None, *, steps: int = 0) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (None: unchanged), restoring the previous setting. With a
    :class:`Trial` and ``steps`` > 0 the block is a chunk of that many sampler steps: it runs on the trial's current
    choice and its time is recorded; otherwise it runs on the trial's best."""
    if threads is None:
        yield
        return
    timed = isinstance(threads, Trial) and steps > 0
    count = (threads.current() if timed else threads.best()) if isinstance(threads, Trial) else threads
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    start = time.perf_counter()
    try:
        yield
    finally:
        torch.set_num_threads(previous)
    if timed:  # only chunks that finished: an error leaves the trial as it was
        threads.record(count, time.perf_counter() - start, steps)
