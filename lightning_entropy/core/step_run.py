"""The per-step run: one landscape filled by every walker with the schedule's factor per sampler step (the reference
study's Wang-Landau, ``fill="step"``, and WLMC). The Lightning-free counterpart of :class:`~lightning_entropy.core.
run.Run` (windows and replicas, ``fill="visit"``), with the same shape: ``chunk(steps)``, ``snapshot()``,
``state_dict()`` / ``load_state_dict()``.

It owns the sampler's state, the schedule's state and the walkers' round trips; the landscape is the sampler's (an
in-place accumulator). Usage::

    sampler = wlmd.WLMD(evaluate, landscape, bound, MDConfig())
    run = StepRun(sampler, theta0, schedule=FlatnessOneOverT(f0=0.1), seed=1, x_range=(-6.0, 0.0))
    for _ in range(100):
        run.chunk(100)
    run.snapshot()
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_entropy.core import loop
from lightning_entropy.core import round_trips as trips


class StepRun:
    """Walkers of ``sampler`` depositing into its landscape with ``schedule``'s factor per step.

    Args:
        sampler: a depositing sampler (:class:`~lightning_entropy.core.samplers.wlmd.WLMD` or ``WLMC``).
        theta0: ``(W, P)`` starting walkers, inside the grid.
        schedule: the WL factor schedule (nats per sampler step shared by the walkers); its ``update`` runs after
            every chunk on the landscape.
        seed: seeds the sampler's velocities and moves.
        x_range: ``(lo, hi)`` in ln L_train across which round trips are counted.
        observe_every: record observables every this many steps (0: never).
        threads: intra-op threads inside chunks: an int, a :class:`~lightning_entropy.core.threads.Trial` (timed
            choice) or None (torch's setting).
    """

    def __init__(self, sampler, theta0: torch.Tensor, *, schedule, seed: int, x_range: tuple[float, float],
                 observe_every: int = 10, threads: int | None = None) -> None:
        device = theta0.device
        self.sampler, self.schedule = sampler, schedule
        self.observe_every, self.threads = int(observe_every), threads
        self.schedule_state = schedule.init(device)
        self.state = sampler.init(theta0, seed=seed)
        self.round_trips = trips.init(len(theta0), x_range, device=device)

    @property
    def landscape(self):
        return self.sampler.landscape

    def chunk(self, steps: int) -> None:
        """Advance every walker ``steps`` steps, then update the schedule (which may read the histogram)."""
        self.state, self.schedule_state = loop.run(
            self.sampler, self.state, steps, schedule=self.schedule, schedule_state=self.schedule_state,
            observe_every=self.observe_every, round_trips=self.round_trips, threads=self.threads,
        )

    def factor(self, schedule=None) -> torch.Tensor:
        """The factor of the current step (of ``schedule``, default the run's)."""
        schedule = schedule or self.schedule
        return schedule.factor(self.schedule_state, torch.tensor(self.state.step, device=self.state.theta.device))

    def round_trip_counts(self) -> tuple[float, float]:
        """Round trips of all walkers, and how many walkers made at least one."""
        done = self.round_trips.round_trips
        return float(done.sum()), float((done > 0).sum())

    def snapshot(self, counts: tuple[float, float] | None = None) -> dict[str, float]:
        """A convergence snapshot of the landscape (``counts``: round trips and walkers with one; default this
        run's)."""
        total, walkers = counts if counts is not None else self.round_trip_counts()
        return self.landscape.snapshot(self.state.step, round_trips=total, walkers_with_round_trip=walkers)

    def state_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.state_dict(),
            "landscape": self.landscape.state_dict(),
            "schedule": {k: v.clone() for k, v in self.schedule_state.items()},
            "round_trips": self.round_trips.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        """Restore :meth:`state_dict` (a checkpoint without round trips keeps the fresh ones)."""
        self.state = self.sampler.state_type.from_state_dict(state["state"], device)
        self.landscape.load_state_dict(state["landscape"])
        self.schedule_state = {k: v.to(device) for k, v in state["schedule"].items()}
        if "round_trips" in state:
            self.round_trips = trips.RoundTripState.from_state_dict(state["round_trips"], device)


__all__ = ["StepRun"]
