"""The sampler loop: many steps of any :class:`~lightning_entropy.core.samplers.base.Sampler` with the schedule's
factor, shared by the strategies and by users who drive the core without Lightning. It never synchronises with the
host inside the loop; the schedule is updated (which may read the histogram) once per call.

Usage::

    sampler = wlmd.WLMD(evaluate, landscape, bound, MDConfig())
    state, schedule_state = sampler.init(theta0, seed=0), schedule.init()
    for _ in range(20):
        state, schedule_state = loop.run(sampler, state, 250, schedule=schedule, schedule_state=schedule_state,
                                         observe_every=5)
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_entropy.core import round_trips as trips
from lightning_entropy.core import threads as threads_module


def run(
    sampler,
    state: Any,
    steps: int,
    *,
    schedule=None,
    schedule_state: dict[str, torch.Tensor] | None = None,
    observe_every: int = 0,
    round_trips: trips.RoundTripState | None = None,
    threads: int | threads_module.Trial | None = None,
) -> tuple[Any, dict[str, torch.Tensor] | None]:
    """Run ``steps`` steps of ``sampler`` from ``state``; return the new state and schedule state.

    ``schedule`` gives the factor of each step (its ``factor(schedule_state, t)``; None: no factor, for a sampler
    that deposits nothing) and is updated on ``sampler.landscape`` after the steps. Every ``observe_every`` steps the
    sampler records its observables (0: never). ``round_trips``, if given, is updated in place every step from the
    first CV. ``threads``: intra-op threads for the loop (None: unchanged; see
    :func:`lightning_entropy.core.threads.choose`). The sampler's landscape, if it has one, is updated in place.
    """
    with threads_module.using(threads, steps=steps) as probe:
        return _run(sampler, state, steps, schedule=schedule, schedule_state=schedule_state,
                    observe_every=observe_every, round_trips=round_trips, probe=probe)


def _run(sampler, state, steps, *, schedule, schedule_state, observe_every, round_trips, probe=None):
    factor = None
    if schedule is not None:
        t_device = torch.tensor(state.step, device=state.theta.device)  # the step on the device, advanced in place
    for i in range(steps):
        if probe is not None and i == probe.steps:  # the threads on trial ran their steps: on with the best
            probe.switch()
        t = state.step + 1
        if schedule is not None:
            t_device += 1
            factor = schedule.factor(schedule_state, t_device)
        state = sampler.step(state, factor=factor, observe=observe_every > 0 and t % observe_every == 0)
        if round_trips is not None:
            trips.update(round_trips, state.cv[:, 0])
    if schedule is not None:
        schedule_state = schedule.update(schedule_state, sampler.landscape, state.step)
    return sampler.finish(state, steps), schedule_state
