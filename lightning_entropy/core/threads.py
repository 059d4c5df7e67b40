"""Intra-op threads for the sampler's chunks: the faster of one thread and torch's setting, timed while the run
goes.

A sampler step of a small network is hundreds of tiny kernels. With several OpenMP threads each kernel wakes them
all, and on a machine where another process is busy the threads spin and wait for each other: a 128-walker
spiral run made 2.1k walker-steps/s beside one busy process against 24.3k with one thread. On a quiet machine the
same threads are a gain, for small steps too: the windowed spiral walk at 256 walkers took 3.7 ms per step on two
threads against 4.3-4.6 ms on one (12.7 against 17 ms at 1,024 walkers; an Intel Xeon, 2 cores, 2026-12-07). Large
steps (a CNN over hundreds of images) gain on a quiet machine and lose beside a busy process (MNIST CNN, 32
walkers: two threads 64.5 walker-steps/s quiet, 17.9 beside a busy process; one thread 36.5 and 32.7). So no fixed
choice is right: :class:`Trial` times the sampler's chunks under both and keeps the faster, trying the other again
after :data:`RETRY_EVERY` chunks, since the load of a machine changes (a baseline process that ends frees a core).
A retry that confirms the choice doubles the wait before the next one (up to :data:`RETRY_MAX` chunks), so a
machine that stays busy pays for a collapsed chunk rarely. Threads are applied only inside the sampler's work:
the user's setting is restored after each chunk. On the CPUs measured the walkers' trajectories do not depend on
the thread count (the spiral walk: bit for bit equal over 600 steps with one and two threads).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator

import torch

RETRY_EVERY = 16  # chunks on the faster choice before the other is tried again (after a change of choice)
RETRY_MAX = 256  # the longest wait: each retry that confirms the choice doubles it up to this
PROBE_STEPS = 10  # a chunk that tries another count runs this many steps on it, the rest on the best known


class Trial:
    """The faster of ``choices`` (intra-op thread counts) for equal pieces of work, from their measured seconds per
    step: each is tried once, then the faster is kept and another is retried after :data:`RETRY_EVERY` pieces, the
    wait doubling (up to :data:`RETRY_MAX`) each time a retry confirms the choice and starting again when it changes.

    ``current()`` is the count for the next piece; ``record(threads, seconds, steps)`` adds a measurement (on the
    held choice the latest counts half, so a change of load shows within a few pieces; a retried choice takes its
    new measurement whole, since its old one may come from another load). Work that is not a chunk of sampler
    steps (the start phase and its timing) runs on :meth:`best` and records nothing. A performance choice only: not part
    of a run's state (a resumed run times again).
    """

    def __init__(self, choices: tuple[int, ...]) -> None:
        if len(choices) < 2 or any(not isinstance(c, int) or c < 1 for c in choices):
            raise ValueError(f"choices={choices!r}: give at least two positive thread counts.")
        self.choices = tuple(choices)
        self.seconds: dict[int, float | None] = dict.fromkeys(self.choices)  # per step, smoothed
        self.pieces = 0
        self.wait = RETRY_EVERY  # pieces on the best before the next retry
        self.next_retry = 0  # the piece that retries (set once every choice has a measurement)
        self.retries = 0

    def trying(self, count: int) -> bool:
        """Whether a piece on ``count`` tries it (untried, or a retry) rather than holding the best measured."""
        measured = {c: s for c, s in self.seconds.items() if s is not None}
        return not measured or count != min(measured, key=measured.get)

    def best(self) -> int:
        """The fastest count measured so far (before any measurement the smallest, which a busy machine cannot
        slow down many times: the start phase runs on it)."""
        measured = {c: s for c, s in self.seconds.items() if s is not None}
        return min(measured, key=measured.get) if measured else min(self.choices)

    def current(self) -> int:
        """The count for the next piece: an untried one first, then the best, another when a retry is due."""
        for choice in self.choices:
            if self.seconds[choice] is None:
                return choice
        best = self.best()
        if self.pieces >= self.next_retry:
            others = [c for c in self.choices if c != best]
            return others[self.retries % len(others)]
        return best

    def record(self, threads: int, seconds: float, steps: int) -> None:
        untried = any(s is None for s in self.seconds.values())
        retry = not untried and self.pieces >= self.next_retry and threads != self.best()
        held = self.best()
        self.pieces += 1
        if threads not in self.seconds or steps <= 0 or not math.isfinite(seconds):
            return
        per_step = seconds / steps
        previous = self.seconds[threads]
        self.seconds[threads] = per_step if previous is None or retry else 0.5 * (previous + per_step)
        changed = not untried and self.best() != held
        if retry:
            self.retries += 1
        if changed:  # a new choice (by a retry, or the held one slowed down): the old one is retried soon
            self.wait = RETRY_EVERY
        elif retry:  # the retry confirmed the choice: wait twice as long before the next
            self.wait = min(2 * self.wait, RETRY_MAX)
        if retry or changed or (untried and all(s is not None for s in self.seconds.values())):
            self.next_retry = self.pieces + self.wait - 1

    def __repr__(self) -> str:
        rates = ", ".join(f"{c}: {'untried' if s is None else f'{s:.3g} s/step'}" for c, s in self.seconds.items())
        return f"Trial({rates}; best {self.best()}; next retry after piece {self.next_retry})"


def choose(theta: torch.Tensor, threads: int | str = "auto") -> int | Trial | None:
    """The intra-op threads for the chunks of walkers ``theta``: ``threads`` if an int; for ``"auto"`` on a CPU a
    :class:`Trial` of one thread against torch's setting (None: leave torch's setting: on a GPU, or where torch
    has one thread anyway)."""
    if threads != "auto":
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads={threads!r}: give a positive number of threads or 'auto'.")
        return threads
    if theta.device.type != "cpu":
        return None
    many = torch.get_num_threads()
    return Trial((1, many)) if many > 1 else None


class Probe:
    """The first :data:`PROBE_STEPS` steps of a chunk on a count the trial is trying (an untried one, or a retry),
    the rest on the best known: a choice that collapses (threads beside a busy process, about 10x slower) then costs
    a few steps, not a whole chunk. The loop calls :meth:`switch` before step ``steps`` of its chunk."""

    def __init__(self, trial: Trial, count: int, start: float) -> None:
        self.trial, self.count, self.start = trial, count, start
        self.steps = PROBE_STEPS
        self.switched = False

    def switch(self) -> None:
        """Record the probe's time and go on with the trial's best count."""
        now = time.perf_counter()
        self.trial.record(self.count, now - self.start, self.steps)
        self.count, self.start, self.switched = self.trial.best(), now, True
        torch.set_num_threads(self.count)


@contextlib.contextmanager
def using(threads: int | Trial | None, *, steps: int = 0) -> Iterator[Probe | None]:
    """Run the block with ``threads`` intra-op threads (None: unchanged), restoring the previous setting. With a
    :class:`Trial` and ``steps`` > 0 the block is a chunk of that many sampler steps: it runs on the trial's current
    choice and its time is recorded; otherwise it runs on the trial's best. A chunk of at least ``2 *
    PROBE_STEPS`` steps that tries a count other than the best known yields a :class:`Probe` (the loop calls its
    ``switch`` before step ``probe.steps``); otherwise it yields None."""
    if threads is None:
        yield None
        return
    timed = isinstance(threads, Trial) and steps > 0
    count = (threads.current() if timed else threads.best()) if isinstance(threads, Trial) else threads
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    start = time.perf_counter()
    probe = None
    if timed and steps >= 2 * PROBE_STEPS and threads.trying(count):
        probe = Probe(threads, count, start)
    try:
        yield probe
    finally:
        torch.set_num_threads(previous)
    if timed:  # only chunks that finished: an error leaves the trial as it was
        if probe is not None and probe.switched:
            threads.record(probe.count, time.perf_counter() - probe.start, steps - probe.steps)
        else:
            threads.record(count, time.perf_counter() - start, steps)
