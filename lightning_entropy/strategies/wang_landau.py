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

This file is the adapter's face: the arguments, their defaults (the one source of every default; the command line
builds the strategy from its ``sampler`` node) and their units. The work is elsewhere: the Lightning side in
:mod:`lightning_entropy.strategies.sampling` (shared with the DDP strategy) and :mod:`lightning_entropy.strategies.
base`, the grid and the walkers' admission in :mod:`lightning_entropy.core.setup`, the run objects in
:mod:`lightning_entropy.core.run` (``fill="visit"``) and :mod:`lightning_entropy.core.step_run` (``fill="step"``).
"""

from __future__ import annotations


from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from lightning_entropy.core.box import Box
from lightning_entropy.core.setup import SAMPLERS
from lightning_entropy.strategies.base import SamplerStrategy
from lightning_entropy.strategies.sampling import WangLandauSampling

__all__ = ["STATES", "WangLandauStrategy"]

#: The sampler state of each ``sampler`` name, for checkpoints read where no sampler was built.
STATES = {name: kind.state_type for name, kind in SAMPLERS.items()}
#: The arguments that go to the Lightning strategy rather than to the sampler.
LIGHTNING_ARGUMENTS = ("device", "accelerator", "checkpoint_io", "precision_plugin")


class WangLandauStrategy(WangLandauSampling, SamplerStrategy):
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
        ranges: ``(lo, hi)`` per axis in CV units; default: found from the starting walkers and random box points,
            an ln-loss axis starting at a whole multiple of its bin width (so that runs share bin edges). An end
            (or a whole axis) given as ``None`` is found so, the other kept: ``[(-2.4, None)]`` fixes the low end
            of ln L_train, so that networks of several sizes share it, while each finds its own random-network top.
        bin_width: bin width per axis in CV units; default 0.1 for ln-loss axes, 1/40 for accuracies, 0.25 on a
            logit axis, 1/50 of the range otherwise.
        range_margin: when ranges are found automatically, how far (CV units, nats for loss axes) the grid extends
            below the lowest loss seen at the start (and around a test loss). Default: 0.1 with ``fill="visit"``
            (its windows sit on the starts, so the grid holds what the walkers reach; pass ``ranges`` or train
            the start longer to go lower), 2.0 otherwise.
        kernel_sigma: deposit Gaussian width in bins (default 0.5 for MD, 0 (one bin) for MC); wider kernels fill
            faster but blur S where it curves (1 bin gave 0.16 nats RMS against 0.10 for 0.5 bins on the toy 2-D test).
        window: soft-wall window per axis ``(lo, hi)`` in CV units (``None`` for an axis: no wall there); the grid
            edges are always hard walls.
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
        window_placement: where the windows lie (``fill="visit"``). ``"crossing"`` (default): first on the starting
            walkers, then, halfway through the Wang-Landau phase, moved so that every window takes its walkers the
            same time to cross, from their measured diffusion along x (narrow windows where S is steep; each new
            window's bias starts from its replica's S, and takes walkers of its replica that lie near it). On the
            spiral's 1-D walk (116 parameters, 32 windows, 12,000 steps) the production crossings went from about
            0.05 in the lowest window and 0.3-1.5 in the middle ones to 0.1-0.4 and 0.4-5; on the toy and the
            48-parameter quadratic accuracy stayed the same. ``"starts"``: the windows stay where the starts put
            them.
        production: fraction of the run (of the Trainer's steps, or of ``max_time`` when that ends the run first)
            sampled with the bias frozen, for ``fill="visit"``; 0 never freezes. ``None`` (default): 0.6 for a walk
            in one CV, 0.3 in two. The reported S and readouts come from this phase (bias plus ln H), so in 1-D a
            rough bias costs less than a short production: over six seeds each, 0.6 gave 0.040 nats RMS on the
            13-parameter toy (0.3: 0.046) and 0.144 on the 24-parameter quadratic (0.3: 0.197; 0.8: 0.248, with
            errors no longer honest). A 2-D walk has ~20x more bins per window to fill: on the main job 0.6 made
            the readouts' errors 2.6x larger than 0.3 (+0.006 +- 0.021 against +0.044 +- 0.008).
        refine: share of the production phase that first refines the frozen biases (``fill="visit"``): up to 4
            rounds, each adding to every window whose production histogram is tilted by at least 1 nat the fitted
            ln H of that histogram; S, its errors and R-hat come from the production after them. ``None``
            (default): 1/3; 0: none. On the spiral's 1-D walk at 12,000 steps the low-loss windows' biases were
            tilted by 8-10 nats after the Wang-Landau phase, and refining gave them 1.5-2.3x more crossings; at
            48,000-96,000 steps the Wang-Landau phase removes most of the tilt itself and refining cost about as
            much as it gained (docs/PERFORMANCE.md): for long runs ``refine=0`` is as good.
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
        threads: intra-op threads while the sampler runs: a positive int, or ``"auto"``: on a CPU, the faster of
            one thread and torch's setting, timed on the chunks; the other is retried after 16 chunks, then after
            twice as many each time it loses, up to 256 (beside a busy process the threads of a small step wait
            for each other, 10x slower; on a quiet machine two threads made the 256-walker spiral walk 1.2x
            faster). Restored after every chunk. Give an int for a fixed choice (thread counts may change the
            rounding of some kernels).
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
        window_placement: str = "crossing",
        production: float | None = None,
        refine: float | None = None,
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
        given = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        super().__init__(**{k: given.pop(k) for k in LIGHTNING_ARGUMENTS})
        self._init_wang_landau(**given)
