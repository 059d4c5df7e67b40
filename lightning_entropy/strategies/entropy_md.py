"""``EntropyMDStrategy``: molecular dynamics held at a train loss, the training mode of lightning-entropy.

``Trainer(strategy="entropy_md")`` starts from the module's current weights (for example after SGD/Adam), and runs
Langevin MD of ``walkers`` copies of them inside the box under a restraint ``k/2 (ln L_train - target)²`` (the
target defaults to the module's own starting ln L_train). No held-out label enters the dynamics: the walkers drift,
at the same train loss, into the iso-loss region that holds most volume, which the paper finds generalizes better
than where SGD/Adam stop. The held-out metric is only observed, every ``observe_every`` MD steps, into
:attr:`~EntropyMDStrategy.trace`.

What the fit leaves behind:

- the module's parameters are one walker's (``select``: the walker closest to the target by default), copied after
  every Lightning step, so checkpoints and ``trainer.validate`` see it;
- :meth:`~EntropyMDStrategy.ensemble` / :meth:`~EntropyMDStrategy.ensemble_predict`: all walkers' averaged
  predictions (mean class probabilities, or mean outputs for regression); :attr:`~EntropyMDStrategy.result` is the
  returned model (the module, or the ensemble with ``select="ensemble"``);
- :attr:`~EntropyMDStrategy.trace`: per observation the MD step and every walker's ln L_train and held-out metric
  (numpy), with means and standard deviations over walkers;
- :attr:`~EntropyMDStrategy.walker_parameters`: the walkers' flat parameters ``(W, P)``.

Checkpoints carry the whole MD state (walkers, velocities, RNG, target, trace); a resumed run continues exactly. They
also carry the box and fingerprints of the data and model (:mod:`lightning_entropy.core.fingerprint`): a resume with
another explicit box, model or data is refused, and ``box=None`` takes the checkpoint's fitted box.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import lightning
import numpy as np
import torch

from lightning_entropy.core import fingerprint, loop
from lightning_entropy.core.box import Box
from lightning_entropy.core.ensemble import EnsembleModule, ensemble_metrics, output_kind
from lightning_entropy.core.samplers import restrained
from lightning_entropy.core.samplers.wlmd import MDConfig
from lightning_entropy.core.walkers import ParameterLayout
from lightning_entropy.strategies.scalars import (RESTRAINT_PROGRESS, latest_heldout, log_step,
                                                 restraint_metrics)
from lightning_entropy.strategies.base import SamplerStrategy
from lightning_entropy.strategies.contract import inspect_module

SELECT = ("closest", "best_train", "first", "ensemble")
HOLD = ("mean", "center")
HOLD_GAIN = 1.0  # the centre moves by this times the walkers' mean offset from the target per adaptation (1: the
#                   step that would be exact if the entropic force did not change with ln L_train)


def _metric_name(cv) -> str:
    """Trace names: the two accuracies share the CV name ``test_accuracy``; the trace tells them apart."""
    if cv.name != "test_accuracy":
        return cv.name
    return "smooth_test_accuracy" if cv.label.startswith("smoothed") else "hard_test_accuracy"


def fitting_box(layout: ParameterLayout, theta: torch.Tensor, *, spare: float = 1.1, smallest: float = 2.0) -> Box:
    """``Box.fan_out(c)`` with the smallest integer ``c >= smallest`` whose bounds exceed ``spare * |theta|``."""
    unit = Box.fan_out(1.0).bounds(layout, device=theta.device, dtype=theta.dtype)
    need = float((spare * theta.abs() / unit).max())
    return Box.fan_out(float(max(smallest, math.ceil(need))))


class EntropyMDStrategy(SamplerStrategy):
    """Hold ln L_train at a target with Langevin MD inside the box; return a high-entropy model.

    Args:
        walkers: number of MD walkers (vectorized), all starting at the module's weights with independent velocities.
        box: the box, as for :class:`~lightning_entropy.WangLandauStrategy` (a positive float, ``"fan_out"``,
            ``"fan_out:3"``, ``"first_hidden"`` or a :class:`~lightning_entropy.Box`). Weights outside it are clamped
            to its walls at the start (with a warning; an error if that moves ln L_train by more than
            ``max_start_shift``). ``None`` (default): ``b = c/sqrt(fan_out)`` with the smallest integer ``c >= 2`` that
            holds the module's weights with 10 % to spare (SGD/Adam often leave the paper's ``c = 2`` box); the box
            used is :attr:`box` after the fit starts.
        seed: seeds the velocities and the Langevin noise. The same seed gives the same trajectory.
        target: the ln L_train (nats of ln loss) the walkers are held at; ``None``: the module's starting value.
        strength: restraint constant ``k`` in 1/nats²; the restraint's width is ``1/sqrt(k)`` nats (1e4: 0.01 nats).
        hold: ``"mean"`` (default): during ``adapt_steps`` the restraint's centre moves so that the walkers' mean
            ln L_train sits at the target (to within the burn-in's lag and the walkers' noise: on a trained spiral
            net at ``k = 10``, 0.14-0.30 nats below it where the centred restraint leaves it 0.47-0.60 above).
            Without it, the walkers settle ``S'(x)/k`` above the centre, where
            ``S'(x) = d ln(volume)/d ln L_train`` is the entropic force: about ``(D/2) L/(L - L0)`` for ``D`` stiff
            directions of a basin whose floor is ``L0``, so largest at a converged endpoint (measured: 0.1 nats for
            the 116-parameter spiral net at ``k = 100``, 0.26 nats for the 6,637-parameter char LM at ``k = 1e4``).
            ``"center"``: the centre stays at the target (the stationary density ``Ω(x) exp(-k (x - target)²/2)``
            as it is). :attr:`center` is the centre in use.
        dt: initial MD time step (box half-widths per unit velocity for ``mass="box"``). A trained module sits in a
            narrow valley: the step that keeps the Metropolis acceptance in 0.6-0.9 is found during ``adapt_steps``.
        adapt_steps: MD steps at the start during which ``dt`` (and, with ``hold="mean"``, the centre) adapts, once
            per Lightning step (0: never). The current step is :attr:`dt`; adaptation stops afterwards (it would
            break detailed balance).
        friction: Langevin γ per step, in (0, 1].
        metropolis: GHMC with a Metropolis test on the restraint energy (no time-step bias).
        mass: ``"box"`` (mass 1/b², scale-free ``dt``) or ``"unit"``.
        steps_per_lightning_step: MD steps per Lightning step.
        observe_every: observe ln L_train and the held-out metric every this many MD steps (no gradient, on device).
        select: which model the module becomes after each Lightning step: ``"closest"`` (the walker whose ln L_train
            is closest to the target), ``"best_train"`` (lowest ln L_train), ``"first"`` (walker 0) or
            ``"ensemble"`` (the module holds the closest walker, :attr:`result` is the ensemble). None uses
            held-out labels.
        metric: the observed held-out metric: ``"auto"`` (hard accuracy for classifiers, ln test loss otherwise),
            any collective-variable name of the held-out split, or ``None`` (observe ln L_train only).
        loss: ``"auto"`` (the module's ``loss_fn``/``criterion``, or the standard loss ``training_step`` computes of
            ``forward``; else its ``training_step``), a loss name, a callable ``loss(outputs, targets)``, or ``None``
            (always ``training_step``); see ``strategies.contract``.
        heldout: ``"val"`` (val_dataloader) or ``"test"`` (test_dataloader): the data the metric is observed on.
        max_start_shift: the largest change of ln L_train (nats) that clamping the module into the box may cause.
        vectorize: ``"auto"`` (vmap when it traces), ``True`` or ``False`` (loop over walkers).
        device: the device; default the Trainer's accelerator device.
    """

    strategy_name = "entropy_md"

    def __init__(
        self,
        *,
        walkers: int = 16,
        box: float | str | Box | None = None,
        seed: int = 0,
        target: float | None = None,
        strength: float = 1e4,
        hold: str = "mean",
        dt: float = 1e-3,
        adapt_steps: int = 2000,
        friction: float = 0.01,
        metropolis: bool = True,
        mass: str = "box",
        steps_per_lightning_step: int = 100,
        observe_every: int = 10,
        select: str = "closest",
        metric: str | None = "auto",
        loss: Any = "auto",
        heldout: str = "val",
        max_start_shift: float = 1.0,
        vectorize: bool | str = "auto",
        device: torch.device | str | None = None,
        accelerator=None,
        checkpoint_io=None,
        precision_plugin=None,
    ) -> None:
        super().__init__(device=device, accelerator=accelerator, checkpoint_io=checkpoint_io,
                         precision_plugin=precision_plugin)
        self._init_sampling(walkers=walkers, steps_per_lightning_step=steps_per_lightning_step,
                            observe_every=observe_every, heldout=heldout, loss=loss, vectorize=vectorize)
        if target is not None and not (isinstance(target, (int, float)) and math.isfinite(target)):
            raise ValueError(
                f"target={target!r}: give a finite ln L_train (e.g. target=-3.0), or target=None to hold the walkers"
                " at the module's starting train loss."
            )
        md = MDConfig(dt=dt, friction=friction, metropolis=metropolis, mass=mass)
        restrained.RestraintConfig(0.0 if target is None else float(target), strength, md)  # validates strength
        if not isinstance(adapt_steps, int) or isinstance(adapt_steps, bool) or adapt_steps < 0:
            raise ValueError(f"adapt_steps={adapt_steps!r} must be an integer >= 0 (MD steps; 0: keep dt fixed).")
        if hold not in HOLD:
            raise ValueError(f"hold={hold!r}: use 'mean' (the walkers' mean ln L_train at the target) or 'center'"
                             " (the restraint centred at the target).")
        if select not in SELECT:
            raise ValueError(f"select={select!r}: use one of {SELECT}.")
        if not (isinstance(max_start_shift, (int, float)) and max_start_shift > 0):
            raise ValueError(f"max_start_shift={max_start_shift!r} must be a positive number of nats.")
        self.box: Box | None = Box.parse(box) if box is not None else None
        self._box_spec = self.box  # None: fitted to the module's weights when the fit starts
        self._setup: dict[str, Any] | None = None
        self._module_data = None
        self.seed = int(seed)
        self._target = None if target is None else float(target)
        self.strength = float(strength)
        self.hold = hold
        self._goal: float | None = None  # the target once known; self._config.target is the restraint's centre
        self.md_config = md
        self.adapt_steps = adapt_steps
        self.select = select
        self._metric = metric
        self.max_start_shift = float(max_start_shift)
        self._config: restrained.RestraintConfig | None = None
        self.start_ln_train_loss: float | None = None

    # -- results ---------------------------------------------------------------------------------------------------

    @property
    def width(self) -> float:
        """The restraint's width ``1/sqrt(strength)`` in nats of ln L_train."""
        return 1.0 / math.sqrt(self.strength)

    @property
    def dt(self) -> float:
        """The current MD time step (adapted during ``adapt_steps``)."""
        return (self._config.md if self._config is not None else self.md_config).dt

    @property
    def target(self) -> float:
        """The ln L_train the walkers are held at (known once the fit has started)."""
        if self._config is None:
            if self._target is not None:
                return self._target
            raise RuntimeError("The target is the module's starting ln L_train: it is known once trainer.fit starts.")
        return self._goal

    @property
    def center(self) -> float:
        """The restraint's centre (nats of ln L_train): the target, moved during ``adapt_steps`` with
        ``hold="mean"`` so that the walkers' mean sits at the target."""
        if self._config is None:
            raise RuntimeError("The restraint's centre is known once trainer.fit starts.")
        return self._config.target

    @property
    def walker_ln_train_loss(self) -> torch.Tensor:
        """Every walker's current ln L_train ``(W,)``."""
        return self._require().md.cv[:, 0]

    @property
    def acceptance(self) -> float:
        """Fraction of MD moves accepted so far (Metropolis test and box/finite-loss checks), over all walkers."""
        state = self._require()
        return float(state.md.accepted.mean()) / max(state.step, 1)

    @property
    def metric_name(self) -> str | None:
        """The observed held-out metric (``hard_test_accuracy``, ``ln_test_loss``, ...), or ``None``."""
        self._require()
        return self._metric_names[0] if self._metric_names else None

    @property
    def trace(self) -> dict[str, np.ndarray]:
        """Observations over MD time (numpy): ``step (n,)``; ``ln_train_loss (n, W)`` with ``ln_train_loss_mean`` and
        ``ln_train_loss_std`` over walkers; the same three for the held-out metric (named by :attr:`metric_name`).
        The first observation is the start (step 0)."""
        return restrained.trace_arrays(self._require(), self._metric_names)

    def ensemble(self) -> EnsembleModule:
        """All walkers as one module whose forward averages their predictions (class probabilities for classifiers,
        outputs for regression). Each call copies the network: keep the result for repeated predictions."""
        state = self._require()
        return EnsembleModule(self.lightning_module, self._layout, state.theta, output_kind(self._loss_kind))

    @torch.no_grad()
    def ensemble_predict(self, x: torch.Tensor) -> torch.Tensor:
        """The walkers' averaged predictions on ``x`` (mean probabilities for classifiers, mean outputs otherwise)."""
        return self.ensemble().to(self.root_device)(x.to(self.root_device))

    @property
    def result(self) -> torch.nn.Module:
        """The returned model: the LightningModule (holding the selected walker), or the ensemble for
        ``select="ensemble"``."""
        return self.ensemble() if self.select == "ensemble" else self.lightning_module

    @torch.no_grad()
    def ensemble_metrics(self) -> dict[str, float]:
        """ln L_train of the ensemble's averaged prediction and its held-out metric (hard accuracy of the mean
        probabilities for classifiers, ln MSE of the mean prediction for ``mse``). Needs a standard loss name."""
        self._require()
        kind = self._loss_kind
        if kind not in ("cross_entropy", "binary_cross_entropy", "mse"):
            raise ValueError(
                f"ensemble_metrics needs a standard loss ('cross_entropy', 'binary_cross_entropy' or 'mse'), but the"
                f" module's loss is {kind!r}. Give the module a loss_fn such as nn.CrossEntropyLoss()."
            )
        return ensemble_metrics(self.ensemble().to(self.root_device), self._evaluator.data, kind)

    # -- starting ---------------------------------------------------------------------------------------------------

    def _prepare(self, trainer: lightning.pytorch.Trainer) -> None:
        module = self.lightning_module
        module.eval()  # deterministic losses: no dropout noise, no batch-norm statistics updates
        device = self.root_device
        contract = inspect_module(trainer, module, loss=self._loss, heldout=self.heldout, device=device)
        loss, layout = contract.loss, contract.layout
        train_cv = contract.resolve("train_loss")
        if self._metric == "auto":
            names = contract.default_observables([train_cv])
        elif self._metric is None:
            names = ()
        else:
            names = (self._metric,)
        observables = [contract.resolve(n, monte_carlo=True) for n in names]
        for cv in observables:
            if cv.split != "test":
                raise ValueError(f"metric={self._metric!r} is not a held-out metric; use e.g. 'test_accuracy'.")
        evaluate = contract.evaluator([train_cv], observables, vectorize=self.vectorize)
        contract.announce(evaluate)
        self._evaluator, self._layout, self._loss_kind = evaluate, layout, loss
        self._metric_names = tuple(_metric_name(o) for o in observables)
        dtype = next(module.parameters()).dtype
        theta_module = layout.flatten(module).to(device=device, dtype=dtype)
        resume = self._pending or None  # a checkpoint's state (restored by Lightning before training starts)
        saved = resume.get("setup") if resume is not None else None
        if resume is not None and self._box_spec is None:  # the box fitted to the first run's module, not to walker
            self.box = Box.parse(resume["box"])          # the checkpoint restored into the module
        elif self._box_spec is None:
            self.box = fitting_box(layout, theta_module)
        self._bound = bound = self.box.bounds(layout, device=device, dtype=dtype)
        self._module_data, self._setup = (module, contract.data), None
        if resume is not None:  # before any work: the same model, data and box
            fingerprint.check(saved, self.setup_record, box=self.box)
            if saved is None:  # a checkpoint from before setup records still names its box
                fingerprint.check_box(resume["box"], [], self.box, [])
        outside = int((theta_module.abs() > bound).sum())
        theta0 = torch.maximum(torch.minimum(theta_module, bound), -bound).unsqueeze(0).repeat(self.walkers, 1)
        with torch.no_grad():
            x_module, x_start = evaluate(torch.stack([theta_module, theta0[0]])).values[:, 0].tolist()
        if not math.isfinite(x_module):
            raise ValueError(
                f"The module's train loss is not finite (ln L_train = {x_module}); entropy_md holds a finite train"
                " loss. Train the module first (or check the data for NaN), then fit with strategy='entropy_md'."
            )
        if not math.isfinite(x_start) or abs(x_start - x_module) > self.max_start_shift:
            raise ValueError(
                f"The module's weights lie far outside the box ({self.box}): clamping them into it moves ln L_train"
                f" from {x_module:.3f} to {x_start:.3f} (more than max_start_shift={self.max_start_shift:g} nats). Choose a"
                f" larger box (e.g. box='{self.box.rule}:{2 * self.box.c:g}'), train the module inside the box, or"
                " raise max_start_shift."
            )
        if outside:
            warnings.warn(
                f"{outside} of the module's {layout.numel} parameters lie outside the box ({self.box}); the walkers"
                f" start with them clamped to its walls (ln L_train {x_module:.4f} -> {x_start:.4f}). Choose a larger"
                " box (or box=None, fitted to the weights) to start exactly at the module.",
                stacklevel=2,
            )
        self.start_ln_train_loss = x_module
        self._goal = target = self._target if self._target is not None else x_module
        self._config = restrained.RestraintConfig(target, self.strength, self.md_config)
        self._state = restrained.observe(self._build_sampler().init(theta0, seed=self.seed + 1), evaluate)
        self._last_accepted = self._state.md.accepted.clone()
        if self._pending is not None:
            self._restore(self._pending)
            self._pending = None

    # -- running ----------------------------------------------------------------------------------------------------

    def run_chunk(self, steps: int) -> None:
        """``steps`` MD steps of every walker, then the selected walker into the module, then the log."""
        if self._state is None:
            self._prepare(self.lightning_module.trainer)
        self._state, _ = loop.run(self._build_sampler(), self._state, steps, observe_every=self.observe_every)
        self._layout.load_into(self.lightning_module, self._state.theta[self._selected()])
        accepted = self._log_progress(steps)
        if self._state.step - steps < self.adapt_steps:
            self._adapt(float(accepted))
            if self._state.step >= self.adapt_steps:
                self._say_if_not_held()

    def on_train_end(self) -> None:
        """A fit that ends inside the burn-in has not been told yet whether the restraint held: say it now."""
        super().on_train_end()
        if self._state is not None and self._state.step < self.adapt_steps:
            self._say_if_not_held()

    def _say_if_not_held(self) -> None:
        """At the end of the burn-in (or of a fit shorter than it): a warning when the walkers' mean ln L_train is more
        than 3 widths off the target (the restraint cannot hold them there: the result is not a model at the target's
        train loss)."""
        x = self._recent_ln_train_loss()
        if not x.numel():
            return
        offset = float(x.mean()) - self._goal
        if abs(offset) > 3 * self.width:
            warnings.warn(
                f"After {self._state.step} MD steps (adapt_steps={self.adapt_steps}) the walkers' mean ln L_train is"
                f" {float(x.mean()):.4f},"
                f" {offset:+.4f} nats ({offset / self.width:+.1f} restraint widths) from target={self._goal:.4f}"
                f" (restraint centre {self.center:.4f}, hold={self.hold!r}): the volume of low loss falls steeply"
                " there (an endpoint at the floor of its basin). Give a larger strength or more adapt_steps, or a"
                " target above the endpoint's train loss.",
                stacklevel=2,
            )

    def _adapt(self, accepted: float) -> None:
        """The burn-in's one adaptation per Lightning step: ``dt`` from the acceptance (Metropolis only) and, with
        ``hold="mean"``, the centre by ``HOLD_GAIN`` times the walkers' mean offset from the target."""
        config = self._config
        if self.md_config.metropolis:
            config = dataclasses.replace(config, md=dataclasses.replace(config.md, dt=restrained.adapt_dt(self.dt,
                                                                                                     accepted)))
        if self.hold == "mean":
            x = self._recent_ln_train_loss()
            if x.numel():
                offset = float(x.mean()) - self._goal
                config = dataclasses.replace(config, target=config.target - HOLD_GAIN * offset)
        self._config = config

    def _recent_ln_train_loss(self) -> torch.Tensor:
        """The finite ln L_train values of the second half of the last chunk's observations, all walkers (the walkers'
        current values when nothing was observed): averaged over steps, the mean is far less noisy than one snapshot."""
        recent = self._state.observed[-1][..., 0, :] if self._state.observed else self._state.md.cv[:, 0]
        if recent.dim() == 2:  # (n, W): the chunk's second half, after most of the response to the last move
            recent = recent[recent.shape[0] // 2:]
        recent = recent.reshape(-1)
        return recent[torch.isfinite(recent)]

    def _build_sampler(self) -> restrained.RestrainedMD:
        """The sampler of the current restraint and time step (``dt`` adapts during ``adapt_steps``)."""
        return restrained.RestrainedMD(self._evaluator, self._bound, self._config)

    def _selected(self) -> torch.Tensor:
        """Index of the walker the module holds (a device tensor: no host synchronisation)."""
        x = self._state.md.cv[:, 0]
        if self.select == "first":
            return torch.zeros((), dtype=torch.long, device=x.device)
        if self.select == "best_train":
            return torch.nan_to_num(x, nan=math.inf).argmin()
        return torch.nan_to_num((x - self._goal).abs(), nan=math.inf).argmin()

    def _log_progress(self, steps: int) -> torch.Tensor:
        accepted = self._acceptance(self._state.md.accepted, steps)
        metrics = restraint_metrics(self._state, self._goal, self.width, self._bound, self.dt, accepted,
                                    heldout=bool(self._metric_names))
        log_step(self.lightning_module, metrics, RESTRAINT_PROGRESS)
        return accepted

    # -- checkpoints ------------------------------------------------------------------------------------------------

    def _sampler_state(self) -> dict[str, Any]:
        return {
            "kind": "entropy_md",
            "walkers": self.walkers,
            "target": self._goal,
            "center": self._config.target,
            "dt": self._config.md.dt,
            "box": self.box.describe(),
            "start_ln_train_loss": self.start_ln_train_loss,
            "state": self._state.state_dict(),
            "last_accepted": self._last_accepted.clone(),
            "setup": self.setup_record,
        }

    @property
    def setup_record(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed: the box and its half-widths, and a fingerprint of the data and
        model (see :mod:`lightning_entropy.core.fingerprint`; no grid: entropy MD has no landscape)."""
        if self._setup is None:
            module, data = self._module_data
            self._setup = fingerprint.record(landscape=None, box=self.box, layout=self._layout, bound=self._bound,
                                             module=module, data=data)
        return self._setup

    @property
    def sampler_kind(self) -> str:
        return "entropy_md"

    def _restore(self, state: dict[str, Any]) -> None:
        device = self.root_device
        if self._target is not None and state["target"] != self._target:
            warnings.warn(f"target={self._target} differs from the checkpoint's {state['target']}; the checkpoint's"
                          " target is used.", stacklevel=2)
        box = Box.parse(state["box"])
        if box != self.box:
            self.box = box  # an automatic box was fitted to the weights of the first run, not to the resumed module
            self._bound = box.bounds(self._layout, device=device, dtype=self._bound.dtype)
        md = dataclasses.replace(self.md_config, dt=float(state["dt"]))
        self._goal = float(state["target"])
        center = float(state.get("center", self._goal))  # checkpoints from before ``hold`` kept the centre there
        self._config = restrained.RestraintConfig(center, self.strength, md)
        self.start_ln_train_loss = state.get("start_ln_train_loss")
        self._state = restrained.RestrainedState.from_state_dict(state["state"], device)
        self._last_accepted = state["last_accepted"].to(device)


__all__ = ["HOLD", "SELECT", "EntropyMDStrategy", "latest_heldout"]
