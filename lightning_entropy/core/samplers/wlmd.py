"""Wang-Landau molecular dynamics (WLMD), ALGORITHM.md section 3, vectorized over walkers.

Units: kT = 1. With ``mass="box"`` (default) parameter ``i`` has mass ``1 / b_i**2``, which is the same as running
unit-mass dynamics in box coordinates ``u = θ / b`` in ``[-1, 1]``: ``dt`` is then a fraction of each box half-width
per unit velocity and one default works for any box. ``mass="unit"`` is the reference study's choice (``dt`` in
parameter units, e.g. its per-task constants). Masses change the dynamics, never the sampled distribution.
``friction`` γ is per step. Walkers sample ``p(θ) ∝ exp(-S(cv(θ)))`` inside the box while S fills by deposits.

Two integrators share this module:

- ``metropolis=False`` (the reference study's scheme): ``v += F dt``; Langevin O step
  ``v <- (1-γ) v + sqrt(γ(2-γ)) ξ``; ``θ += v dt``; reflection at the box. Fast, biased by O(dt).
- ``metropolis=True`` (WL-GHMC): O step, one leapfrog step (half kick, drift with reflection, half kick), then a
  Metropolis test on ``S + |v|²/2`` against the current landscape; a rejected walker keeps its position and reverses
  its velocity. Exact for the current bias at any ``dt`` (no time-step bias); same cost per step.

A walker whose CVs leave the grid (the hard wall) or become NaN/inf goes back to its last state with its velocity
reversed and is counted; such states are never deposited. Each step costs one batched forward and backward.
Forces use the landscape as it stood before the previous deposit (one deposit of ``f/W`` nats late), which keeps a
step at one backward pass; the lag vanishes as the factor decays.

Usage (the :class:`~lightning_entropy.core.samplers.base.Sampler` shape: explicit state; ``step`` deposits into
``landscape`` in place)::

    sampler = WLMD(evaluate, landscape, bound, config)
    state = sampler.init(theta0, seed=0)
    for _ in range(n):
        state = sampler.step(state, factor=f)

The integrator pieces :func:`start` (walkers with fresh velocities under a potential) and :func:`move` (one step under a
potential) are shared with restrained MD and the windowed run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from lightning_entropy.core import nonfinite
from lightning_entropy.core.box import reflect
from lightning_entropy.core.samplers.base import Depositing, WalkerState, removed


@dataclass(frozen=True)
class MDConfig:
    """Integrator constants.

    Attributes:
        dt: time step (box half-widths per unit velocity for ``mass="box"``, parameter units for ``"unit"``).
        friction: Langevin γ, the fraction of velocity replaced by noise per step, in (0, 1].
        metropolis: WL-GHMC (exact for the current bias) instead of plain Langevin.
        mass: ``"box"`` (mass 1/b², scale-free ``dt``) or ``"unit"`` (the reference study's unit masses).
    """

    dt: float = 0.02
    friction: float = 0.01
    metropolis: bool = True
    mass: str = "box"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.dt) and self.dt > 0):
            raise ValueError(f"dt={self.dt!r}: the time step must be positive, e.g. dt=0.005.")
        if not 0 < self.friction <= 1:
            raise ValueError(f"friction={self.friction!r}: γ is a fraction per step in (0, 1], e.g. 0.01.")
        if self.mass not in ("box", "unit"):
            raise ValueError(f"mass={self.mass!r}: use 'box' (mass 1/b², dt in box units) or 'unit'.")

    def scale(self, bound: torch.Tensor) -> torch.Tensor:
        """Per-parameter length scale ``1/sqrt(mass)``: the box bound for ``mass="box"``, ones for ``"unit"``."""
        return bound if self.mass == "box" else torch.ones_like(bound)


@dataclass
class MDState(WalkerState):
    """Everything needed to continue a run exactly. Tensors have a leading walker dimension ``W``; ``state_dict``
    and ``from_state_dict`` come from :class:`~lightning_entropy.core.samplers.base.WalkerState`."""

    theta: torch.Tensor  # (W, P) positions
    velocity: torch.Tensor  # (W, P), in units of the mass scale
    cv: torch.Tensor  # (W, d) collective variables at theta
    bias_grad: torch.Tensor  # (W, P) gradient of the potential in parameter space
    generator: torch.Generator = field(repr=False)
    step: int = 0
    accepted: torch.Tensor | None = None  # (W,) accepted moves (Metropolis) or moves inside the grid (plain)
    reverted: torch.Tensor | None = None  # (W,) moves sent back by the hard wall or a non-finite loss
    nonfinite: torch.Tensor | None = None  # (W,) moves whose CVs were NaN/inf


def start(theta: torch.Tensor, evaluate, potential, *, seed: int) -> MDState:
    """Walkers at ``theta`` (W, P) with velocities drawn from N(0, kT) by a generator seeded with ``seed``, and
    forces from ``potential(cv) -> (value (W,), slope (W, d))``; no move made yet."""
    gen = torch.Generator(device=theta.device)
    gen.manual_seed(seed)
    velocity = torch.randn(theta.shape, generator=gen, device=theta.device, dtype=theta.dtype)
    cv, _, grad = evaluate.value_and_grad(theta, potential)
    zeros = torch.zeros(theta.shape[0], device=theta.device)
    return MDState(theta.detach().clone(), velocity, cv, grad, gen, 0, zeros, zeros.clone(), zeros.clone())


def move(
    state: MDState,
    *,
    evaluate,
    potential,
    admissible,
    bound: torch.Tensor,
    config: MDConfig,
    dt: torch.Tensor | None = None,
    value0: torch.Tensor | None = None,
) -> MDState:
    """One integrator step of every walker under ``potential``, shared by the MD samplers (WLMD, restrained MD)
    and the windowed run.

    ``dt`` ``(W, 1)`` overrides ``config.dt`` per walker (e.g. a time step adapted per window). ``value0`` ``(W,)``
    is the potential at ``state.cv``, when the caller knows it (a potential that has not changed since it was
    evaluated there); by default the Metropolis test evaluates it.

    ``potential(cv) -> (value (W,), slope (W, d))`` is the potential energy (nats, kT = 1) as a function of the CVs
    and its slope; ``state.bias_grad`` must hold its gradient in parameter space at ``state.theta``.
    ``admissible(cv) -> (W,) bool`` says where a walker may go (e.g. inside the grid); a walker that leaves it goes
    back with its velocity reversed. Non-finite CVs are never admissible.
    """
    gamma = config.friction
    dt = config.dt if dt is None else dt
    scale = config.scale(bound)  # velocities live in units of scale; forces are scaled to match
    noise = torch.randn(state.theta.shape, generator=state.generator, device=state.theta.device, dtype=state.theta.dtype)
    force0 = -scale * state.bias_grad
    if config.metropolis:
        v0 = (1 - gamma) * state.velocity + math.sqrt(gamma * (2 - gamma)) * noise
        v = v0 + 0.5 * dt * force0
    else:
        v = (1 - gamma) * (state.velocity + dt * force0) + math.sqrt(gamma * (2 - gamma)) * noise
    theta, v = reflect(state.theta + dt * scale * v, v, bound)
    cv, value1, grad = evaluate.value_and_grad(theta, potential)
    finite = nonfinite.finite(cv).all(-1)
    inside = admissible(cv) & finite
    ok = inside
    if config.metropolis:
        if value0 is None:
            value0, _ = potential(state.cv)
        v = v - 0.5 * dt * scale * grad
        kinetic = 0.5 * ((v - v0) * (v + v0)).sum(-1, dtype=torch.float64)  # K1 - K0, summed in double
        log_u = torch.log(torch.rand(ok.shape, generator=state.generator, device=ok.device, dtype=torch.float64))
        ok = ok & (log_u < value0 - value1 - kinetic)
        back = -v0
    else:
        back = -v
    keep = ok.unsqueeze(-1)
    return MDState(
        theta=torch.where(keep, theta, state.theta),
        velocity=torch.where(keep, v, back),
        cv=torch.where(keep, cv, state.cv),
        bias_grad=torch.where(keep, grad, state.bias_grad),
        generator=state.generator,
        step=state.step + 1,
        accepted=state.accepted + ok,
        reverted=state.reverted + ~inside,
        nonfinite=state.nonfinite + ~finite,
    )


@dataclass(frozen=True, eq=False)
class WLMD(Depositing):
    """Wang-Landau MD as a :class:`~lightning_entropy.core.samplers.base.Sampler`, built from ``evaluate``,
    ``landscape`` and ``bound`` (see :class:`~lightning_entropy.core.samplers.base.Depositing`) and ``config``, the
    integrator constants."""

    config: MDConfig = field(default_factory=MDConfig)
    state_type: ClassVar[type] = MDState

    def init(self, position: torch.Tensor, *, seed: int) -> MDState:
        """Walkers at ``position`` (W, P) with velocities drawn from N(0, kT); forces from the landscape's bias."""
        return start(position, self.evaluate, self.landscape.value_and_slope, seed=seed)

    def step(self, state: MDState, *, factor: torch.Tensor | None = None, observe: bool = False) -> MDState:
        """Advance every walker by one step, then deposit ``factor`` nats (shared by the walkers) into the
        landscape, in place; with ``observe``, also record the observables there (if it has any).

        The force at the current position was computed on the landscape before the previous step's deposit (one
        forward and one backward per step); the Metropolis test itself uses the current landscape.
        """
        landscape = self.landscape
        new = move(state, evaluate=self.evaluate, potential=landscape.value_and_slope, admissible=landscape.inside,
                   bound=self.bound, config=self.config)
        walkers = state.theta.shape[0]
        everyone = torch.ones_like(new.accepted, dtype=torch.bool)
        landscape.deposit(new.cv, factor / walkers, everyone)
        landscape.add_walker_steps(walkers)
        if observe and landscape.observable_names:
            landscape.record(new.cv, self.evaluate.observe(new.theta), everyone)
        return new


__getattr__ = removed(__name__, {
    "init": "WLMD(evaluate, landscape, bound, config).init(theta, seed=...), or start(theta, evaluate, potential,"
            " seed=...)",
    "step": "WLMD(evaluate, landscape, bound, config).step(state, factor=..., observe=...)",
})
