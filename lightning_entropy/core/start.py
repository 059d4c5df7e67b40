"""Where walkers start: the module's weights, uniform points of the box, or short SGD/Adam runs (one per walker).

Starting some walkers in the trained region means a study of low train loss does not wait for the bias to fill the
whole loss range first (ALGORITHM.md section 9). The optimiser runs are vectorized: one ``torch.optim`` optimiser on
the stacked ``(W, P)`` tensor is W independent runs, because every walker's loss depends on its own row only.
Walker ``w`` stops after ``round(steps * (w + 1) / W)`` steps, so the walkers spread over train-loss levels. With a
``floor`` (the given low end of the grid's ln L_train range) a walker also stops at its last point above the floor,
so that every walker starts inside a grid whose low end was fixed, each from its own run (instead of being replaced
by a copy of another walker, from another replica).

A time budget (:func:`start_walkers`, ``time_budget``: the seconds the caller can spare, e.g. a share of the
Trainer's ``max_time``) bounds the optimiser runs: after a few steps their cost per step is measured (one host
synchronisation), and when all ``steps`` would not fit, the runs are shortened to the steps that do (the stopping
points are spread over the shorter run, so the walkers still start at many train-loss levels); the report says so.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import torch

from lightning_entropy.core.box import uniform

MODES = ("module", "uniform", "adam", "sgd")


#: Optimiser steps timed before a time budget decides whether the runs fit (their cost per step is then known).
PROBE_STEPS = 3


@dataclass
class StartReport:
    """What the start phase did.

    Attributes:
        mode: the start mode.
        requested: optimiser steps asked for (``0`` for ``module``/``uniform``).
        ran: optimiser steps run (fewer than ``requested`` when the time budget shortened them).
        seconds: wall time of the optimiser runs.
        seconds_per_step: measured cost of one optimiser step of all walkers (``nan`` without optimiser runs).
        budget: the time budget in seconds (``None``: none).
        at_floor: walkers whose run stopped at the floor before its steps were done.
    """

    mode: str
    requested: int = 0
    ran: int = 0
    seconds: float = 0.0
    seconds_per_step: float = math.nan
    budget: float | None = None
    at_floor: int = 0

    @property
    def shortened(self) -> bool:
        return self.ran < self.requested

    def shortfall(self, walkers: int, share: float, left: float) -> str:
        """What a start that its time budget (``share`` of the ``left`` seconds of ``max_time``) shortened says."""
        return (f"start={self.mode!r}: {self.requested} optimiser steps of {walkers} walkers would take about"
                f" {self.requested * self.seconds_per_step:.0f} s, more than start_budget={share:g} of"
                f" the {left:.0f} s left of max_time; they ran {self.ran} steps ({self.seconds:.0f} s). Raise"
                " max_time or start_budget, or lower start_steps or walkers, for the full start.")

    def describe(self) -> dict:
        return {"mode": self.mode, "steps_requested": self.requested, "steps_run": self.ran,
                "seconds": self.seconds, "shortened_by_time": self.shortened, "stopped_at_floor": self.at_floor}


def start_walkers(
    mode: str,
    *,
    walkers: int,
    bound: torch.Tensor,
    generator: torch.Generator,
    module_theta: torch.Tensor,
    train_loss_gradient=None,
    steps: int = 300,
    lr: float = 1e-2,
    time_budget: float | None = None,
    floor: float | None = None,
    train_loss_and_gradient=None,
) -> tuple[torch.Tensor, StartReport]:
    """Initial positions ``(W, P)``, all inside the box, and what the start phase did: ``(theta, report)``.

    Args:
        mode: one of ``MODES``.
        walkers: number of walkers ``W``.
        bound: the box bounds ``(P,)``.
        generator: random source (seeded by the caller).
        module_theta: the module's current flat parameters ``(P,)``.
        train_loss_gradient: ``theta -> (W, P)`` gradient of each walker's ln train loss (optimiser modes).
        steps: optimiser steps of the longest run (``adam``/``sgd``).
        lr: optimiser learning rate (parameter units per step).
        time_budget: seconds (``None``: none) that bound the optimiser runs of ``adam``/``sgd``: after
            :data:`PROBE_STEPS` steps the cost per step is measured; if the remaining steps would not fit, the run
            is shortened to the steps that do (at least the steps already run), and the walkers' stopping steps are
            spread over the shorter run. A run that still overruns (a machine that got busier) stops at the budget.
            A budget that all steps fit in gives exactly the start without one.
        floor: ln train loss (``None``: none) below which no walker's run goes on: a walker stops at its last
            point at or above it (needs ``train_loss_and_gradient``).
        train_loss_and_gradient: ``theta -> ((W,) ln train loss, (W, P) its gradient)``, in place of
            ``train_loss_gradient`` (one forward and backward gives both).
    """
    if mode not in MODES:
        raise ValueError(f"start={mode!r} is not a start mode; use one of {MODES}.")
    if mode == "module":
        theta = module_theta.to(bound).unsqueeze(0).repeat(walkers, 1)
        outside = (theta[0].abs() > bound).sum()
        if int(outside):
            warnings.warn(
                f"{int(outside)} of the module's {theta.shape[1]} parameters lie outside the box; they are clamped to"
                " its walls. Choose a larger box or start='uniform' to avoid moving them.",
                stacklevel=3,
            )
        return torch.maximum(torch.minimum(theta, bound), -bound), StartReport(mode)
    theta = uniform(walkers, bound, generator)
    if mode == "uniform":
        return theta, StartReport(mode)
    if floor is not None and train_loss_and_gradient is None:
        raise ValueError("A start floor needs the train loss: give train_loss_and_gradient.")
    if train_loss_and_gradient is None and train_loss_gradient is not None:
        train_loss_and_gradient = lambda th: (None, train_loss_gradient(th))  # noqa: E731
    if train_loss_and_gradient is None:
        raise ValueError(f"start={mode!r} needs the train loss gradient.")
    if steps < 1 or lr <= 0:
        raise ValueError(f"start={mode!r}: start_steps={steps} must be >= 1 and start_lr={lr} > 0.")
    if time_budget is not None and not time_budget > 0:
        time_budget = 0.0
    report = StartReport(mode, requested=int(steps), budget=time_budget)
    order = torch.arange(1, walkers + 1, device=bound.device)
    stop = torch.round(steps * order / walkers).long()
    leaf = theta.clone().requires_grad_(True)
    opt = torch.optim.Adam([leaf], lr=lr) if mode == "adam" else torch.optim.SGD([leaf], lr=lr, momentum=0.9)
    out = theta.clone()
    # with a floor: the walkers whose run went below it, and each walker's point before the last step (the last
    # point above the floor of a walker found below it now)
    below = torch.zeros(walkers, dtype=torch.bool, device=bound.device)
    stopped = torch.zeros_like(below)  # the walkers whose run stopped at the floor
    before = theta.clone() if floor is not None else None

    def at_floor(values: torch.Tensor, s: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Walkers found below the floor for the first time at the point after ``s`` steps, their run not ended
        before it, go back to their point before it: ``(out, below, stopped)`` updated."""
        first = (values < floor) & ~below & (stop >= s)
        return torch.where(first.unsqueeze(1), before, out), below | (values < floor), stopped | first

    total, started, s = int(steps), time.perf_counter(), 0
    while s < total:
        s += 1
        values, gradient = train_loss_and_gradient(leaf.detach())
        leaf.grad = torch.nan_to_num(gradient)
        if floor is not None:  # the values are at the point after s - 1 steps
            with torch.no_grad():
                out, below, stopped = at_floor(values.detach(), s - 1)
                before.copy_(leaf)  # in place: no allocation per step
        opt.step()
        with torch.no_grad():
            leaf.copy_(torch.maximum(torch.minimum(leaf, bound), -bound))
            out = torch.where(((stop == s) & ~below).unsqueeze(1), leaf, out)
        if time_budget is None or s >= total:
            continue
        elapsed = time.perf_counter() - started
        if elapsed > time_budget:  # over the budget (a slow first step, or a machine that got busier): stop here
            total = s
            out = torch.where(((stop >= s) & ~below).unsqueeze(1), leaf.detach(), out)
        elif s == PROBE_STEPS:  # the cost per step is known: do the remaining steps fit?
            float(leaf.detach()[0, 0])  # one synchronisation, so the host clock measures the device's work
            per_step = (time.perf_counter() - started) / s
            report.seconds_per_step = per_step
            fit = max(s, int(time_budget / per_step)) if per_step > 0 else total
            if fit < total:
                total = fit
                shorter = torch.round(total * order / walkers).long()
                stop = torch.where(shorter == 0, shorter, torch.clamp(shorter, min=s))  # 0: never moves
                out = torch.where(((stop == s) & ~below).unsqueeze(1), leaf.detach(), out)  # their run has ended
    if floor is not None and total:  # the last point's values (one more forward and backward)
        with torch.no_grad():
            out, below, stopped = at_floor(train_loss_and_gradient(leaf.detach())[0].detach(), total)
        report.at_floor = int(stopped.sum())
    report.ran = total
    report.seconds = time.perf_counter() - started
    if math.isnan(report.seconds_per_step) and total:
        report.seconds_per_step = report.seconds / total
    return out.detach(), report
