"""Where walkers start: the module's weights, uniform points of the box, or short SGD/Adam runs (one per walker).

Starting some walkers in the trained region means a study of low train loss does not wait for the bias to fill the
whole loss range first (ALGORITHM.md section 9). The optimiser runs are vectorized: one ``torch.optim`` optimiser on
the stacked ``(W, P)`` tensor is W independent runs, because every walker's loss depends on its own row only.
Walker ``w`` stops after ``round(steps * (w + 1) / W)`` steps, so the walkers spread over train-loss levels.
"""

from __future__ import annotations

import warnings

import torch

from lightning_entropy.core.box import uniform

MODES = ("module", "uniform", "adam", "sgd")


def starting_positions(
    mode: str,
    *,
    walkers: int,
    bound: torch.Tensor,
    generator: torch.Generator,
    module_theta: torch.Tensor,
    train_loss_gradient=None,
    steps: int = 300,
    lr: float = 1e-2,
) -> torch.Tensor:
    """Initial positions ``(W, P)``, all inside the box.

    Args:
        mode: one of ``MODES``.
        walkers: number of walkers ``W``.
        bound: the box bounds ``(P,)``.
        generator: random source (seeded by the caller).
        module_theta: the module's current flat parameters ``(P,)``.
        train_loss_gradient: ``theta -> (W, P)`` gradient of each walker's ln train loss (optimiser modes).
        steps: optimiser steps of the longest run (``adam``/``sgd``).
        lr: optimiser learning rate (parameter units per step).
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
        return torch.maximum(torch.minimum(theta, bound), -bound)
    theta = uniform(walkers, bound, generator)
    if mode == "uniform":
        return theta
    if train_loss_gradient is None:
        raise ValueError(f"start={mode!r} needs the train loss gradient.")
    if steps < 1 or lr <= 0:
        raise ValueError(f"start={mode!r}: start_steps={steps} must be >= 1 and start_lr={lr} > 0.")
    stop = torch.round(steps * torch.arange(1, walkers + 1, device=bound.device) / walkers).long()
    leaf = theta.clone().requires_grad_(True)
    opt = torch.optim.Adam([leaf], lr=lr) if mode == "adam" else torch.optim.SGD([leaf], lr=lr, momentum=0.9)
    out = theta.clone()
    for s in range(1, steps + 1):
        leaf.grad = torch.nan_to_num(train_loss_gradient(leaf.detach()))
        opt.step()
        with torch.no_grad():
            leaf.copy_(torch.maximum(torch.minimum(leaf, bound), -bound))
            done = (stop == s).unsqueeze(1)
            out = torch.where(done, leaf, out)
    return out.detach()
