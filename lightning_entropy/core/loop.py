"""The sampler loop: many steps of one sampler with the schedule's factor, shared by the strategies and by users
who drive the core without Lightning. It never synchronises with the host inside the loop; the schedule is
updated (which may read the histogram) once per call.
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_entropy.core.landscape import Landscape
from lightning_entropy.core import round_trips as trips
from lightning_entropy.core import threads as threads_module
from lightning_entropy.core.samplers import wlmc, wlmd


def run(
    state: wlmd.MDState | wlmc.MCState,
    steps: int,
    *,
    evaluate,
    landscape: Landscape,
    bound: torch.Tensor,
    schedule,
    schedule_state: dict[str, torch.Tensor],
    config: wlmd.MDConfig | wlmc.MCConfig,
    observe_every: int = 0,
    round_trips: trips.RoundTripState | None = None,
    threads: int | None = None,
) -> tuple[Any, dict[str, torch.Tensor]]:
    """Run ``steps`` sampler steps; return the new sampler state and schedule state.

    The sampler follows from ``config`` (:class:`~wlmd.MDConfig` or :class:`~wlmc.MCConfig`). Observables are
    recorded every ``observe_every`` steps (0: never). ``round_trips``, if given, is updated in place every step.
    ``threads``: intra-op threads for the loop (None: unchanged; see :func:`lightning_entropy.core.threads.choose`).
    """
    with threads_module.using(threads):
        return _run(state, steps, evaluate=evaluate, landscape=landscape, bound=bound, schedule=schedule,
                    schedule_state=schedule_state, config=config, observe_every=observe_every, round_trips=round_trips)


def _run(state, steps, *, evaluate, landscape, bound, schedule, schedule_state, config, observe_every, round_trips):
    step_fn = wlmd.step if isinstance(config, wlmd.MDConfig) else wlmc.step
    device = state.theta.device
    observing = observe_every > 0 and bool(landscape.observable_names)
    t_device = torch.tensor(state.step, device=device)  # the step on the device, advanced in place
    for _ in range(steps):
        t = state.step + 1
        t_device += 1
        factor = schedule.factor(schedule_state, t_device)
        state = step_fn(state, evaluate=evaluate, landscape=landscape, bound=bound, factor=factor, config=config,
                        observe=observing and t % observe_every == 0)
        if round_trips is not None:
            trips.update(round_trips, state.cv[:, 0])
    schedule_state = schedule.update(schedule_state, landscape, state.step)
    landscape.metadata["steps"] = state.step
    return state, schedule_state
