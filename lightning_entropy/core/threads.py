"""Intra-op threads for the sampler's chunks: small steps run on one thread.

A sampler step of a small network is hundreds of tiny kernels. With several OpenMP threads each kernel wakes them
all, and on a machine where another process is busy the threads spin and wait for each other: a 128-walker
spiral run made 2.1k walker-steps/s beside one busy process against 24.3k with one thread. Large steps (a CNN over
hundreds of images) do gain from threads. The choice is made once per run from the floating-point work of one
step, counted by ``torch.utils.flop_counter`` on one walker (deterministic, so the same seed still gives the same
landscape), and applied only inside the sampler's chunks: the user's thread setting is restored after each.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

SMALL_STEP_FLOP = 2e8  # below this many FLOP per step (all walkers, forward and backward) one thread is faster


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


def choose(evaluate, theta: torch.Tensor, threads: int | str = "auto") -> int | None:
    """The intra-op thread count for the chunks: ``threads`` if an int, else 1 for steps below
    :data:`SMALL_STEP_FLOP` on a CPU (None: leave torch's setting, e.g. on a GPU or for large steps)."""
    if threads != "auto":
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads={threads!r}: give a positive number of threads or 'auto'.")
        return threads
    if theta.device.type != "cpu":
        return None
    return 1 if step_flop(evaluate, theta) < SMALL_STEP_FLOP else None


@contextlib.contextmanager
def using(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (None: unchanged), restoring the previous setting."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
