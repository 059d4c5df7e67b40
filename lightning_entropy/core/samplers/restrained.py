"""Molecular dynamics held at a train loss: Langevin MD (or GHMC) inside the box under a harmonic restraint on
``x = ln L_train`` (the paper's MD check at fixed train loss, turned into a training mode).

Potential (nats, kT = 1)::

    U(θ) = k/2 (ln L_train(θ) - target)²        inside the box, +inf outside (reflecting walls)

``k`` (``strength``, in 1/nats²) sets the restraint's width ``1/sqrt(k)`` nats: on a flat volume the walkers'
ln L_train fluctuates by about one width around ``target``. The walkers sample ``p(θ) ∝ exp(-U(θ))``: at (nearly) fixed train
loss every parameter state is equally likely, so they spread over the iso-loss region that holds most volume
(highest entropy). Because the volume grows with the loss (``dS/dx > 0``), the mean of ``x`` sits above ``target`` by
about ``(dS/dx) / k``; a stiffer restraint shrinks that offset.

Only the train CV drives the dynamics. The held-out metric (the evaluator's observables) is observed without
gradient every ``observe_every`` steps into the state's on-device trace, so the trajectory of θ never depends on
held-out labels.

The integrator is WLMD's (:func:`~lightning_entropy.core.samplers.wlmd.move`): box reflection, the Langevin O step,
``mass="box"`` scaling and, with ``metropolis=True`` (default), a Metropolis test on ``U + |v|²/2`` that removes the
time-step bias. Usage (the :class:`~lightning_entropy.core.samplers.base.Sampler` shape over an explicit state; it
deposits into no landscape, ``landscape`` is None; observations go into the state)::

    sampler = RestrainedMD(evaluate, bound, RestraintConfig(target=-3.0, strength=1e4))
    state = observe(sampler.init(theta0, seed=0), evaluate)      # the start as the first observation
    state, _ = loop.run(sampler, state, 1000, observe_every=10)  # lightning_entropy.core.loop
    trace = trace_arrays(state)          # numpy; one host synchronisation
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from lightning_entropy.core.samplers import wlmd
from lightning_entropy.core.samplers.base import removed
from lightning_entropy.core.samplers.wlmd import MDConfig, MDState


@dataclass(frozen=True)
class RestraintConfig:
    """The restraint and the integrator.

    Attributes:
        target: the ln L_train the walkers are held at (nats of ln loss).
        strength: restraint constant ``k`` in 1/nats²; the width of the restraint is ``1/sqrt(k)`` nats.
        md: integrator constants (``dt``, ``friction``, ``metropolis``, ``mass``), as for WLMD.
    """

    target: float
    strength: float = 1e4
    md: MDConfig = field(default_factory=MDConfig)

    def __post_init__(self) -> None:
        if not (isinstance(self.target, (int, float)) and math.isfinite(self.target)):
            raise ValueError(
                f"target={self.target!r}: the ln L_train target must be a finite number (e.g. -3.0), or None in the"
                " strategy to hold the walkers at the module's starting train loss."
            )
        if not (isinstance(self.strength, (int, float)) and math.isfinite(self.strength) and self.strength > 0):
            raise ValueError(
                f"strength={self.strength!r}: the restraint constant k must be a positive number of 1/nats² (its width"
                " is 1/sqrt(k) nats), e.g. strength=1e4 for a width of 0.01 nats."
            )

    @property
    def width(self) -> float:
        """The restraint's width ``1/sqrt(k)`` in nats of ln L_train."""
        return 1.0 / math.sqrt(self.strength)


def potential(config: RestraintConfig):
    """``cv (W, d) -> (U (W,), dU/dcv (W, d))`` for the restraint on the first CV (ln L_train)."""

    def value_and_slope(cv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dx = cv[:, 0] - config.target
        slope = torch.zeros_like(cv)
        slope[:, 0] = config.strength * dx
        return 0.5 * config.strength * dx * dx, slope

    return value_and_slope


def _admissible(cv: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(cv).all(-1)


@dataclass
class RestrainedState:
    """The MD state of the walkers plus the observations made so far (on the device).

    Attributes:
        md: positions, velocities, CVs, forces, RNG and counters (:class:`~wlmd.MDState`).
        observed: the observations so far, ln L_train and the ``k`` observables of every walker: ``(1 + k, W)``
            tensors (one observation) or ``(n, 1 + k, W)`` chunks (:meth:`RestrainedMD.finish` stacks the
            observations of a call into one chunk, so a long run keeps one tensor per call, not one per observation).
            The list is shared by the states a run goes through: an observation appends to it in place.
        observed_steps: the MD step of each observation.
    """

    md: MDState
    observed: list[torch.Tensor] = field(default_factory=list)
    observed_steps: list[int] = field(default_factory=list)

    @property
    def theta(self) -> torch.Tensor:
        return self.md.theta

    @property
    def step(self) -> int:
        return self.md.step

    @property
    def cv(self) -> torch.Tensor:
        return self.md.cv

    def observations(self) -> torch.Tensor | None:
        """All observations as one ``(n, 1 + k, W)`` tensor (``None`` before the first)."""
        if not self.observed:
            return None
        return torch.cat([o if o.dim() == 3 else o.unsqueeze(0) for o in self.observed])

    def state_dict(self) -> dict[str, Any]:
        observed = self.observations()
        return {"md": self.md.state_dict(), "observed": observed, "observed_steps": list(self.observed_steps)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device) -> RestrainedState:
        observed = state["observed"]
        rows = [observed.to(device)] if observed is not None else []
        return cls(MDState.from_state_dict(state["md"], device), rows, list(state["observed_steps"]))


def observe(state: RestrainedState, evaluate) -> RestrainedState:
    """Record ln L_train and the observables (no gradient) of every walker now; no host synchronisation."""
    rows = [state.md.cv[:, :1].T]
    if evaluate.observables:
        rows.append(evaluate.observe(state.md.theta).T.to(state.md.cv.dtype))
    state.observed.append(torch.cat(rows))
    state.observed_steps.append(state.md.step)
    return state


_record = observe  # the step's ``observe`` flag shadows the name


@dataclass(frozen=True, eq=False)
class RestrainedMD:
    """MD under the restraint as a :class:`~lightning_entropy.core.samplers.base.Sampler`: no landscape, no
    deposit (``factor`` is ignored); observations go into the state's trace.

    Args:
        evaluate: the CV evaluator (``value_and_grad`` on the train CV, ``observe`` for the held-out metric).
        bound: ``(P,)`` box half-widths.
        config: the restraint and the integrator.
    """

    evaluate: Any
    bound: torch.Tensor
    config: RestraintConfig
    landscape: ClassVar[None] = None
    state_type: ClassVar[type] = RestrainedState

    def init(self, position: torch.Tensor, *, seed: int) -> RestrainedState:
        """Walkers at ``position`` (W, P) with independent velocities drawn from N(0, kT); nothing observed yet."""
        return RestrainedState(wlmd.start(position, self.evaluate, potential(self.config), seed=seed))

    def step(self, state: RestrainedState, *, factor: torch.Tensor | None = None,
             observe: bool = False) -> RestrainedState:
        """Advance every walker by one MD step under the restraint (one forward and one backward on the train
        set); with ``observe``, append an observation to the state's trace."""
        md = wlmd.move(state.md, evaluate=self.evaluate, potential=potential(self.config), admissible=_admissible,
                       bound=self.bound, config=self.config.md)
        new = RestrainedState(md, state.observed, state.observed_steps)
        return _record(new, self.evaluate) if observe else new

    def finish(self, state: RestrainedState, steps: int) -> RestrainedState:
        """Stack the observations of the last ``steps`` steps into one chunk (a long run keeps one tensor per call,
        not one per observation)."""
        first = state.step - steps
        count = 0
        for t in reversed(state.observed_steps):
            if t <= first:
                break
            count += 1
        if count > 1:
            state.observed[-count:] = [torch.stack(state.observed[-count:])]
        return state


def adapt_dt(dt: float, acceptance: float, *, low: float = 0.6, high: float = 0.9) -> float:
    """A new time step from the Metropolis acceptance of the last steps: smaller below ``low``, larger above
    ``high`` (much smaller when almost nothing is accepted, e.g. a stiff restraint at a sharp minimum).

    Use it during a burn-in only: a time step that keeps changing breaks detailed balance.
    """
    if not (math.isfinite(acceptance) and 0 <= acceptance <= 1):
        raise ValueError(f"acceptance={acceptance!r} must be a fraction in [0, 1].")
    if acceptance < 0.1:
        return dt * 0.25
    if acceptance < low:
        return dt * 0.7
    if acceptance > high:
        return dt * 1.25
    return dt


def trace_arrays(state: RestrainedState, names: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The observations as numpy: ``step (n,)``, ``ln_train_loss (n, W)`` and one ``(n, W)`` array per observable
    (named by ``names``, else ``observable_0``, ...), plus ``<name>_mean`` and ``<name>_std`` over walkers."""
    if not state.observed:
        walkers = state.md.theta.shape[0]
        values = np.zeros((0, 1 + len(names), walkers))
    else:
        values = state.observations().detach().to("cpu", torch.float64).numpy()
    k = values.shape[1] - 1
    labels = ["ln_train_loss"] + [names[i] if i < len(names) else f"observable_{i}" for i in range(k)]
    out: dict[str, np.ndarray] = {"step": np.asarray(state.observed_steps, dtype=np.int64)}
    for i, name in enumerate(labels):
        out[name] = values[:, i, :]
        out[f"{name}_mean"] = values[:, i, :].mean(axis=1) if len(values) else np.zeros(0)
        out[f"{name}_std"] = values[:, i, :].std(axis=1) if len(values) else np.zeros(0)
    return out


__getattr__ = removed(__name__, {
    "init": "RestrainedMD(evaluate, bound, config).init(theta, seed=...)",
    "step": "RestrainedMD(evaluate, bound, config).step(state, observe=...)",
    "run": "lightning_entropy.core.loop.run(RestrainedMD(evaluate, bound, config), state, steps,"
           " observe_every=...)",
})
