"""The run: one Lightning-free object that owns the walkers, the windows and replicas, the landscape, the round
trips and the snapshots, advances in chunks and checkpoints as one ``state_dict``.

A run has two phases:

1. *Wang-Landau*: every walker deposits its estimate's ``ln f`` per visit (:class:`~lightning_entropy.core.windows.
   Windows`); ``ln f`` halves on flat stage histograms and then follows 1/t; neighbouring windows exchange walkers.
2. *Production* (after :meth:`Run.freeze`): the biases are fixed and every visit is counted; S per replica is the
   reweighted production histograms of its windows (``ln sum exp(u)`` per bin) joined on the overlaps
   (:mod:`lightning_entropy.core.combine`). Production is cut into blocks (one per :meth:`chunk`); the blocks'
   estimates, with replicas as chains, give the R-hat of S per bin; a 2-D walk also keeps each replica's
   production mass per block, from which the readouts (max-S line, Eq. (1)) get their R-hat. The per-bin
   observables (the label-free readout of a 1-D walk) are recorded anew from production's first observation, so
   that every readout comes from the frozen bias's equilibrium and none from the Wang-Landau phase.

The landscape (``run.landscape``) receives the published S (the mean of the replicas; ``landscape.known`` marks the
bins that have one), the replicas' grids (``landscape.replica_entropy``, whose spread is the error of S and of every
readout), the visit histogram and the per-bin observables; :meth:`snapshot` publishes and appends a convergence
entry.

Usage::

    run = Run(evaluate, landscape, bound, theta0, windows=Windows(landscape, 64, replicas=4, windows=4),
              config=MDConfig(), seed=0)
    for _ in range(100):
        run.chunk(100)
    run.freeze()
    for _ in range(50):
        run.chunk(100)
    run.snapshot()
    landscape = run.landscape
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from lightning_entropy.core import combine
from lightning_entropy.core import threads as threads_module
from lightning_entropy.core import round_trips as trips
from lightning_entropy.core import label_free, step_size
from lightning_entropy.core.forces import JacobianForces
from lightning_entropy.core.landscape import Landscape
from lightning_entropy.core.placement import crossing_bounds, crossing_cost
from lightning_entropy.core.samplers import wlmd
from lightning_entropy.core.windows import REFINE_MIN_TILT, Windows


REFINE_ROUNDS = 4  # rounds of :meth:`Run.freeze`'s refinement of the frozen biases
R_HAT = 1.05  # the lenient rule of Vehtari et al. (2021); a snapshot records the share of bins at or above it


class Run:
    """Walkers sampling ``landscape``'s grid with windows and replicas (WLMD).

    Args:
        evaluate: the CV evaluator (``lightning_entropy.core.evaluator.Evaluator`` or the same interface).
        landscape: the public landscape (geometry, observables, histogram); its bias receives the published S.
        bound: ``(P,)`` box half-widths.
        theta0: ``(W, P)`` starting walkers, inside the grid.
        windows: the windows and replicas; its walker count must be ``W``.
        config: the MD integrator constants.
        seed: seeds velocities, moves and exchanges.
        observe_every: record observables every this many steps (0: never).
        end_fraction: round trips count a walker reaching the lowest and highest this fraction of its window.
        threads: intra-op threads inside chunks: an int, None (torch's setting), a
            :class:`~lightning_entropy.core.threads.Trial` or ``"auto"`` (a timed trial of one thread against torch's
            setting, see :mod:`lightning_entropy.core.threads`).
        dt_spread: each step, each walker's time step is its window's ``dt`` times ``spread**-u``, ``u`` uniform
            in [0, 1) (1: no spread). A step size drawn independently of the state keeps the chain exact (Neal
            2011, section 5.4.2.2); the window's ``dt`` suits its average walker, and a walker deep in a narrow
            valley, where every full step is rejected, still moves on the short ones instead of depositing on one
            bin for hundreds of steps. Measured on the 24-parameter quadratic (10,000 steps, 10 seeds): 0.13-0.35
            nats RMS with spread 4, against 0.12-1.9 without.
    """

    def __init__(self, evaluate, landscape: Landscape, bound: torch.Tensor, theta0: torch.Tensor, *,
                 windows: Windows, config: wlmd.MDConfig, seed: int, observe_every: int = 10,
                 end_fraction: float = 0.1, threads: int | str | None = "auto", dt_spread: float = 4.0) -> None:
        if windows.walkers != theta0.shape[0]:
            raise ValueError(f"windows were laid out for {windows.walkers} walkers, but theta0 has {theta0.shape[0]}.")
        self.evaluate, self.landscape, self.bound = evaluate, landscape, bound
        self.windows, self.config = windows, config
        self.observe_every = int(observe_every)
        if not (math.isfinite(dt_spread) and dt_spread >= 1):
            raise ValueError(f"dt_spread={dt_spread!r}: the ratio of the longest to the shortest time step, >= 1"
                             " (1: every step the full dt).")
        self.dt_spread = float(dt_spread)
        self.end_fraction = float(end_fraction)
        device = theta0.device
        with torch.no_grad():
            x0 = evaluate(theta0).values[:, 0]
        windows.assign(torch.nan_to_num(x0, nan=float("inf")))
        if windows.pull is None:
            windows.pull = float(theta0.shape[1])
        self._regroup()
        self.threads = threads_module.choose(theta0, threads) if threads == "auto" else threads
        # 1-D walks keep d x / d theta per walker, so that a walker's force follows its window after an exchange at
        # no extra evaluation; walks in more CVs re-evaluate the forces on exchange steps instead
        self._forces = JacobianForces(evaluate) if landscape.ndim == 1 else evaluate
        self.state = wlmd.start(theta0, self._forces, windows.potential, seed=seed)
        self.jacobian = self._forces.last if landscape.ndim == 1 else None
        # production of a 1-D walk: the frozen potential at each walker's position, kept from the step that put it
        # there (the Metropolis test, the production count and the picture read it; see _chunk); None otherwise
        self._value: torch.Tensor | None = None
        self._ends: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # see _window_ends
        lo, hi = float(landscape.lo[0]), float(landscape.hi[0])
        self.trips = trips.init(windows.walkers, (lo, hi), end_fraction=end_fraction, device=device)
        self.window_trips = trips.init(windows.walkers, (lo, hi), end_fraction=end_fraction, device=device)
        self.blocks: list[np.ndarray] = []  # per production chunk: (E, nx) reweighted x-marginal mass
        self._last_production = torch.zeros_like(windows.production)
        self.observable_blocks: list[np.ndarray] = []  # per production chunk: (2, R, nx), see _observed
        self.grid_blocks: list[np.ndarray] = []  # 2-D walks, per production chunk: (R, nx, ny) reweighted mass
        observed = self._observed()
        self._last_observed = None if observed is None else torch.zeros_like(observed)
        self.production_start: int | None = None
        self.refining: list[int] = []  # after freeze(refine=...): the lengths (steps) of the rounds still to run
        self._refined_steps = 0  # steps run in the current round
        self._frozen_at = 0  # the step at which freeze() fixed the biases
        self.refinements: list[list[float]] = []  # per round: each estimate's fitted tilt (nats)
        self._picture = None  # (R, nx, ny) reweighted production counts of (x, first observable), 1-D runs only
        self.picture_range = label_free.ACCURACY_RANGE  # the picture's metric axis: first and last bin centres
        names = landscape.observable_names
        found = label_free.axis(names[0]) if landscape.ndim == 1 and names else None
        if found is not None:
            self.picture_range, bins = found
            self._picture = torch.zeros((windows.replicas, landscape.shape[0], bins), dtype=torch.float64,
                                        device=device)
        e = windows.replicas * windows.windows
        self.dt = torch.full((e,), float(config.dt), dtype=theta0.dtype, device=device)  # per window, adapted
        # production: per estimate, the summed squared x displacement of its walkers over each chunk, and the
        # walker-steps and walker-chunks they took (the walkers' diffusion in x: how often production crossed each
        # window)
        self.displacement = torch.zeros((3, e), dtype=torch.float64, device=device)
        # per x bin where a chunk started: the walkers' summed x displacement over the chunk, its square, the
        # walker-steps and walker-chunks (their diffusion along x, from which :meth:`place` lays out the windows)
        self.mobility = torch.zeros((4, landscape.shape[0]), dtype=torch.float64, device=device)

    def _regroup(self) -> None:
        """The landscape's walker groups are the replicas (their spread is the error of the readouts)."""
        if self.landscape.groups == self.windows.replicas:
            self.landscape.assign_groups(self.windows.replica_of)

    # -- the hot path ----------------------------------------------------------------------------------------------

    def chunk(self, steps: int) -> dict[str, float]:
        """Advance every walker ``steps`` steps; then update the schedule (and, in production, close a block).
        Returns figures of the chunk (acceptance, largest ``ln f``, exchange acceptance, x range)."""
        with threads_module.using(self.threads, steps=steps) as probe:
            return self._chunk(steps, probe)

    def _chunk(self, steps: int, probe: threads_module.Probe | None = None) -> dict[str, float]:
        w = windows = self.windows
        landscape = self.landscape
        observing = self.observe_every > 0 and bool(landscape.observable_names)
        accepted0 = self.state.accepted.clone()
        tried0, taken0 = windows.exchange_tried.clone(), windows.exchange_accepted.clone()
        everyone = torch.ones(w.walkers, dtype=torch.bool, device=self.state.theta.device)
        x0, owner0 = self.state.cv[:, 0].to(torch.float64), w.owner.clone()
        # with the bias frozen the potential changes only when walkers change windows, which re-evaluates it
        # (_refresh_forces): each walker's value is then known from the step that put it where it is
        reuse = w.is_frozen and self.jacobian is not None and self.config.metropolis
        for i in range(steps):
            if probe is not None and i == probe.steps:  # the threads on trial ran their steps: on with the best
                probe.switch()
            previous = self.state.cv
            dt = self.dt[w.owner]
            if self.dt_spread > 1:  # a fresh step size per step and walker, independent of its state: exact
                u = torch.rand(dt.shape, generator=self.state.generator, device=dt.device, dtype=dt.dtype)
                dt = dt * torch.exp(-math.log(self.dt_spread) * u)
            if reuse and self._value is None:
                self._value = w.potential(self.state.cv)[0]
            new = wlmd.move(self.state, evaluate=self._forces, potential=w.potential,
                            admissible=lambda cv, previous=previous: w.admissible(cv, previous), bound=self.bound,
                            config=self.config, dt=dt.unsqueeze(1), value0=self._value if reuse else None)
            value = None
            if self.jacobian is not None:  # the moved walkers' d x / d theta; the others keep theirs
                moved = new.accepted != self.state.accepted
                self.jacobian = torch.where(moved.unsqueeze(1), self._forces.last, self.jacobian)
                if reuse:
                    value = self._value = torch.where(moved, self._forces.value, self._value)
            counted = w.deposit(new.cv, everyone, value)
            landscape.count(w.last_bins, counted)  # the walkers that counted are inside their windows' bins
            landscape.add_walker_steps(w.walkers)
            if observing and new.step % self.observe_every == 0:
                observed = self.evaluate.observe(new.theta)
                if self.production_start is not None and "observables_from_step" not in landscape.metadata:
                    self._restart_observables()
                landscape.record(new.cv, observed, counted.bool())
                if self._picture is not None and w.is_frozen and not self.refining:
                    self._record_picture(new.cv, observed[:, 0], counted, value)
            x = new.cv[:, 0].to(torch.float64)
            trips.update(self.trips, x)
            trips.update(self.window_trips, x, *self._window_ends())
            if w.exchange_every and w.windows > 1 and new.step % w.exchange_every == 0:
                w.exchange(new.cv, new.generator)
                new = self._refresh_forces(new)
            self.state = new
        windows.update_schedule()
        if not windows.is_frozen:
            self._adapt_dt((self.state.accepted - accepted0) / max(steps, 1), windows.inside(self.state.cv))
        landscape.metadata["steps"] = self.state.step
        shift = self.state.cv[:, 0].to(torch.float64) - x0
        counted = torch.isfinite(shift) & torch.isfinite(x0)
        shift = torch.where(counted, shift, torch.zeros_like(shift))
        start = ((x0 - float(landscape.lo[0])) / float(landscape.width[0])).nan_to_num(0.0).floor()
        start = start.clamp(0, landscape.shape[0] - 1).long()
        self.mobility.index_add_(1, start, torch.stack([shift, shift**2, counted.to(torch.float64) * float(steps),
                                                        counted.to(torch.float64)]))
        moved = shift**2
        if self.refining:
            self._refine_after(steps)
        elif windows.is_frozen:
            self._close_block()
            self.displacement[0].index_add_(0, owner0, torch.nan_to_num(moved, nan=0.0, posinf=0.0))
            self.displacement[1].index_add_(0, owner0, torch.full_like(moved, float(steps)))
            self.displacement[2].index_add_(0, owner0, torch.ones_like(moved))
        tried = float((windows.exchange_tried - tried0).sum())
        x = self.state.cv[:, 0]
        return {
            "acceptance": float((self.state.accepted - accepted0).sum()) / max(steps * w.walkers, 1),
            "log_f": float(windows.current_log_f().max()),
            "exchange_acceptance": float((windows.exchange_accepted - taken0).sum()) / tried if tried else float("nan"),
            "x_min": float(x.min()), "x_max": float(x.max()),
        }

    def _window_ends(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W,)`` each walker's round-trip ends in its window (``end_fraction`` of the window in from its edges),
        gathered again only after walkers change windows (each reassignment makes a new ``windows.offset``)."""
        w = self.windows
        if self._ends is None or self._ends[0] is not w.offset:
            span, owner = w.x_hi - w.x_lo, w.owner
            self._ends = (w.offset, w.x_lo[owner] + self.end_fraction * span[owner],
                          w.x_hi[owner] - self.end_fraction * span[owner])
        return self._ends[1], self._ends[2]

    def _refresh_forces(self, state: wlmd.MDState) -> wlmd.MDState:
        """The state with every walker's force taken from the window it holds now (after an exchange). A swapped
        walker's next leapfrog step then uses one potential for both half kicks, as the Metropolis test assumes
        (a step that mixed the old window's force with the new window's test would not be reversible). 1-D walks:
        slope times the kept d x / d theta; otherwise one more evaluation."""
        if self.jacobian is not None:
            value, slope = self.windows.potential(state.cv)
            self._value = value if self.windows.is_frozen else None
            grad = slope[:, :1].to(self.jacobian.dtype) * self.jacobian
        else:
            _, _, grad = self.evaluate.value_and_grad(state.theta, self.windows.potential)
        return dataclasses.replace(state, bias_grad=grad)

    def _record_picture(self, cv: torch.Tensor, y: torch.Tensor, counted: torch.Tensor,
                        value: torch.Tensor | None = None) -> None:
        label_free.record(self._picture, self.windows, self.landscape, cv, y, counted, value, self.picture_range)

    def picture(self) -> Landscape | None:
        """The label-free 2-D picture of a 1-D walk with an accuracy or loss observable (:func:`~lightning_entropy.
        core.label_free.picture`); None for 2-D walks, without such an observable, or before production."""
        if self._picture is None or float(self._picture.sum()) == 0:
            return None
        return label_free.picture(self._picture.cpu().numpy(), self.landscape, self.windows.replicas,
                                  self.replica_entropy().reshape(self.windows.replicas, -1), self.picture_range)

    def _adapt_dt(self, acceptance: torch.Tensor, inside: torch.Tensor) -> None:
        """Adapt each window's time step to the last chunk's acceptance (:func:`~lightning_entropy.core.step_size.
        adapt`); Wang-Landau phase only: production keeps the time step fixed."""
        self.dt = step_size.adapt(self.dt, acceptance, inside, self.windows.owner, float(self.config.dt))

    def freeze(self, refine: int = 0, rounds: int = REFINE_ROUNDS) -> None:
        """Fix the biases; with ``refine`` steps, first correct them in ``rounds`` rounds of about ``refine / rounds``
        steps each (:meth:`~lightning_entropy.core.windows.Windows.refine`: each round's production histogram
        flattens the next round's), then start production: later visits fill the production histograms.

        Rounds end at the first chunk boundary after their length; nothing of a round enters the reported S, its
        blocks or its R-hat; a round after which no window was tilted ends the refinement. Measured on the spiral's
        1-D walk in ln L_train from -3.5 (256 walkers, 12,000 steps, the first third of the 7,200 production steps
        refining, seeds 1-3): the four lowest windows' production crossings went from 1.24 to 2.01 per walker on
        average; at 48,000 steps the Wang-Landau phase leaves little tilt and refining gains nothing
        (docs/PERFORMANCE.md, "The frozen bias's tilt")."""
        if self.windows.is_frozen:
            return
        self.windows.freeze()
        per_round = int(math.ceil(refine / rounds)) if refine > 0 and rounds > 0 else 0
        self.refining = [per_round] * rounds if per_round else []
        self._refined_steps = 0
        self._frozen_at = self.state.step
        if not self.refining:
            self._start_production()

    def _start_production(self) -> None:
        self.production_start = self.state.step
        if self.refinements:  # what the rounds found: the largest tilt (nats) of any window, per round
            self.landscape.metadata["refinement"] = {
                "rounds": len(self.refinements), "largest_tilt": [round(max(t), 3) for t in self.refinements],
                "steps": self.production_start - self._frozen_at}
        self._last_production.copy_(self.windows.reweighted)
        if self._last_observed is not None:
            self._last_observed.copy_(self._observed())

    def _restart_observables(self) -> None:
        """At production's first observation: forget the per-bin observables of the Wang-Landau phase, whose walkers
        still carry the memory of their starts, so that the readouts count production only, like S. Until then (a
        run that ends as production starts) they stay, as S then stays the windows' biases."""
        self.landscape.clear_observables()
        self.landscape.metadata["observables_from_step"] = self.state.step
        if self._last_observed is not None:
            self._last_observed.zero_()

    def _refine_after(self, steps: int) -> None:
        """Count a refinement chunk; at the end of a round correct the biases (and the forces that follow them)."""
        self._refined_steps += steps
        if self._refined_steps < self.refining[0]:
            return
        tilt = self.windows.refine()
        self.refinements.append(tilt.tolist())
        self.refining.pop(0)
        self._refined_steps = 0
        self.state = self._refresh_forces(self.state)
        if tilt.max() < REFINE_MIN_TILT:  # every bias was already flat enough: production starts now
            self.refining = []
        if not self.refining:
            self._start_production()

    def place(self) -> list[tuple[int, int]]:
        """Move the windows so that every window takes its walkers about the same time to cross, during the
        Wang-Landau phase; returns the new bounds (x bins).

        The crossing time of each x bin comes from the walkers' measured diffusion along x so far
        (:func:`~lightning_entropy.core.placement.crossing_cost`; where the entropy is steep walkers move slowly
        and the windows there get narrow). Each new window's bias starts from its own replica's S so far
        (:meth:`replica_shapes`); each window's walkers become copies of the walkers of its replica that lie nearest
        its middle (:meth:`~lightning_entropy.core.windows.Windows.nearest_walkers`); each window's time step comes
        from its replica's old window nearest to it; the pull into the windows rises to the largest of itself, twice
        the steepest rise of S (95th percentile over bins, nats per CV unit) and twice the parameter count, so that
        a walker can descend into a window below it; the round-trip counters start anew (the walkers are copies).
        Without two measured bins nothing moves."""
        w, g = self.windows, self.landscape
        current = [(int(a), int(b)) for a, b in zip(w.bin_lo[: w.windows, 0], w.bin_hi[: w.windows, 0])]
        if w.windows < 2 or w.is_frozen:
            return current
        width = float(g.width[0])
        cost = crossing_cost(*self.mobility.cpu().numpy(), width=width)
        if cost is None:
            return current
        shapes, rise = self.replica_shapes()
        bounds = crossing_bounds(cost, w.windows, w.overlap)
        steep = float(np.quantile(np.abs(rise), 0.95)) / width if np.isfinite(rise).any() else 0.0
        old = ((w.x_lo + w.x_hi) / 2).reshape(w.replicas, w.windows)
        old_dt = self.dt.reshape(w.replicas, w.windows)
        source = w.nearest_walkers(self.state.cv[:, 0], bounds)
        self._copy_walkers(source)
        w.relayout(bounds, shapes, pull=max(float(w.pull or 0.0), 2.0 * steep,
                                                            2.0 * self.state.theta.shape[1]))
        self._regroup()
        new = ((w.x_lo + w.x_hi) / 2).reshape(w.replicas, w.windows)
        nearest = (new.unsqueeze(2) - old.unsqueeze(1)).abs().argmin(2)  # (R, k) old window nearest each new one
        self.dt = torch.gather(old_dt, 1, nearest).reshape(-1).clone()
        lo, hi = float(g.lo[0]), float(g.hi[0])
        device = self.state.theta.device
        self.trips = trips.init(w.walkers, (lo, hi), end_fraction=self.end_fraction, device=device)
        self.window_trips = trips.init(w.walkers, (lo, hi), end_fraction=self.end_fraction, device=device)
        self.state = self._refresh_forces(self.state)
        return bounds

    def _copy_walkers(self, source: torch.Tensor) -> None:
        """Walker ``i`` takes walker ``source[i]``'s configuration (position, velocity, CVs, forces, ``d x / d
        theta``); counters stay with the slot. Only between chunks of the Wang-Landau phase, whose bias is still
        adapting (a copy is a resampling of the walkers, not a move of a fixed-bias chain)."""
        state = self.state
        self.state = dataclasses.replace(state, theta=state.theta[source].clone(),
                                         velocity=state.velocity[source].clone(), cv=state.cv[source].clone(),
                                         bias_grad=state.bias_grad[source].clone())
        if self.jacobian is not None:
            self.jacobian = self.jacobian[source].clone()

    def replica_shapes(self) -> tuple[np.ndarray, np.ndarray]:
        """Each replica's S so far from its windows' biases, without joining the windows' constants:
        ``(R, *shape)`` grids and ``(nx - 1,)`` the replicas' mean rise of the x-marginal S between neighbouring x
        bins (NaN where no window saw both).

        The x-marginal's rise between two bins is the mean over the replica's windows that visited both; S is its
        running sum (a rise no window of the replica saw takes the other replicas' mean, else 0); a 2-D grid adds
        each column's shape along the other axes from the window that visited that column most. Unlike the joined
        S (:meth:`replica_entropy`), this needs no chain of overlapping visited windows, which early in a run
        there often is not."""
        w, g = self.windows, self.landscape
        r, k, nx = w.replicas, w.windows, g.shape[0]
        bias = w.bias.reshape(r, k, nx, -1).cpu().numpy()
        visits = w.visits.reshape(r, k, nx, -1).cpu().numpy()
        masks = w.window_masks().reshape(r, k, nx, -1)[..., 0].cpu().numpy()
        seen_bins = visits > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            masked = np.where(seen_bins, bias, -np.inf)
            top = masked.max(-1, keepdims=True)
            marginal = np.log(np.exp(masked - np.where(np.isfinite(top), top, 0.0)).sum(-1)) + top[..., 0]
        seen = seen_bins.any(-1) & masks  # (R, k, nx)
        both = seen[..., 1:] & seen[..., :-1]
        step = np.where(both, np.diff(np.where(seen, marginal, 0.0), axis=-1), 0.0)
        with np.errstate(invalid="ignore"):
            rise = step.sum(1) / both.sum(1)  # (R, nx - 1), NaN where no window saw both bins
            mean_rise = np.nanmean(np.where(np.isfinite(rise), rise, np.nan), axis=0)
        rise = np.where(np.isfinite(rise), rise, np.nan_to_num(mean_rise, nan=0.0)[None])
        level = np.concatenate([np.zeros((r, 1)), np.cumsum(rise, axis=1)], axis=1)  # (R, nx)
        best = visits.sum(-1).argmax(1)  # (R, nx) window that visited each column most
        column = np.take_along_axis(bias, best[:, None, :, None], axis=1)[:, 0]  # (R, nx, rest)
        column_seen = np.take_along_axis(seen_bins, best[:, None, :, None], axis=1)[:, 0]
        column_top = np.take_along_axis(marginal, best[:, None, :], axis=1)[:, 0]
        within = np.where(column_seen, column - np.where(np.isfinite(column_top), column_top, 0.0)[..., None], np.nan)
        if within.shape[-1] == 1:
            within = np.zeros_like(within)
        shapes = (level[..., None] + within).reshape(r, *g.shape)
        return shapes, mean_rise

    @property
    def frozen(self) -> bool:
        return self.windows.is_frozen

    # -- between chunks -----------------------------------------------------------------------------------------

    def _close_block(self) -> None:
        """Append the production chunk's reweighted x-marginal mass per estimate ``(E, nx)`` to :attr:`blocks`."""
        w = self.windows
        mass = w.reweighted - self._last_production
        self._last_production.copy_(w.reweighted)
        if mass.dim() == 3:  # each replica's windows summed: per column, a mixture of estimates of p(y | x)
            self.grid_blocks.append(mass.reshape(w.replicas, w.windows, *mass.shape[1:]).sum(1).cpu().numpy())
        if mass.dim() > 2:
            mass = mass.sum(tuple(range(2, mass.dim())))
        self.blocks.append(mass.cpu().numpy())
        observed = self._observed()
        if observed is not None:  # the label-free readout's production sums per replica: its R-hat's draws
            self.observable_blocks.append((observed - self._last_observed).cpu().numpy())
            self._last_observed.copy_(observed)

    def _observed(self) -> torch.Tensor | None:
        """``(2, R, nx)``: the first observable's recorded sum and count per replica and x bin so far (1-D walks with
        observables, whose walker groups are the replicas), else None."""
        g = self.landscape
        if g.ndim != 1 or not g.observable_names or g.groups != self.windows.replicas:
            return None
        return torch.stack([g.group_obs_sum[0], g.group_obs_count]).to(torch.float64)

    def replica_entropy(self) -> np.ndarray:
        """``(R, *shape)``: S of each replica (nats, NaN where it has no estimate): its windows' reweighted
        production histograms joined on the overlaps once frozen, else its windows' biases joined."""
        w, g = self.windows, self.landscape
        pieces, masks, counts = self._pieces()
        k = w.windows
        columns = g.shape[0] if g.ndim > 1 else None
        out = [combine.stitch(pieces[i * k:(i + 1) * k], masks[i * k:(i + 1) * k],
                              None if counts is None else counts[i * k:(i + 1) * k], columns)
               for i in range(w.replicas)]
        return np.stack(out).reshape(w.replicas, *g.shape)

    def _pieces(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(pieces, masks, counts)``, each ``(E, n)``: every window's estimate of S (its reweighted production
        histogram once frozen, holes filled; else its bias), where it holds, and its production visits (None before
        production)."""
        w = self.windows
        e = w.replicas * w.windows
        masks = w.window_masks().reshape(e, -1).cpu().numpy()
        if self.frozen and float(w.production.sum()) > 0:
            counts = w.production.reshape(e, -1).cpu().numpy()
            with np.errstate(divide="ignore"):
                pieces = np.log(w.reweighted.reshape(e, -1).cpu().numpy())
            pieces = np.where(counts > 0, pieces, np.nan)
            pieces, counts = self._fill_holes(pieces, counts, masks & (w.visits.reshape(e, -1).cpu().numpy() > 0))
            return pieces, masks, counts
        return w.bias.reshape(e, -1).cpu().numpy(), masks & (w.visits.reshape(e, -1).cpu().numpy() > 0), None

    def overlap_misfit(self) -> tuple[float, float, float]:
        """``(misfit, lo, hi)``: the largest :func:`~lightning_entropy.core.combine.overlap_misfit` of any two
        neighbouring windows of a replica in production (nats), and the x range of their overlap; NaNs before
        production, with one window, or where no two windows share two bins."""
        w = self.windows
        if not self.frozen or self.refining or w.windows < 2:
            return math.nan, math.nan, math.nan
        pieces, masks, counts = self._pieces()
        if counts is None:
            return math.nan, math.nan, math.nan
        k = w.windows
        columns = self.landscape.shape[0] if self.landscape.ndim > 1 else None
        misfit = np.stack([combine.overlap_misfit(pieces[i * k:(i + 1) * k], masks[i * k:(i + 1) * k],
                                                  counts[i * k:(i + 1) * k], columns) for i in range(w.replicas)])
        if not np.isfinite(misfit).any():
            return math.nan, math.nan, math.nan
        r, j = np.unravel_index(int(np.nanargmax(misfit)), misfit.shape)
        upper = r * k + j + 1  # the overlap: the upper window's low edge to the lower window's high edge
        return float(misfit[r, j]), float(w.x_lo[upper]), float(w.x_hi[upper - 1])

    def _fill_holes(self, pieces: np.ndarray, counts: np.ndarray, reached: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
        """See :func:`~lightning_entropy.core.combine.fill_holes`; the WL values are the windows' frozen biases."""
        return combine.fill_holes(pieces, counts, reached, self.windows.bias.reshape(pieces.shape[0], -1).cpu().numpy(),
                                  line=self.landscape.ndim == 1)

    def rhat(self) -> tuple[np.ndarray, int]:
        """``(nx,)`` R-hat of the x-marginal S per x bin (worst window covering the bin), replicas as chains and
        production blocks as draws; NaN without production blocks enough (at least four) or two replicas.

        Per window, consecutive blocks are merged into the fewest groups (at least four) in which every replica
        visits at least half of the bins all replicas reached in production: a block of a few walkers over one
        chunk leaves most bins empty, and an empty bin has no log-mass to compare. Also returns the fewest draws any
        window used (0 without an R-hat): how often a mixed bin fails by chance depends on it."""
        w = self.windows
        nx = self.landscape.shape[0]
        out = np.full(nx, np.nan)
        draws: list[int] = []
        if len(self.blocks) < 4 or w.replicas < 2:
            return out, 0
        blocks = np.stack(self.blocks).reshape(len(self.blocks), w.replicas, w.windows, nx)  # (B, R, k, nx)
        lo, hi = w.bin_lo[: w.windows, 0].tolist(), w.bin_hi[: w.windows, 0].tolist()
        for k in range(w.windows):
            mass = blocks[:, :, k, lo[k]:hi[k]]  # (B, R, bins of window k)
            reached = (mass.sum(0) > 0).all(0)
            for size in range(1, len(self.blocks) // 4 + 1):
                n = len(self.blocks) // size
                grouped = mass[len(self.blocks) - n * size:].reshape(n, size, *mass.shape[1:]).sum(1)
                with np.errstate(divide="ignore"):
                    v = np.log(grouped)  # (n, R, bins)
                common = np.isfinite(v).all(axis=(0, 1))
                if common.sum() >= max(2, 0.5 * reached.sum()):
                    break
            if common.sum() < 2:
                continue
            v = v - v[..., common].mean(-1, keepdims=True)
            draws.append(n)
            r_hat = combine.rhat(np.transpose(v, (2, 1, 0)))  # (bins, chains, draws)
            out[lo[k]:hi[k]] = np.fmax(out[lo[k]:hi[k]], r_hat)
        return out, min(draws, default=0)

    def window_crossings(self) -> np.ndarray:
        """``(E,)`` how many times a walker of each estimate crossed its window during production, estimated from
        diffusion: production steps times the mean squared x displacement per walker-step (over chunks), over the
        window's width squared. A chunk whose displacement already averages a sixth of the width squared (a walker
        that crossed within the chunk) counts at least one crossing per chunk. NaN before production."""
        total, walker_steps, walker_chunks = self.displacement.cpu().numpy()
        if self.production_start is None or not (walker_steps > 0).any():
            return np.full(total.shape, np.nan)
        w = self.windows
        width2 = ((w.x_hi - w.x_lo) ** 2).cpu().numpy()
        steps = self.state.step - self.production_start
        per_step = total / np.maximum(walker_steps, 1.0)
        crossings = steps * per_step / width2
        saturated = total / np.maximum(walker_chunks, 1.0) >= width2 / 6
        return np.where(saturated, np.maximum(crossings, len(self.blocks)), crossings)

    def empty_windows(self) -> int:
        """Estimates (replica x window) that no walker has visited inside their window yet."""
        w = self.windows
        counts = (w.visits + w.production).reshape(w.replicas * w.windows, -1).sum(1)
        return int((counts == 0).sum())

    def publish(self) -> np.ndarray:
        """Write the replicas' mean S into ``landscape.bias`` (``landscape.known`` False where no replica has it) and
        their grids into ``landscape.replica_entropy``; returns the replicas' grids."""
        per_replica = self.replica_entropy()
        r = per_replica.shape[0]
        mean, _, _ = combine.replica_statistics(per_replica.reshape(r, -1))
        mean = torch.from_numpy(mean.reshape(self.landscape.shape)).to(self.landscape.bias)
        self.landscape.known.copy_(torch.isfinite(mean))
        self.landscape.bias.copy_(torch.nan_to_num(mean, nan=0.0))
        self.landscape.replica_entropy = per_replica
        self.landscape.replica_blocks = np.stack(self.observable_blocks) if self.observable_blocks else None
        self.landscape.replica_grid_blocks = np.stack(self.grid_blocks) if self.grid_blocks else None
        return per_replica

    def snapshot(self) -> dict[str, float]:
        """Publish S and append a convergence entry to ``landscape.history``: the change of S, the worst window's
        flatness, round trips within windows and across the range, the largest ``ln f``, the exchange acceptance,
        the replicas' RMS error of S, the worst R-hat over the bins every replica and block reached, and the share
        of those bins whose R-hat is at least ``R_HAT`` (1.05)."""
        w = self.windows
        self.publish()
        error = self.landscape.entropy_error
        r_hat, r_hat_draws = self.rhat()
        self.landscape.entropy_r_hat = r_hat
        within = self.window_trips.round_trips
        tried = float(w.exchange_tried.sum())
        extra = {
            "flatness": w.flatness(),
            "round_trips": float(within.sum()),
            "walkers_with_round_trip": float((within > 0).sum()),
            "round_trips_across_range": float(self.trips.round_trips.sum()),
            "log_f": float(w.current_log_f().max()),
            "exchange_acceptance": float(w.exchange_accepted.sum()) / tried if tried else float("nan"),
            "replica_error": float(np.sqrt(np.nanmean(error**2))) if np.isfinite(error).any() else float("nan"),
            "r_hat": float(np.nanmax(r_hat)) if np.isfinite(r_hat).any() else float("nan"),
            "r_hat_above": (float(np.mean(r_hat[np.isfinite(r_hat)] >= R_HAT)) if np.isfinite(r_hat).any()
                            else float("nan")),
            "r_hat_draws": float(r_hat_draws),
            "production": float(self.frozen and not self.refining),
            "refine_rounds_left": float(len(self.refining)),
            "empty_windows": float(self.empty_windows()),
            "production_blocks": float(len(self.blocks)),
        }
        misfit, lo, hi = self.overlap_misfit()
        if math.isfinite(misfit):
            extra.update(overlap_misfit=misfit, misfit_lo=lo, misfit_hi=hi)
        crossings = self.window_crossings()
        if np.isfinite(crossings).any():
            slowest = int(np.nanargmin(crossings))
            extra.update(window_crossings=float(crossings[slowest]), slowest_window_lo=float(w.x_lo[slowest]),
                         slowest_window_hi=float(w.x_hi[slowest]))
        return self.landscape.snapshot(self.state.step, **extra)

    # -- persistence ---------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.state_dict(),
            "windows": self.windows.state_dict(),
            "landscape": self.landscape.state_dict(),
            "round_trips": self.trips.state_dict(),
            "window_round_trips": self.window_trips.state_dict(),
            "blocks": torch.from_numpy(np.stack(self.blocks)) if self.blocks else None,
            "last_production": self._last_production.clone(),
            "production_start": self.production_start,
            "refining": list(self.refining), "refined_steps": self._refined_steps, "frozen_at": self._frozen_at,
            "refinements": [list(r) for r in self.refinements],
            "dt": self.dt.clone(),
            "picture": None if self._picture is None else self._picture.clone(),
            "jacobian": None if self.jacobian is None else self.jacobian.clone(),
            "displacement": self.displacement.clone(),
            "mobility": self.mobility.clone(),
            "observable_blocks": (torch.from_numpy(np.stack(self.observable_blocks)) if self.observable_blocks
                                  else None),
            "last_observed": None if self._last_observed is None else self._last_observed.clone(),
            "grid_blocks": torch.from_numpy(np.stack(self.grid_blocks)) if self.grid_blocks else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.state.theta.device
        self.windows.load_state_dict(state["windows"])
        self.state = wlmd.MDState.from_state_dict(state["state"], device)
        self._value = None
        self.landscape.load_state_dict(state["landscape"])
        self._regroup()
        self.trips = trips.RoundTripState.from_state_dict(state["round_trips"], device)
        self.window_trips = trips.RoundTripState.from_state_dict(state["window_round_trips"], device)
        blocks = state.get("blocks")
        self.blocks = [] if blocks is None else [b for b in blocks.cpu().numpy()]
        self._last_production.copy_(state["last_production"].to(device))
        self.production_start = state.get("production_start")
        self.refining = list(state.get("refining", []))
        self._refined_steps = int(state.get("refined_steps", 0))
        self._frozen_at = int(state.get("frozen_at", 0))
        self.refinements = [list(r) for r in state.get("refinements", [])]
        self.dt = state["dt"].to(self.dt)
        if state.get("displacement") is not None:  # checkpoints from before it was kept start it at zero
            self.displacement.copy_(state["displacement"].to(self.displacement))
        if state.get("mobility") is not None:
            self.mobility.copy_(state["mobility"].to(self.mobility))
        if self._picture is not None and state.get("picture") is not None:
            self._picture.copy_(state["picture"].to(self._picture))  # its axis: the observable's (label_free.axis)
        saved = state.get("grid_blocks")
        self.grid_blocks = [] if saved is None else [b for b in saved.cpu().numpy()]
        saved = state.get("observable_blocks")
        self.observable_blocks = [] if saved is None else [b for b in saved.cpu().numpy()]
        if self._last_observed is not None and state.get("last_observed") is not None:
            self._last_observed.copy_(state["last_observed"].to(self._last_observed))
        if self.jacobian is not None:
            saved = state.get("jacobian")
            if saved is None:  # a checkpoint from before the Jacobian was kept: rebuild it at the saved walkers
                self._forces.value_and_grad(self.state.theta, self.windows.potential)
                saved = self._forces.last
            self.jacobian = saved.to(self.jacobian)
