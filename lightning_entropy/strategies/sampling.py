"""The Wang-Landau side of a Lightning strategy: :class:`WangLandauSampling`, a mixin shared by
:class:`~lightning_entropy.WangLandauStrategy` (one device) and :class:`~lightning_entropy.WangLandauDDPStrategy`
(DDP processes sharing one landscape).

It reads the module through its contract (:mod:`lightning_entropy.strategies.contract`), starts the walkers, sets up
the grid (:mod:`lightning_entropy.core.setup`), builds the run object (:class:`~lightning_entropy.core.run.Run` for
``fill="visit"``, :class:`~lightning_entropy.core.step_run.StepRun` for ``fill="step"`` and MC), hands it a chunk per
Lightning step, logs, snapshots and checkpoints it. Everything that does not need Lightning lives in the core.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import lightning
import numpy as np
import torch

from lightning_entropy.core import fingerprint, nonfinite
from lightning_entropy.core import round_trips as trips
from lightning_entropy.core import setup as grid_setup
from lightning_entropy.core import threads as thread_policy
from lightning_entropy.core import schedule as schedules
from lightning_entropy.core.box import Box
from lightning_entropy.core.evaluator import Evaluator
from lightning_entropy.core.landscape import Landscape
from lightning_entropy.core.run import REFINE_ROUNDS, Run
from lightning_entropy.core.samplers import wlmc, wlmd
from lightning_entropy.core.start import start_walkers
from lightning_entropy.core.step_run import StepRun
from lightning_entropy.core.validation import check_variable_callables, validate_full_batch
from lightning_entropy.core.windows import Windows, auto_windows
from lightning_entropy.strategies import budget
from lightning_entropy.strategies.arguments import (check_arguments, check_fill, check_module_dtype, check_settings,
                                                   check_start, check_threads, check_variable_axes,
                                                   check_walker_memory, ranges_ends)
from lightning_entropy.strategies.base import SamplerMixin
from lightning_entropy.strategies.contract import inspect_module
from lightning_entropy.strategies.scalars import WANG_LANDAU_PROGRESS, log_step, wang_landau_metrics


class WangLandauSampling(SamplerMixin):
    """Wang-Landau sampling of the module's parameters (the arguments are
    :class:`~lightning_entropy.WangLandauStrategy`'s). Combine with a Lightning strategy class; the constructor calls
    :meth:`_init_wang_landau`. A DDP strategy overrides the hooks :meth:`_shared_ranges`, :meth:`_round_trip_counts`,
    :meth:`_metadata_extra` and :meth:`_step_run` to share the grid and the landscape between ranks."""

    #: the default production fraction per walk dimension (``production=None``): a 1-D walk's bias fills in a
    #: fraction of the run, and its readouts gain from a long production; a 2-D walk has ~20x more bins per window
    #: to fill, and with 60 % production the main job's readouts were 2.6x noisier than with 30 %
    AUTO_PRODUCTION = {1: 0.6, 2: 0.3}
    #: the share of the Wang-Landau phase after which the windows move to equal shares of the entropy found so far
    PLACE_AT = 0.5
    #: ``refine=None``: the share of the production phase that first refines the frozen biases from their
    #: production histograms (:meth:`~lightning_entropy.core.run.Run.freeze`); S, its errors and R-hat come from the
    #: rest
    REFINE = 1 / 3

    def _production(self, ndim: int) -> float:
        """The production fraction of a walk in ``ndim`` CVs: the setting, or :attr:`AUTO_PRODUCTION`."""
        return self.production if self.production is not None else self.AUTO_PRODUCTION.get(ndim, 0.3)

    def _init_wang_landau(self, *, sampler: str, variables, walkers, box, seed, ranges, bin_width, range_margin,
                          kernel_sigma, window, wall_strength, fill, replicas, windows, window_placement,
                          production, refine, log_f0,
                          exchange_every, schedule, dt, friction, metropolis, mass, step_size, adapt_steps,
                          adapt_every, steps_per_lightning_step, start, start_steps, start_lr, start_budget,
                          observables, observe_every, loss, heldout, accuracy_slope, accuracy_axis, vectorize,
                          threads, snapshot_every, groups) -> None:
        """Check every argument (a ``ValueError`` naming it) and keep the settings; nothing is evaluated yet."""
        kind = grid_setup.sampler_kind(sampler)
        variables = check_variable_axes(variables)
        self._init_sampling(walkers=walkers, steps_per_lightning_step=steps_per_lightning_step,
                            observe_every=observe_every, heldout=heldout, loss=loss, vectorize=vectorize,
                            snapshot_every=snapshot_every or 1, groups=groups or 1)
        check_arguments(walkers=walkers, ranges=ranges, window=window, variables=variables, groups=groups)
        check_settings(start_steps=start_steps, start_lr=start_lr, accuracy_slope=accuracy_slope,
                       accuracy_axis=accuracy_axis, kernel_sigma=kernel_sigma, wall_strength=wall_strength,
                       bin_width=bin_width)
        check_start(start, start_budget, range_margin)
        fill = check_fill(fill, schedule, kind.fills[0])
        self.fill = fill if fill in kind.fills else "step"
        if self.fill == "visit":
            replicas = grid_setup.visit_replicas(walkers, replicas, windows, production=production, log_f0=log_f0,
                                                 exchange_every=exchange_every)
        self.replicas = int(replicas) if isinstance(replicas, int) else 1
        self.windows = windows
        if window_placement not in ("crossing", "starts"):
            raise ValueError(f"window_placement={window_placement!r}: use 'crossing' (windows moved to equal crossing"
                             " times halfway through the Wang-Landau phase) or 'starts' (windows stay on the starts).")
        self.window_placement = window_placement
        self.production = None if production is None else float(production)  # None: by the walk's dimension
        if refine is not None and not (isinstance(refine, (int, float)) and not isinstance(refine, bool)
                                       and 0 <= refine < 1):
            raise ValueError(f"refine={refine!r} is a share of the production phase in [0, 1), e.g. 0.33 (0: the"
                             " biases stay as the Wang-Landau phase left them).")
        self.refine = float(self.REFINE if refine is None else refine)
        self.log_f0, self.exchange_every = float(log_f0), int(exchange_every)
        self._run: Run | StepRun | None = None
        self.sampler, self._kind = sampler, kind
        self.box = Box.parse(box)
        self.seed = int(seed)
        self._variables = tuple(variables) if variables is not None else None
        self._ranges = ranges_ends(ranges)  # (lo, hi) per axis, None where the end is found from the starts
        self._bin_width = bin_width
        # fill="visit" places its windows on the starts and can only trust bins its walkers reach: one bin below the
        # lowest start; the per-step fill lets the bias carry walkers further down.
        self.range_margin = float(range_margin) if range_margin is not None else (
            0.1 if self.fill == "visit" else 2.0)
        self.kernel_sigma = float(kernel_sigma) if kernel_sigma is not None else kind.kernel_sigma
        self._window = window
        self.wall_strength = float(wall_strength)
        self.schedule = schedules.parse(schedule if schedule is not None else kind.default_schedule())
        self.md_config = wlmd.MDConfig(dt=dt, friction=friction, metropolis=metropolis, mass=mass)
        self.mc_config = wlmc.MCConfig(step_size=step_size, adapt_steps=adapt_steps, adapt_every=adapt_every)
        self.start = start
        self.start_steps = int(start_steps)
        self.start_lr = float(start_lr)
        self.start_budget = float(start_budget)
        self.start_report = None  # what the start phase did (lightning_entropy.core.start.StartReport)
        self._observables = tuple(observables) if observables is not None else None
        self.accuracy_slope = float(accuracy_slope)
        self.accuracy_axis = accuracy_axis
        check_threads(threads)
        self.threads = threads
        self._threads: int | None = None
        self.snapshot_every = snapshot_every
        self.groups = self.replicas if self.fill == "visit" else groups if groups is not None else min(8, walkers)
        self._round_trips: trips.RoundTripState | None = None
        self._next_snapshot = 0
        self._landscape: Landscape | None = None
        self._evaluator: Evaluator | None = None
        self._setup: dict[str, Any] | None = None
        self._module_data = None

    @property
    def _config(self):
        """The integrator constants of the sampler kind."""
        return self.md_config if self.sampler == "md" else self.mc_config

    # -- results ---------------------------------------------------------------------------------------------------

    @property
    def landscape(self) -> Landscape:
        """The entropy landscape (live during the fit, final after it)."""
        if self._landscape is None:
            raise RuntimeError(
                "No landscape yet: call trainer.fit(model) with this strategy first (the landscape is created when"
                " training starts)."
            )
        return self._landscape

    @property
    def picture(self) -> Landscape | None:
        """The label-free 2-D picture of a 1-D walk in ln L_train with an accuracy or loss observable
        (``fill="visit"``, after production): ``S(x, y) = S(x) + ln p(y | x)`` with ``p(y | x)`` the held-out
        metric's histogram per train-loss bin (an accuracy: 41 bins over [0, 1]; ``ln_..._loss``: 0.1-nat bins over
        the values reached), sampled without test labels in the dynamics (its metadata says so). None otherwise."""
        return self._run.picture() if isinstance(self._run, Run) else None

    @property
    def round_trips(self) -> np.ndarray:
        """Completed round trips per walker across the x range (ends: the lowest and highest tenth)."""
        if self._round_trips is None:
            raise RuntimeError("The walkers do not exist before trainer.fit starts.")
        if isinstance(self._run, Run):
            return self._run.window_trips.round_trips.cpu().numpy()
        return self._round_trips.round_trips.cpu().numpy()

    @property
    def _schedule_state(self) -> dict[str, torch.Tensor] | None:
        return self._run.schedule_state if isinstance(self._run, StepRun) else None

    # -- starting ---------------------------------------------------------------------------------------------------

    def _resolve(self, spec: Any):
        """A CV of this module (names it logs are CVs too)."""
        return self._contract.resolve(spec, monte_carlo=self._kind.monte_carlo, accuracy_slope=self.accuracy_slope,
                                      accuracy_axis=self.accuracy_axis)

    def _prepare(self, trainer: lightning.pytorch.Trainer) -> None:
        module = self.lightning_module
        module.eval()  # deterministic CVs: no dropout noise, no batch-norm statistics updates
        device = self.root_device
        self._contract = contract = inspect_module(trainer, module, loss=self._loss, heldout=self.heldout,
                                                   device=device)  # data, loss, sampled parameters (module contract)
        loss, layout = contract.loss, contract.layout
        validate_full_batch(contract.data, loss, module)  # before any work: finite inputs, labels per split
        check_variable_callables(self._variables, module, contract.data)
        check_module_dtype(module)
        check_walker_memory(self.walkers, layout.numel, next(module.parameters()).dtype, device)
        variables = [self._resolve(v) for v in contract.variables_for(self._variables, self.heldout)]
        obs_names = self._observables
        if obs_names is None:
            obs_names = contract.default_observables(variables)
        observables = [contract.resolve(o, monte_carlo=True, accuracy_slope=self.accuracy_slope) for o in obs_names]
        evaluate = contract.evaluator(variables, observables, vectorize=self.vectorize)
        contract.announce(evaluate)  # once: what is sampled, eval mode, full batches, loss, vectorized or not
        self._evaluator, self._layout, self._loss_kind = evaluate, layout, loss
        dtype = next(module.parameters()).dtype
        bound = self.box.bounds(layout, device=device, dtype=dtype)
        self._bound = bound
        self._module_data = (module, contract.data)  # for the checkpoint's fingerprint (computed when first saved)
        self._setup = None
        theta_module = layout.flatten(module).to(device)
        # the chunks' intra-op threads (timed on the chunks), also for the start phase and its timing
        self._threads = thread_policy.choose(theta_module, self.threads)
        resume = self._pending or None  # a checkpoint's sampler state (restored by Lightning before training starts)
        if resume is not None:  # before any work: the same model, data and box, and the checkpoint's grid
            saved = resume.get("setup")
            fingerprint.check(saved, self._setup_record(None), box=self.box)
            theta0 = self._resumed_walkers(resume).to(device=device, dtype=dtype)
            with thread_policy.using(self._threads):
                cv0 = self._start_values(evaluate, theta0)
            ranges, bins = grid_setup.resumed_grid(saved, resume, variables, ranges=self._ranges,
                                                   bin_width=self._bin_width)
        else:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            train_only = contract.evaluator([self._resolve("train_loss")], vectorize=evaluate.vectorized)
            with thread_policy.using(self._threads):
                theta0 = self._start(trainer, theta_module, bound, gen,
                                     lambda th: _train_loss_and_gradient(train_only, th))
                cv0 = self._start_values(evaluate, theta0)  # the starting walkers' CVs, timed once
                ranges = self._ranges
                if grid_setup.partial(ranges):  # the ends not given are found from the starts
                    ranges = grid_setup.fill_ranges(variables, ranges, self._shared_ranges(grid_setup.aligned(
                        variables, grid_setup.auto_ranges(
                            variables, evaluate, theta0, bound, gen, range_margin=self.range_margin,
                            start_values=cv0, per_point=self._probe_seconds, time_left=budget.remaining(trainer)),
                        self._bin_width)))
            ranges, bins = grid_setup.grid(variables, ranges, self._bin_width)
        meta = grid_setup.metadata(
            model=type(module).__name__, parameters=layout.numel, box=self.box, kind=self._kind, config=self._config,
            fill=self.fill, schedule=self.schedule, log_f0=self.log_f0, replicas=self.replicas,
            production=self._production(len(variables)), walkers=self.walkers, seed=self.seed, start=self.start,
            variables=variables, vectorized=evaluate.vectorized, lightning_version=str(lightning.__version__))
        meta.update(self._metadata_extra())
        self._landscape = Landscape(
            ranges, bins, [v.name for v in variables], labels=[v.label for v in variables],
            kernel_sigma=self.kernel_sigma, window=self._window, wall_strength=self.wall_strength,
            observables=[o.name if o.name != "test_accuracy" else "hard_test_accuracy" for o in observables],
            groups=self.groups, device=device, metadata=meta,
        )
        if self.start_report is not None:  # a resumed run keeps its landscape's record of the start phase
            self._landscape.metadata["start_phase"] = self.start_report.describe()
        if resume is None:  # resumed walkers are the checkpoint's, inside its grid
            with thread_policy.using(self._threads):
                theta0 = grid_setup.admit(self._landscape, theta0, cv0, ranges)
        x_range = grid_setup.round_trip_range(self._landscape, ranges)
        if self.fill == "visit":
            count = (self.windows if self.windows != "auto" else
                     auto_windows(self.walkers // self.replicas, self._landscape.shape[0]))
            windows = Windows(self._landscape, self.walkers, replicas=self.replicas, windows=count,
                              log_f0=self.log_f0, exchange_every=self.exchange_every, device=device)
            self._run = Run(evaluate, self._landscape, bound, theta0, windows=windows, config=self.md_config,
                            seed=self.seed + 1, observe_every=self.observe_every, threads=self._threads)
            self._landscape.metadata["windows"] = windows.config()
        else:
            self._run = self._step_run(self._kind.build(evaluate, self._landscape, bound, self._config), theta0,
                                       x_range)
        self._state = self._run.state
        self._last_accepted = self._state.accepted.clone()
        self._round_trips = (self._run.round_trips if isinstance(self._run, StepRun) else
                             trips.init(self.walkers, x_range, device=device))
        self._snapshot_interval = budget.snapshot_interval(trainer, self.steps_per_lightning_step,
                                                           self.snapshot_every)
        self._next_snapshot = self._snapshot_interval
        if self._pending:  # an empty state: a checkpoint written before the walkers existed
            self._restore(self._pending)
        self._pending = None
        self.say_forecast(trainer, measured=False)  # a clear shortfall is said before sampling starts

    def _start(self, trainer, module_theta: torch.Tensor, bound: torch.Tensor, gen: torch.Generator,
               loss_and_gradient) -> torch.Tensor:
        """The walkers' starting points; optimiser starts take at most ``start_budget`` of the time left of
        ``max_time`` (shortened with a warning when they would take more), and stop above a given low end of the
        ln L_train range (so that every walker starts inside the grid, from its own run)."""
        left = budget.remaining(trainer)
        allowed = None if left is None else max(0.0, left) * self.start_budget
        floor = self._ranges[0][0] if self._ranges else None
        theta0, report = start_walkers(self.start, walkers=self.walkers, bound=bound, generator=gen,
                                       module_theta=module_theta, train_loss_and_gradient=loss_and_gradient,
                                       steps=self.start_steps, lr=self.start_lr, time_budget=allowed, floor=floor)
        self.start_report = report
        if report.shortened:
            warnings.warn(report.shortfall(self.walkers, self.start_budget, left), stacklevel=2)
        if report.requested:  # an optimiser step of all walkers on the train set: about half a sampler step
            self._clock = budget.StepClock(prior=2.0 * report.seconds_per_step)
        return theta0

    def _start_values(self, evaluate: Evaluator, theta0: torch.Tensor) -> torch.Tensor:
        """The CVs of the starting walkers (one evaluation, without gradient), and its cost per walker
        (``self._probe_seconds``; also the sampler step's estimate when no optimiser start measured one)."""
        started = time.perf_counter()
        with torch.no_grad():
            cv = evaluate(theta0).values
        cv = cv.detach()
        torch.isfinite(cv).all().item()  # a host read: the evaluation has finished
        seconds = time.perf_counter() - started
        self._probe_seconds = seconds / max(1, len(theta0))
        if self._clock.per_step is None:  # no optimiser start: a step costs a few forward passes (and a backward)
            self._clock = budget.StepClock(prior=4.0 * seconds)
        return cv

    def _resumed_walkers(self, state: dict[str, Any]) -> torch.Tensor:
        """The checkpoint's walkers this process starts from."""
        return grid_setup.resumed_walkers(state)

    # -- hooks for strategies that share the landscape between processes ---------------------------------------

    def _shared_ranges(self, ranges: list[tuple[float, float]]) -> list[tuple[float, float]]:
        """The automatic grid ranges every process uses (one process: its own)."""
        return ranges

    def _metadata_extra(self) -> dict[str, Any]:
        """Entries of the landscape's metadata beyond :func:`lightning_entropy.core.setup.metadata`."""
        return {}

    def _step_run(self, sampler, theta0: torch.Tensor, x_range) -> StepRun:
        """The run object of ``fill="step"`` (and MC)."""
        return StepRun(sampler, theta0, schedule=self.schedule, seed=self.seed + 1, x_range=x_range,
                       observe_every=self.observe_every, threads=self._threads)

    def _round_trip_counts(self) -> tuple[float, float]:
        """Round trips of all walkers, and how many walkers made at least one."""
        return self._run.round_trip_counts()

    # -- running ----------------------------------------------------------------------------------------------------

    def run_chunk(self, steps: int) -> None:
        """Run ``steps`` sampler steps on every walker, update the schedule, log, and copy walker 0 into the module.
        With ``fill="visit"``, the bias freezes once the production fraction of the run is left."""
        if self._state is None:
            self._prepare(self.lightning_module.trainer)
        info = self._run.chunk(steps)
        self._state = self._run.state
        production = self._production(self._landscape.ndim) if self._landscape is not None else 0.0
        if isinstance(self._run, Run) and not self._run.frozen:
            progress = budget.progress(self.lightning_module.trainer)
            if (self.window_placement == "crossing" and self._run.windows.relayouts == 0
                    and progress >= self.PLACE_AT * (1 - production)):
                self._run.place()
                self._landscape.metadata["windows"] = self._run.windows.config()
            if production > 0 and progress >= 1 - production:
                # the Wang-Landau phase took the first 1 - production of the run: production takes about this long
                left = self._run.state.step * production / max(1 - production, 1e-9)
                refine, chunk = int(self.refine * left), max(int(steps), 1)
                rounds = min(REFINE_ROUNDS, refine // chunk)  # rounds end at chunk boundaries: at least a chunk each
                self._run.freeze(refine=refine if rounds else 0, rounds=max(rounds, 1))
        self._after_chunk(steps, info)

    def _after_chunk(self, steps: int, info: dict[str, float] | None) -> None:
        """Walker 0 into the module, a snapshot when one is due, the log."""
        self._layout.load_into(self.lightning_module, self._state.theta[0])
        if self._state.step >= self._next_snapshot:
            self.snapshot()
        self._log_progress(steps, info)

    def on_train_end(self) -> None:
        super().on_train_end()
        self._final_snapshot()
        nonfinite.warn_if_many(self._state)

    def _final_snapshot(self) -> None:
        """A last convergence snapshot when at least a quarter interval has passed since the previous one (a run
        stopped by ``max_time`` ends between snapshots)."""
        if self._state is not None and self._state.step - (self._next_snapshot - self._snapshot_interval) >= max(
                1, self._snapshot_interval // 4):
            self.snapshot()

    def snapshot(self) -> dict[str, float]:
        """Record a convergence snapshot now (S change since the last one, flatness, round trips; see
        :meth:`Landscape.snapshot`). Called by the strategy every ``snapshot_every`` sampler steps."""
        entry = self._run.snapshot() if isinstance(self._run, Run) else self._run.snapshot(self._round_trip_counts())
        self._next_snapshot = self._state.step + self._snapshot_interval
        return entry

    def _log_progress(self, steps: int, info: dict[str, float] | None = None) -> None:
        accepted = self._acceptance(self._state.accepted, steps)
        metrics = wang_landau_metrics(self._state, self._landscape, self._run, self.schedule, accepted, info)
        log_step(self.lightning_module, metrics, WANG_LANDAU_PROGRESS)

    # -- checkpoints ---------------------------------------------------------------------------------------------------

    def _sampler_state(self) -> dict[str, Any]:
        if isinstance(self._run, Run):
            return {"kind": self.sampler, "walkers": self.walkers, "fill": "visit", "run": self._run.state_dict(),
                    "last_accepted": self._last_accepted.clone(), "next_snapshot": self._next_snapshot,
                    "setup": self.setup_record}
        saved = self._run.state_dict()
        return {"kind": self.sampler, "walkers": self.walkers, "setup": self.setup_record, "state": saved["state"],
                "landscape": saved["landscape"], "schedule": saved["schedule"],
                "last_accepted": self._last_accepted.clone(), "round_trips": saved["round_trips"],
                "next_snapshot": self._next_snapshot}

    @property
    def setup_record(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed: the grid, the box and its half-widths, and a fingerprint of the
        data and model (see :mod:`lightning_entropy.core.fingerprint`); computed once, when first needed."""
        if self._setup is None:
            self._setup = self._setup_record(self._landscape)
        return self._setup

    def _setup_record(self, landscape) -> dict[str, Any]:
        module, data = self._module_data
        return fingerprint.record(landscape=landscape, box=self.box, layout=self._layout, bound=self._bound,
                                  module=module, data=data)

    @property
    def sampler_kind(self) -> str:
        return self.sampler

    def _restore(self, state: dict[str, Any]) -> None:
        device = self.root_device
        if ("run" in state) != isinstance(self._run, Run):
            raise fingerprint.ResumeMismatch(
                f"The checkpoint was written with fill={'visit' if 'run' in state else 'step'!r}, this strategy has"
                f" fill={self.fill!r}: resume with the same fill (and replicas, windows)."
            )
        if isinstance(self._run, Run):
            self._run.load_state_dict(state["run"])
        else:
            self._run.load_state_dict(state, device)
            self._round_trips = self._run.round_trips
        self._state = self._run.state
        self._last_accepted = state["last_accepted"].to(device)
        if "run" in state or "round_trips" in state:  # older per-step checkpoints keep the fresh snapshot plan
            self._next_snapshot = int(state["next_snapshot"])


__all__ = ["WangLandauSampling"]


def _train_loss_and_gradient(train_only: Evaluator, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each walker's ln L_train and its gradient (one forward and backward): what the optimiser starts descend."""
    cv, _, grad = train_only.value_and_grad(theta, grid_setup.unit_slope)
    return cv[:, 0], grad
