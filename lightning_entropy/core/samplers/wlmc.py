"""Wang-Landau Monte Carlo (WLMC), ALGORITHM.md section 4, vectorized over walkers.

Each step, every walker picks one parameter ``k`` and proposes ``θ_k + s U(-1, 1)``; a proposal outside the box or
outside the grid is rejected; otherwise it is accepted with ``min(1, exp(S[old bin] - S[new bin]))`` (binned S, as in
classic Wang-Landau). After every trial the walker's current bin receives its share of the factor and one visit.

The step size ``s`` (per walker, in parameter units) adapts during burn-in only: every ``adapt_every`` steps it is
multiplied by 1.1 (capped at ``max_step_size``) when the acceptance was above 70 % and by 0.9 when below 30 %.
Adapting breaks detailed balance, so it stops after ``adapt_steps`` steps, before production.

Usage (the :class:`~lightning_entropy.core.samplers.base.Sampler` shape: explicit state; ``step`` deposits into
``landscape`` in place)::

    sampler = WLMC(evaluate, landscape, bound, MCConfig())
    state = sampler.init(theta0, seed=0)
    for _ in range(n):
        state = sampler.step(state, factor=f)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from lightning_entropy.core.samplers.base import Depositing, WalkerState, removed


@dataclass(frozen=True)
class MCConfig:
    """``step_size`` initial proposal half-width (parameter units); adaptation constants (steps)."""

    step_size: float = 0.1
    max_step_size: float = 0.5
    adapt_every: int = 1000
    adapt_steps: int = 50_000

    def __post_init__(self) -> None:
        if not (math.isfinite(self.step_size) and self.step_size > 0 and self.max_step_size >= self.step_size):
            raise ValueError(
                f"step_size={self.step_size!r}, max_step_size={self.max_step_size!r}: need 0 < step_size <= max_step_size."
            )
        if self.adapt_every < 1 or self.adapt_steps < 0:
            raise ValueError(f"adapt_every={self.adapt_every} must be >= 1 and adapt_steps={self.adapt_steps} >= 0.")


@dataclass
class MCState(WalkerState):
    """The walkers' positions, CVs, step sizes, RNG and counters (leading walker dimension ``W``); ``state_dict``
    and ``from_state_dict`` come from :class:`~lightning_entropy.core.samplers.base.WalkerState`."""

    theta: torch.Tensor  # (W, P)
    cv: torch.Tensor  # (W, d)
    step_size: torch.Tensor  # (W,)
    generator: torch.Generator = field(repr=False)
    step: int = 0
    accepted: torch.Tensor | None = None  # (W,) over the whole run
    window_accepted: torch.Tensor | None = None  # (W,) since the last adaptation
    reverted: torch.Tensor | None = None  # (W,) proposals rejected by the box or the grid
    nonfinite: torch.Tensor | None = None


@dataclass(frozen=True, eq=False)
class WLMC(Depositing):
    """Wang-Landau Monte Carlo as a :class:`~lightning_entropy.core.samplers.base.Sampler`, built from ``evaluate``,
    ``landscape`` and ``bound`` (see :class:`~lightning_entropy.core.samplers.base.Depositing`) and ``config``, the
    proposal and adaptation constants."""

    config: MCConfig = field(default_factory=MCConfig)
    state_type: ClassVar[type] = MCState

    def init(self, position: torch.Tensor, *, seed: int) -> MCState:
        """Walkers at ``position`` (W, P) with the initial step size; ``seed`` seeds the moves."""
        theta = position
        gen = torch.Generator(device=theta.device)
        gen.manual_seed(seed)
        ev = self.evaluate(theta)
        w = theta.shape[0]
        zeros = torch.zeros(w, device=theta.device)
        size = torch.full((w,), self.config.step_size, device=theta.device, dtype=theta.dtype)
        return MCState(theta.detach().clone(), ev.values, size, gen, 0, zeros, zeros.clone(), zeros.clone(),
                       zeros.clone())

    def step(self, state: MCState, *, factor: torch.Tensor | None = None, observe: bool = False) -> MCState:
        """One trial per walker; deposit ``factor`` nats (shared by the walkers) at each walker's bin after the
        trial, into the landscape in place; with ``observe``, also record the observables there (if it has any)."""
        evaluate, landscape, bound, config = self.evaluate, self.landscape, self.bound, self.config
        w, p = state.theta.shape
        gen, dev = state.generator, state.theta.device
        k = torch.randint(p, (w, 1), generator=gen, device=dev)
        u = torch.rand((w, 1), generator=gen, device=dev, dtype=state.theta.dtype)
        delta = state.step_size.unsqueeze(1) * (2 * u - 1)
        proposal = state.theta.scatter_add(1, k, delta)
        in_box = proposal.gather(1, k).abs().squeeze(1) <= bound[k.squeeze(1)]
        ev = evaluate(proposal)
        finite = torch.isfinite(ev.values).all(-1)
        in_grid = landscape.inside(ev.values)
        s_old = landscape.bias.reshape(-1)[landscape.bin_index(state.cv)]
        s_new = landscape.bias.reshape(-1)[landscape.bin_index(torch.where(in_grid.unsqueeze(1), ev.values,
                                                                           state.cv))]
        log_u = torch.log(torch.rand(w, generator=gen, device=dev, dtype=torch.float64))
        ok = in_box & in_grid & (log_u < s_old - s_new)
        keep = ok.unsqueeze(1)
        theta = torch.where(keep, proposal, state.theta)
        cv = torch.where(keep, ev.values, state.cv)
        t = state.step + 1
        window = state.window_accepted + ok
        size = state.step_size
        if t <= config.adapt_steps and t % config.adapt_every == 0:
            rate = window / config.adapt_every
            size = torch.where(rate > 0.7, (size * 1.1).clamp(max=config.max_step_size), size)
            size = torch.where(rate < 0.3, size * 0.9, size)
            window = torch.zeros_like(window)
        landscape.deposit(cv, factor / w, torch.ones_like(ok))
        landscape.add_walker_steps(w)
        if observe and landscape.observable_names:
            landscape.record(cv, evaluate.observe(theta), torch.ones_like(ok))
        return MCState(
            theta=theta,
            cv=cv,
            step_size=size,
            generator=gen,
            step=t,
            accepted=state.accepted + ok,
            window_accepted=window,
            reverted=state.reverted + ~(in_box & in_grid),
            nonfinite=state.nonfinite + ~finite,
        )


__getattr__ = removed(__name__, {
    "init": "WLMC(evaluate, landscape, bound, config).init(theta, seed=...)",
    "step": "WLMC(evaluate, landscape, bound, config).step(state, factor=..., observe=...)",
})
