"""``WangLandauStrategy``: a Lightning strategy that replaces the optimizer with a Wang-Landau sampler.

``Trainer(strategy="wang_landau")`` (molecular dynamics) or ``Trainer(strategy="wang_landau_mc")`` (Monte Carlo)
measures the entropy landscape S(ln L_train[, test metric]) of any LightningModule. The user's module is not
rewritten: its ``configure_optimizers`` is not called; the sampler moves stacked copies of its parameters (the
walkers) and, after every Lightning step, copies walker 0 back into the module.

What happens in a fit:

1. ``setup``: settings that cannot work with a sampler are rejected with the fix (manual optimization, mixed
   precision, gradient clipping, gradient accumulation).
2. ``on_train_start``: the train and held-out sets are read once and cached as full batches on the device; the
   walkers start (module weights, box, or short optimiser runs); grid ranges are found when none were given.
3. Every Lightning step runs ``steps_per_lightning_step`` sampler steps, updates the schedule, and logs the WL
   factor, flatness, acceptance and the walkers' CV range (shown on the progress bar).
4. Checkpoints hold the whole sampler state (walkers, velocities, RNG, landscape, schedule) through the
   placeholder optimizer's ``state_dict``; a resumed run continues exactly as the uninterrupted one. They also hold a
   setup record (:mod:`lightning_entropy.core.fingerprint`: grid, box, fingerprints of data and model): a resume starts
   from the checkpoint's walkers on the checkpoint's grid (nothing is found again from the restored weights), and
   refuses another box, model or data before any work.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import lightning
import numpy as np
import torch

from lightning_entropy import __version__
from lightning_entropy.core import loop, round_trips
from lightning_entropy.core import threads as thread_policy
from lightning_entropy.core import schedule as schedules
from lightning_entropy.core.box import Box, uniform
from lightning_entropy.core.evaluator import Evaluator
from lightning_entropy.core.landscape import Landscape
from lightning_entropy.core.run import Run
from lightning_entropy.core.windows import Windows, auto_windows
from lightning_entropy.core.samplers import wlmc, wlmd
from lightning_entropy.core.start import MODES, start_walkers
from lightning_entropy.core import fingerprint, nonfinite
from lightning_entropy.core.validation import check_variable_callables, validate_full_batch
from lightning_entropy.core.variables import CollectiveVariable
from lightning_entropy.strategies import budget
from lightning_entropy.strategies.scalars import log_step
from lightning_entropy.strategies.arguments import check_arguments, check_grid, check_module_dtype, check_walker_memory
from lightning_entropy.strategies.base import SamplerOptimizer, SamplerStrategy
from lightning_entropy.strategies.contract import inspect_module

__all__ = ["SamplerOptimizer", "WangLandauStrategy"]

#: The sampler state of each ``sampler`` name, for checkpoints read where no sampler was built.
STATES = {"md": wlmd.MDState, "mc": wlmc.MCState}


#: Random box points evaluated to find the grid ranges (with the starting walkers), and, under a time cap, the least
#: of them and the largest share of the time left they may take.
RANGE_PROBE, RANGE_PROBE_MIN, RANGE_PROBE_SHARE = 256, 8, 0.05


def _unit_slope(cv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A bias equal to the first CV: its gradient is the gradient of ln L_train."""
    return cv[:, 0], torch.nn.functional.one_hot(torch.zeros(len(cv), dtype=torch.long), cv.shape[1]).to(cv)


class WangLandauStrategy(SamplerStrategy):
    """Sample the entropy landscape of a LightningModule instead of training it with an optimizer.

    Args:
        sampler: ``"md"`` (Wang-Landau molecular dynamics) or ``"mc"`` (single-parameter Monte Carlo).
        variables: one or two CV names or callables (see ``lightning_entropy.core.variables``). The x axis is
            ``ln L_train``. ``"test_metric"`` names the module's own held-out metric (as the default picks it).
            Default: ``("train_loss", "test_accuracy")`` for classifiers, ``("train_loss", "test_loss")``
            otherwise, ``("train_loss",)`` without a held-out set.
        walkers: number of walkers sampled together (vectorized), all depositing into one landscape.
        box: a positive float (every parameter in ``[-b, b]``), a rule name (``"fan_out"``, ``"fan_out:3"``,
            ``"first_hidden"``) or a :class:`~lightning_entropy.Box`.
        seed: seeds the starting positions, velocities and moves. The same seed gives the same landscape.
        ranges: ``(lo, hi)`` per axis in CV units; default: found from the starting walkers and random box points.
        bin_width: bin width per axis in CV units; default 0.1 for ln-loss axes, 1/40 for accuracies, 0.25 on a
            logit axis, 1/50 of the range otherwise.
        range_margin: when ranges are found automatically, how far (CV units, nats for loss axes) the grid extends
            below the lowest loss seen at the start (and around a test loss). Default: 0.1 with ``fill="visit"``
            (its windows sit on the starts, so the grid holds what the walkers reach; pass ``ranges`` or train
            the start longer to go lower), 2.0 otherwise.
        kernel_sigma: deposit Gaussian width in bins (default 0.5 for MD, 0 (one bin) for MC); wider kernels fill
            faster but blur S where it curves (1 bin gave 0.16 nats RMS against 0.10 for 0.5 bins on the toy 2-D test).
        window: soft-wall window per axis ``(lo, hi)`` in CV units; the grid edges are always hard walls.
        wall_strength: soft-wall constant ``c`` in ``c * d**2`` (nats per squared CV unit); 0 disables it.
        fill: how the bias fills (MD). ``"visit"`` (default unless a ``schedule`` is given): replica-exchange WL:
            ``replicas`` independent replicas, each with ``windows`` overlapping windows in ln L_train whose walkers
            share that window's estimate; each visit deposits the estimate's ``ln f`` (nats per visit, from
            ``log_f0``, halved on flat stage histograms, then 1/t in visits per bin), so more walkers fill faster;
            the last ``production`` fraction of the run freezes the bias and reweights (see
            :mod:`lightning_entropy.core.windows` and :mod:`lightning_entropy.core.run`). ``"step"``: the
            reference study's semantics, one landscape whose ``schedule`` gives the nats per sampler step shared by
            all walkers (the default when ``schedule`` is given; MC always fills this way).
        replicas: independent replicas (own walkers, biases and random numbers) for ``fill="visit"``; their spread
            is the error of S and of every readout, their R-hat the convergence test. ``walkers`` must be a
            multiple of ``replicas * windows``. ``"auto"``: the largest of 4, 3, 2, 1 that divides ``walkers``.
        windows: windows per replica along ln L_train for ``fill="visit"``: a positive integer or ``"auto"``
            (about one per four walkers of a replica, at most 8, each at least ~8 bins wide).
        production: fraction of the run (of the Trainer's steps, or of ``max_time`` when that ends the run first)
            sampled with the bias frozen, for ``fill="visit"``; 0 never freezes.
        log_f0: initial WL factor per visit in nats (``fill="visit"``).
        exchange_every: sampler steps between replica-exchange attempts between neighbouring windows (0: none).
        schedule: WL factor schedule for ``fill="step"`` and MC (nats per sampler step shared by the walkers): an
            instance, a name or a mapping; default ``FlatnessOneOverT(f0=0.1)`` for MD, ``FlatnessOneOverT(f0=1.0)``
            for MC.
        dt: MD time step, in box half-widths per unit velocity (``mass="box"``) or parameter units (``"unit"``).
        friction: MD Langevin friction γ, the fraction of velocity replaced by noise per step, in (0, 1].
        metropolis: MD with a Metropolis test (WL-GHMC): no time-step bias, same cost per step.
        mass: ``"box"`` (mass 1/b², scale-free ``dt``) or ``"unit"`` (the reference study's unit masses).
        step_size: MC proposal half-width in parameter units (adapted during ``adapt_steps`` steps).
        adapt_steps: MC burn-in steps during which the step size adapts (every ``adapt_every`` steps).
        adapt_every: MC adaptation interval in steps.
        steps_per_lightning_step: sampler steps run per Lightning step (Lightning's bookkeeping stays small).
        start: ``"module"`` (the module's weights), ``"uniform"`` (random box points), ``"adam"``/``"sgd"`` (short
            optimiser runs, one per walker, of ``start_steps`` steps at ``start_lr``, stopped at spread lengths).
        start_budget: with a Trainer ``max_time``, the largest fraction of the time left when the walkers start that
            the optimiser runs of ``start="adam"``/``"sgd"`` may take; longer runs are shortened to fit (with a
            warning, and ``landscape.metadata["start_phase"]`` says so). ``1``: the whole cap.
        observables: names recorded per bin without bias; default: the held-out metric for a 1-D walk.
        observe_every: record observables every this many sampler steps.
        loss: ``"auto"`` (the module's ``loss_fn``/``criterion``, or the standard loss ``training_step`` computes of
            ``forward``; else its ``training_step``), ``"cross_entropy"``, ``"binary_cross_entropy"``, ``"mse"``, a
            callable ``loss(outputs, targets)``, or ``None`` (always ``training_step``); see ``strategies.contract``.
        heldout: ``"val"`` (val_dataloader) or ``"test"`` (test_dataloader): the data behind test CVs.
        accuracy_slope: slope ``k`` of the smoothed accuracy.
        accuracy_axis: ``"linear"`` or ``"logit"`` for accuracy axes.
        vectorize: ``"auto"`` (vmap when it traces), ``True`` or ``False`` (loop over walkers).
        threads: intra-op threads while the sampler runs: a positive int, or ``"auto"``: one thread when a step
            (all walkers, forward and backward) is below 2e8 FLOP on a CPU, where more threads only wait for each
            other (10x slower beside a busy process), else torch's setting. Restored after every chunk.
        snapshot_every: sampler steps between convergence snapshots (S change, window flatness, round trips; see
            ``landscape.history``); default a twentieth of the run (``max_steps``), at least one Lightning step.
        groups: walker groups whose spread gives the readouts' error bars with ``fill="step"`` or MC; default
            ``min(8, walkers)``. With ``fill="visit"`` the groups are the replicas.
        device: the device; default the Trainer's accelerator device.
    """

    strategy_name = "wang_landau"

    def __init__(
        self,
        *,
        sampler: str = "md",
        variables: Sequence[str | Callable] | str | None = None,
        walkers: int = 16,
        box: float | str | Box = "fan_out",
        seed: int = 0,
        ranges: Sequence[tuple[float, float]] | None = None,
        bin_width: Sequence[float] | float | None = None,
        range_margin: float | None = None,
        kernel_sigma: float | None = None,
        window: Sequence[tuple[float, float]] | None = None,
        wall_strength: float = 0.0,
        fill: str | None = None,
        replicas: int | str = "auto",
        windows: int | str = "auto",
        production: float = 0.3,
        log_f0: float = 0.1,
        exchange_every: int = 10,
        schedule: Any = None,
        dt: float = 0.02,
        friction: float = 0.01,
        metropolis: bool = True,
        mass: str = "box",
        step_size: float = 0.1,
        adapt_steps: int = 50_000,
        adapt_every: int = 1000,
        steps_per_lightning_step: int = 100,
        start: str = "module",
        start_steps: int = 300,
        start_lr: float = 1e-2,
        start_budget: float = 0.25,
        observables: Sequence[str] | None = None,
        observe_every: int = 10,
        loss: Any = "auto",
        heldout: str = "val",
        accuracy_slope: float = 5.0,
        accuracy_axis: str = "linear",
        vectorize: bool | str = "auto",
        threads: int | str = "auto",
        snapshot_every: int | None = None,
        groups: int | None = None,
        device: torch.device | str | None = None,
        accelerator=None,
        checkpoint_io=None,
        precision_plugin=None,
    ) -> None:
        super().__init__(device=device, accelerator=accelerator, checkpoint_io=checkpoint_io,
                         precision_plugin=precision_plugin)
        if sampler not in ("md", "mc"):
            raise ValueError(f"sampler={sampler!r}: use 'md' (Wang-Landau MD) or 'mc' (Wang-Landau Monte Carlo).")
        if isinstance(variables, str) or callable(variables):
            variables = (variables,)
        if variables is not None and not 1 <= len(variables) <= 2:
            raise ValueError(f"variables={variables!r}: give one or two collective variables (x is ln L_train).")
        if variables is not None and variables[0] != "train_loss":
            raise ValueError(
                f"variables={tuple(variables)!r}: the first axis is always 'train_loss' (ln L_train, as in the paper);"
                " put the test metric second, e.g. ('train_loss', 'test_accuracy')."
            )
        for name, value in (("walkers", walkers), ("steps_per_lightning_step", steps_per_lightning_step),
                            ("observe_every", observe_every), ("snapshot_every", snapshot_every or 1),
                            ("groups", groups or 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer.")
        check_arguments(walkers=walkers, ranges=ranges, window=window, variables=variables, groups=groups)
        if start not in MODES:
            raise ValueError(f"start={start!r} is not a start mode; use one of {MODES}.")
        if not (isinstance(start_budget, (int, float)) and 0 < start_budget <= 1):
            raise ValueError(f"start_budget={start_budget!r}: a fraction of the time cap in (0, 1], e.g. 0.25.")
        if range_margin is not None and not (math.isfinite(range_margin) and range_margin > 0):
            raise ValueError(f"range_margin={range_margin!r} must be a positive number of CV units (or None).")
        if fill is None:  # an explicit schedule is the reference study's per-step semantics
            fill = "step" if schedule is not None or sampler == "mc" else "visit"
        if fill not in ("visit", "step"):
            raise ValueError(f"fill={fill!r}: use 'visit' (replica-exchange WL, per-visit factor) or 'step' (the"
                             " reference study's factor per sampler step shared by the walkers).")
        self.fill = fill if sampler == "md" else "step"
        if self.fill == "visit":
            windows_ok = windows == "auto" or (isinstance(windows, int) and not isinstance(windows, bool)
                                               and windows >= 1)
            if not windows_ok:
                raise ValueError(f"windows={windows!r}: give a positive integer or 'auto'.")
            if replicas == "auto":
                positive = isinstance(walkers, int) and walkers > 0
                replicas = max(r for r in (4, 3, 2, 1) if walkers % r == 0) if positive else 1
            if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
                raise ValueError(f"replicas={replicas!r} must be a positive integer (independent replicas).")
            per = replicas * (windows if isinstance(windows, int) else 1)
            if walkers % per:
                raise ValueError(
                    f"walkers={walkers} cannot be split over replicas={replicas} x windows={windows}: use a multiple of"
                    f" {per} walkers (e.g. walkers={per * max(1, round(walkers / per))}), or replicas=1."
                )
            if not 0 <= production < 1:
                raise ValueError(f"production={production!r} is a fraction of the run in [0, 1), e.g. 0.3.")
            if not (math.isfinite(log_f0) and log_f0 > 0):
                raise ValueError(f"log_f0={log_f0!r}: the initial WL factor must be a positive number of nats,"
                                 " e.g. 0.1.")
            if not isinstance(exchange_every, int) or exchange_every < 0:
                raise ValueError(f"exchange_every={exchange_every!r} must be a non-negative integer of sampler steps.")
        self.replicas = int(replicas) if isinstance(replicas, int) else 1
        self.windows, self.production = windows, float(production)
        self.log_f0, self.exchange_every = float(log_f0), int(exchange_every)
        self._run: Run | None = None
        self.sampler = sampler
        self.box = Box.parse(box)
        self.walkers = walkers
        self.seed = int(seed)
        self._variables = tuple(variables) if variables is not None else None
        self._ranges = [tuple(map(float, r)) for r in ranges] if ranges is not None else None
        self._bin_width = bin_width
        # fill="visit" places its windows on the starts and can only trust bins its walkers reach: one bin below the
        # lowest start; the per-step fill lets the bias carry walkers further down.
        self.range_margin = float(range_margin) if range_margin is not None else (
            0.1 if self.fill == "visit" else 2.0)
        self.kernel_sigma = float(kernel_sigma) if kernel_sigma is not None else (0.5 if sampler == "md" else 0.0)
        self._window = window
        self.wall_strength = float(wall_strength)
        default_schedule = schedules.FlatnessOneOverT(f0=0.1 if sampler == "md" else 1.0)
        self.schedule = schedules.parse(schedule if schedule is not None else default_schedule)
        self.md_config = wlmd.MDConfig(dt=dt, friction=friction, metropolis=metropolis, mass=mass)
        self.mc_config = wlmc.MCConfig(step_size=step_size, adapt_steps=adapt_steps, adapt_every=adapt_every)
        self.steps_per_lightning_step = steps_per_lightning_step
        self.start = start
        self.start_steps = int(start_steps)
        self.start_lr = float(start_lr)
        self.start_budget = float(start_budget)
        self.start_report = None  # what the start phase did (lightning_entropy.core.start.StartReport)
        self._observables = tuple(observables) if observables is not None else None
        self.observe_every = observe_every
        self._loss = loss
        if heldout not in ("val", "test"):
            raise ValueError(f"heldout={heldout!r}: use 'val' (val_dataloader) or 'test' (test_dataloader).")
        self.heldout = heldout
        self.accuracy_slope = float(accuracy_slope)
        self.accuracy_axis = accuracy_axis
        self.vectorize = vectorize
        if threads != "auto" and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ValueError(f"threads={threads!r}: give a positive number of threads or 'auto'.")
        self.threads = threads
        self._threads: int | None = None
        self.snapshot_every = snapshot_every
        self.groups = groups if groups is not None else min(8, walkers)
        if self.fill == "visit":
            self.groups = self.replicas
        self._round_trips: round_trips.RoundTripState | None = None
        self._next_snapshot = 0
        self._landscape: Landscape | None = None
        self._sampler: wlmd.WLMD | wlmc.WLMC | None = None  # fill="step" and MC (fill="visit" runs self._run)
        self._state: wlmd.MDState | wlmc.MCState | None = None
        self._schedule_state: dict[str, torch.Tensor] | None = None
        self._pending: dict[str, Any] | None = None
        self._evaluator: Evaluator | None = None
        self._last_accepted: torch.Tensor | None = None
        self._setup: dict[str, Any] | None = None
        self._module_data = None

    @property
    def sampler_steps(self) -> int:
        return int(self._state.step) if self._state is not None else 0

    def _display_loss(self) -> torch.Tensor:
        """The walkers' mean train loss (shown by Lightning; nothing backpropagates)."""
        return self._state.cv[:, 0].exp().mean()

    # -- the sampler -----------------------------------------------------------------------------------------------

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
        """The label-free 2-D picture of a 1-D walk in ln L_train with an accuracy observable (``fill="visit"``,
        after production): ``S(x, y) = S(x) + ln p(y | x)`` with ``p(y | x)`` the held-out accuracy's histogram
        per train-loss bin, sampled without test labels in the dynamics (its metadata says so). None otherwise."""
        return self._run.picture() if self._run is not None else None

    @property
    def walker_parameters(self) -> torch.Tensor:
        """The walkers' current flat parameters ``(W, P)``."""
        if self._state is None:
            raise RuntimeError("The walkers do not exist before trainer.fit starts.")
        return self._state.theta

    def _resolve(self, spec: Any, loss: Any) -> CollectiveVariable:
        """A CV of this module (``loss``: its loss kind, as the contract found it; names it logs are CVs too)."""
        return self._contract.resolve(spec, monte_carlo=self.sampler == "mc", accuracy_slope=self.accuracy_slope,
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
        names = self._metric_names(contract)
        variables = [self._resolve(v, loss) for v in names]
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
        # the chunks' intra-op threads (from the FLOP of one walker's step), also for the start phase and the probes
        self._threads = thread_policy.choose(evaluate, theta_module.unsqueeze(0).expand(self.walkers, -1),
                                             self.threads)
        resume = self._pending or None  # a checkpoint's sampler state (restored by Lightning before training starts)
        if resume is not None:  # before any work: the same model, data and box, and the checkpoint's grid
            saved = resume.get("setup")
            fingerprint.check(saved, self._setup_record(None), box=self.box)
            theta0 = self._resumed_walkers(resume).to(device=device, dtype=dtype)
            with thread_policy.using(self._threads):
                cv0 = self._start_values(evaluate, theta0)
            ranges, bins = self._resumed_grid(saved, resume, variables)
        else:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            train_only = contract.evaluator([self._resolve("train_loss", loss)], vectorize=evaluate.vectorized)
            with thread_policy.using(self._threads):
                theta0 = self._start(trainer, theta_module, bound, gen,
                                     lambda th: train_only.value_and_grad(th, _unit_slope)[2])
                cv0 = self._start_values(evaluate, theta0)  # the starting walkers' CVs, timed once
                ranges = self._ranges or self._auto_ranges(variables, evaluate, theta0, bound, gen, start_values=cv0,
                                                           time_left=budget.remaining(trainer))
            ranges, bins = self._grid(variables, ranges)
        self._landscape = Landscape(
            ranges, bins, [v.name for v in variables], labels=[v.label for v in variables],
            kernel_sigma=self.kernel_sigma, window=self._window, wall_strength=self.wall_strength,
            observables=[o.name if o.name != "test_accuracy" else "hard_test_accuracy" for o in observables],
            groups=self.groups, device=device, metadata=self._metadata(module, layout, variables, evaluate),
        )
        if self.start_report is not None:  # a resumed run keeps its landscape's record of the start phase
            self._landscape.metadata["start_phase"] = self.start_report.describe()
        self._schedule_state = self.schedule.init(device)
        if resume is None:  # resumed walkers are the checkpoint's, inside its grid
            with thread_policy.using(self._threads):
                theta0 = self._admit(theta0, cv0, ranges)
        if self.fill == "visit":
            count = (self.windows if self.windows != "auto" else
                     auto_windows(self.walkers // self.replicas, self._landscape.shape[0]))
            windows = Windows(self._landscape, self.walkers, replicas=self.replicas, windows=count,
                              log_f0=self.log_f0, exchange_every=self.exchange_every, device=device)
            self._run = Run(evaluate, self._landscape, bound, theta0, windows=windows, config=self.md_config,
                            seed=self.seed + 1, observe_every=self.observe_every, threads=self._threads)
            self._landscape.metadata["windows"] = windows.config()
            self._state = self._run.state
        else:
            self._sampler = (wlmd.WLMD(evaluate, self._landscape, bound, self.md_config) if self.sampler == "md" else
                             wlmc.WLMC(evaluate, self._landscape, bound, self.mc_config))
            self._state = self._sampler.init(theta0, seed=self.seed + 1)
        self._last_accepted = self._state.accepted.clone()
        x_lo, x_hi = (float(v) for v in self._landscape.window[0])
        x_range = (max(x_lo, ranges[0][0]), min(x_hi, ranges[0][1]))
        if not x_range[1] > x_range[0]:  # the window misses the grid: round trips across the grid instead
            x_range = tuple(ranges[0])
        self._round_trips = round_trips.init(self.walkers, x_range, device=device)
        self._snapshot_interval = self._interval(trainer)
        self._next_snapshot = self._snapshot_interval
        if self._pending:  # an empty state: a checkpoint written before the walkers existed
            self._restore(self._pending)
        self._pending = None
        self.say_forecast(trainer, measured=False)  # a clear shortfall is said before sampling starts

    def _grid(self, variables, ranges) -> tuple[list[tuple[float, float]], list[int]]:
        """Checked ranges and bins of the grid: whole bins of the bin width from each range's low end."""
        if len(ranges) != len(variables):
            raise ValueError(f"ranges={self._ranges!r} gives {len(ranges)} axes for the variables"
                             f" {[v.name for v in variables]}.")
        widths = self._bin_widths(variables, ranges)
        check_grid(ranges, widths)
        bins = [max(2, int(math.ceil((hi - lo) / w - 1e-9))) for (lo, hi), w in zip(ranges, widths)]
        return [(lo, lo + n * w) for (lo, _), n, w in zip(ranges, bins, widths)], bins

    def _resumed_grid(self, saved, resume, variables) -> tuple[list[tuple[float, float]], list[int]]:
        """The checkpoint's grid (never found again from the restored weights, which are walker 0's); explicit
        ``variables``, ``ranges`` or ``bin_width`` that ask for another grid are refused."""
        grid = (saved or {}).get("grid")
        if grid is None:  # a checkpoint from before setup records: its landscape's geometry
            land = resume["run"]["landscape"] if "run" in resume else resume["landscape"]
            cfg = land["config"]
            grid = {"names": list(cfg["names"]), "ranges": [list(r) for r in cfg["ranges"]], "bins": list(cfg["bins"]),
                    "widths": [(hi - lo) / n for (lo, hi), n in zip(cfg["ranges"], cfg["bins"])]}
        names = [v.name for v in variables]
        mismatch = fingerprint.ResumeMismatch
        if list(grid["names"]) != names:
            raise mismatch(f"The checkpoint's grid has the axes {list(grid['names'])}; this run samples {names}: resume"
                           f" with the same variables and grid, {fingerprint._NEW_RUN}.")
        ranges = [(float(lo), float(hi)) for lo, hi in grid["ranges"]]
        if self._ranges is not None:
            asked, bins = self._grid(variables, self._ranges)
            mine = {"names": names, "ranges": asked, "bins": bins, "widths": self._bin_widths(variables, asked)}
            if not fingerprint.same_grid(grid, mine):
                raise mismatch(f"The checkpoint's grid is {fingerprint.grid_text(grid)}; this run asks for"
                               f" ranges={self._ranges} ({fingerprint.grid_text(mine)}). Resume without `ranges` (the"
                               " checkpoint's grid is reused) or with the checkpoint's ranges, or start a new run.")
        elif self._bin_width is not None:
            widths = self._bin_widths(variables, ranges)
            if not all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(widths, grid["widths"])):
                raise mismatch(f"The checkpoint's grid is {fingerprint.grid_text(grid)}; this run asks for"
                               f" bin_width={self._bin_width}. Resume without `bin_width` or with the checkpoint's"
                               " widths, or start a new run.")
        return ranges, [int(n) for n in grid["bins"]]

    def _resumed_walkers(self, state: dict[str, Any]) -> torch.Tensor:
        """The checkpoint's walkers ``(W, P)``: a resume starts from them (no start phase runs again)."""
        return (state["run"]["state"] if "run" in state else state["state"])["theta"]

    def _setup_record(self, landscape) -> dict[str, Any]:
        module, data = self._module_data
        return fingerprint.record(landscape=landscape, box=self.box, layout=self._layout, bound=self._bound,
                                  module=module, data=data)

    def _metric_names(self, contract) -> tuple:
        """The variables, with ``"test_metric"`` replaced by the module's own held-out metric (test accuracy for a
        classifier, ln test loss otherwise: the second of :meth:`ModuleContract.default_variables`)."""
        default = contract.default_variables()
        if self._variables is None:
            return default
        if "test_metric" not in self._variables:
            return self._variables
        if len(default) < 2:
            raise ValueError(
                f"variables={self._variables!r}: 'test_metric' is the held-out metric, but there is none (no"
                f" {'val' if self.heldout == 'val' else 'test'} data, or a validation_step that returns no loss and"
                " logs no value). Sample variables=('train_loss',), or give the module held-out data."
            )
        return tuple(default[1] if v == "test_metric" else v for v in self._variables)

    def _start(self, trainer, module_theta: torch.Tensor, bound: torch.Tensor, gen: torch.Generator,
               gradient) -> torch.Tensor:
        """The walkers' starting points; optimiser starts take at most ``start_budget`` of the time left of
        ``max_time`` (shortened with a warning when they would take more)."""
        left = budget.remaining(trainer)
        allowed = None if left is None else max(0.0, left) * self.start_budget
        theta0, report = start_walkers(self.start, walkers=self.walkers, bound=bound, generator=gen,
                                       module_theta=module_theta, train_loss_gradient=gradient,
                                       steps=self.start_steps, lr=self.start_lr, time_budget=allowed)
        self.start_report = report
        if report.shortened:
            warnings.warn(
                f"start={self.start!r}: {report.requested} optimiser steps of {self.walkers} walkers would take about"
                f" {report.requested * report.seconds_per_step:.0f} s, more than start_budget={self.start_budget:g} of"
                f" the {left:.0f} s left of max_time; they ran {report.ran} steps ({report.seconds:.0f} s). Raise"
                " max_time or start_budget, or lower start_steps or walkers, for the full start.",
                stacklevel=2,
            )
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

    def _admit(self, theta0: torch.Tensor, cv: torch.Tensor, ranges) -> torch.Tensor:
        """Replace walkers that start outside the grid (or at a NaN/inf loss) by copies of walkers inside it (``cv``:
        their CVs)."""
        inside = self._landscape.inside(cv)
        if bool(inside.all()):
            return theta0
        if not bool(inside.any()):
            raise ValueError(
                f"All {self.walkers} walkers start outside the grid ranges {ranges} or at a non-finite loss (CVs:"
                f" {cv[:4].tolist()}...). Widen `ranges` (or leave it unset), or choose another `start`."
            )
        good = torch.nonzero(inside).squeeze(1)
        bad = torch.nonzero(~inside).squeeze(1)
        warnings.warn(
            f"{len(bad)} of {self.walkers} walkers started outside the grid or at a non-finite loss; they start as"
            " copies of walkers inside it (their velocities and moves still differ).",
            stacklevel=2,
        )
        theta0 = theta0.clone()
        theta0[bad] = theta0[good[torch.arange(len(bad), device=good.device) % len(good)]]
        return theta0

    def _auto_ranges(self, variables, evaluate, theta0, bound, gen, *, start_values: torch.Tensor | None = None,
                     time_left: float | None = None) -> list[tuple[float, float]]:
        """Grid ranges from the starting walkers and :data:`RANGE_PROBE` random box points. With a time cap, a probe
        that would take more than :data:`RANGE_PROBE_SHARE` of the time left uses fewer points (at least
        :data:`RANGE_PROBE_MIN`), with a warning."""
        points = RANGE_PROBE
        per_point = getattr(self, "_probe_seconds", None)
        if time_left is not None and per_point and start_values is not None:
            affordable = int(RANGE_PROBE_SHARE * max(0.0, time_left) / per_point)
            points = max(RANGE_PROBE_MIN, min(RANGE_PROBE, affordable))
        with torch.no_grad():
            if points == RANGE_PROBE:  # the usual probe, evaluated exactly as always
                probe = torch.cat([theta0, uniform(RANGE_PROBE, bound, gen)])
                values = torch.cat([evaluate(probe[i : i + 64]).values for i in range(0, len(probe), 64)])
            else:
                warnings.warn(
                    f"The grid's ranges come from {points} random box points instead of {RANGE_PROBE}: evaluating"
                    f" {RANGE_PROBE} would take about {RANGE_PROBE * per_point:.0f} s of the {time_left:.0f} s left of"
                    " max_time. Give `ranges` (sampler.ranges) to skip the probe.", stacklevel=2)
                probe = uniform(points, bound, gen)
                values = torch.cat([start_values] + [evaluate(probe[i : i + 8]).values
                                                     for i in range(0, len(probe), 8)])
        ranges = []
        for k, cv in enumerate(variables):
            col = values[:, k][torch.isfinite(values[:, k])]
            if col.numel() == 0:
                raise ValueError(
                    f"Collective variable {cv.name!r} is not finite at any starting walker or random box point; check"
                    " the loss and the data (NaN inputs?), or pass `ranges` explicitly."
                )
            lo, hi = float(col.min()), float(col.max())
            if "accuracy" in cv.name and "logit" not in cv.label:
                half = 0.5 / 40
                ranges.append((-half, 1 + half))
            elif "accuracy" in cv.name:
                ranges.append((-9.5, 9.5))
            elif cv.name == "ln_train_loss":
                ranges.append((lo - self.range_margin, hi + 0.5))
            elif cv.name == "ln_test_loss":
                ranges.append((lo - self.range_margin, hi + self.range_margin))
            else:
                pad = 0.5 * (hi - lo) + 1e-3
                ranges.append((lo - pad, hi + pad))
        return ranges

    def _bin_widths(self, variables, ranges) -> list[float]:
        if self._bin_width is not None:
            widths = [self._bin_width] * len(variables) if np.isscalar(self._bin_width) else list(self._bin_width)
            if len(widths) != len(variables) or not all(w > 0 for w in widths):
                raise ValueError(f"bin_width={self._bin_width!r}: give one positive width per axis ({len(variables)}).")
            return [float(w) for w in widths]
        out = []
        for cv, (lo, hi) in zip(variables, ranges):
            if cv.name.startswith("ln_"):
                out.append(0.1)
            elif "accuracy" in cv.name:
                out.append(0.25 if "logit" in cv.label else 1 / 40)
            else:
                out.append((hi - lo) / 50)
        return out

    def _metadata(self, module, layout, variables, evaluate) -> dict[str, Any]:
        uses_test = any(v.split == "test" for v in variables)
        return {
            "model": type(module).__name__,
            "parameters": layout.numel,
            "box": self.box.describe(),
            "sampler": self.sampler,
            "integrator": (
                {"dt": self.md_config.dt, "friction": self.md_config.friction, "metropolis": self.md_config.metropolis,
                 "mass": self.md_config.mass}
                if self.sampler == "md" else
                {"step_size": self.mc_config.step_size, "adapt_steps": self.mc_config.adapt_steps}
            ),
            "schedule": (self.schedule.describe() if self.fill == "step" else
                         {"name": "per_visit_halving_one_over_t", "log_f0": self.log_f0}),
            "fill": self.fill,
            "replicas": self.replicas if self.fill == "visit" else 1,
            "production": self.production if self.fill == "visit" else 0.0,
            "walkers": self.walkers,
            "seed": self.seed,
            "start": self.start,
            "variables": [v.name for v in variables],
            "test_labels_in_dynamics": uses_test,
            "vectorized": evaluate.vectorized,
            "versions": {"lightning_entropy": __version__, "torch": str(torch.__version__),
                         "lightning": str(lightning.__version__)},
        }

    def run_chunk(self, steps: int) -> None:
        """Run ``steps`` sampler steps on every walker, update the schedule, log, and copy walker 0 into the module."""
        if self._state is None:
            self._prepare(self.lightning_module.trainer)
        if self._run is not None:
            self._run_windows(steps)
            return
        self._state, self._schedule_state = loop.run(
            self._sampler, self._state, steps, schedule=self.schedule, schedule_state=self._schedule_state,
            observe_every=self.observe_every, round_trips=self._round_trips, threads=self._threads,
        )
        self._layout.load_into(self.lightning_module, self._state.theta[0])
        if self._state.step >= self._next_snapshot:
            self.snapshot()
        self._log_progress(steps)

    def _run_windows(self, steps: int) -> None:
        """A chunk of the replica-exchange run; freezes the bias once the production fraction of the run is left."""
        info = self._run.chunk(steps)
        self._state = self._run.state
        if not self._run.frozen and self.production > 0 and self._progress() >= 1 - self.production:
            self._run.freeze()
        self._layout.load_into(self.lightning_module, self._state.theta[0])
        if self._state.step >= self._next_snapshot:
            self.snapshot()
        self._log_progress(steps, info)

    def _progress(self) -> float:
        """Fraction of the run done: of the Trainer's steps, or of ``max_time``, whichever is further."""
        trainer = self.lightning_module.trainer
        done = 0.0
        try:
            total = float(trainer.estimated_stepping_batches)
        except Exception:  # no loaders sized yet, or an unsized loader
            total = math.inf
        if math.isfinite(total) and total > 0:
            done = (trainer.global_step + 1) / total
        for callback in trainer.callbacks:
            if isinstance(callback, lightning.pytorch.callbacks.Timer):
                elapsed, remaining = callback.time_elapsed("train"), callback.time_remaining("train")
                if remaining is not None and elapsed + remaining > 0:
                    done = max(done, elapsed / (elapsed + remaining))
        return done

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

    def _interval(self, trainer: lightning.pytorch.Trainer) -> int:
        """Sampler steps between snapshots, a multiple of the chunk length."""
        chunk = self.steps_per_lightning_step
        if self.snapshot_every is not None:
            return max(chunk, int(math.ceil(self.snapshot_every / chunk)) * chunk)
        max_steps = int(getattr(trainer, "max_steps", -1) or -1)
        total = max_steps * chunk if max_steps > 0 else 100 * chunk
        return max(chunk, (total // 20) // chunk * chunk)

    def snapshot(self) -> dict[str, float]:
        """Record a convergence snapshot now (S change since the last one, flatness, round trips); see
        :meth:`Landscape.snapshot`. Called by the strategy every ``snapshot_every`` sampler steps."""
        if self._run is not None:
            entry = self._run.snapshot()
            self._next_snapshot = self._state.step + self._snapshot_interval
            return entry
        trips, walkers_with_trip = self._round_trip_counts()
        entry = self._landscape.snapshot(self._state.step, round_trips=trips, walkers_with_round_trip=walkers_with_trip)
        self._next_snapshot = self._state.step + self._snapshot_interval
        return entry

    def _round_trip_counts(self) -> tuple[float, float]:
        """Round trips of all walkers, and how many walkers made at least one."""
        trips = self._round_trips.round_trips
        return float(trips.sum()), float((trips > 0).sum())

    @property
    def round_trips(self) -> np.ndarray:
        """Completed round trips per walker across the x range (ends: the lowest and highest tenth)."""
        if self._round_trips is None:
            raise RuntimeError("The walkers do not exist before trainer.fit starts.")
        if self._run is not None:
            return self._run.window_trips.round_trips.cpu().numpy()
        return self._round_trips.round_trips.cpu().numpy()

    def _log_progress(self, steps: int, info: dict[str, float] | None = None) -> None:
        state, landscape = self._state, self._landscape
        accepted = (state.accepted - self._last_accepted).sum() / (steps * self.walkers)
        self._last_accepted = state.accepted.clone()
        x = state.cv[:, 0]
        if info is not None:
            factor = torch.tensor(info["log_f"])
            flatness = torch.tensor(self._run.windows.flatness())
        else:
            factor = self.schedule.factor(self._schedule_state, torch.tensor(state.step, device=x.device))
            flatness = torch.tensor(landscape.flatness())
        metrics = {
            "wl/factor": factor.float(),
            "wl/flatness": flatness,
            "wl/acceptance": accepted.float(),
            "wl/x_min": x.min().float(),
            "wl/x_max": x.max().float(),
        }
        prog = {"wl/factor", "wl/flatness", "wl/acceptance", "wl/x_min", "wl/x_max"}
        metrics["wl/reverted"] = state.reverted.sum().float()
        metrics["wl/nonfinite"] = state.nonfinite.sum().float()
        metrics["wl/walker_steps"] = torch.tensor(float(landscape.walker_steps))
        if info is not None:
            metrics["wl/exchange_acceptance"] = torch.tensor(info["exchange_acceptance"])
            metrics["wl/production"] = torch.tensor(float(self._run.frozen))
        log_step(self.lightning_module, metrics, prog)

    # -- checkpoints ---------------------------------------------------------------------------------------------------

    def sampler_state_dict(self) -> dict[str, Any]:
        if self._state is None:
            return dict(self._pending or {})
        if self._run is not None:
            return {"kind": self.sampler, "walkers": self.walkers, "fill": "visit", "run": self._run.state_dict(),
                    "last_accepted": self._last_accepted.clone(), "next_snapshot": self._next_snapshot,
                    "setup": self.setup_record}
        return {
            "kind": self.sampler,
            "walkers": self.walkers,
            "setup": self.setup_record,
            "state": self._state.state_dict(),
            "landscape": self._landscape.state_dict(),
            "schedule": {k: v.clone() for k, v in self._schedule_state.items()},
            "last_accepted": self._last_accepted.clone(),
            "round_trips": self._round_trips.state_dict(),
            "next_snapshot": self._next_snapshot,
        }

    @property
    def setup_record(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed: the grid, the box and its half-widths, and a fingerprint of the
        data and model (see :mod:`lightning_entropy.core.fingerprint`); computed once, when first needed."""
        if self._setup is None:
            self._setup = self._setup_record(self._landscape)
        return self._setup

    @property
    def sampler_kind(self) -> str:
        return self.sampler

    def _restore(self, state: dict[str, Any]) -> None:
        device = self.root_device
        if ("run" in state) != (self._run is not None):
            raise fingerprint.ResumeMismatch(
                f"The checkpoint was written with fill={'visit' if 'run' in state else 'step'!r}, this strategy has"
                f" fill={self.fill!r}: resume with the same fill (and replicas, windows)."
            )
        if self._run is not None:
            self._run.load_state_dict(state["run"])
            self._state = self._run.state
            self._last_accepted = state["last_accepted"].to(device)
            self._next_snapshot = int(state["next_snapshot"])
            return
        self._state = self._sampler.state_type.from_state_dict(state["state"], device)
        self._landscape.load_state_dict(state["landscape"])
        self._schedule_state = {k: v.to(device) for k, v in state["schedule"].items()}
        self._last_accepted = state["last_accepted"].to(device)
        if "round_trips" in state:
            self._round_trips = round_trips.RoundTripState.from_state_dict(state["round_trips"], device)
            self._next_snapshot = int(state["next_snapshot"])
