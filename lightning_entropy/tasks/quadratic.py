"""A family of steep problems whose density of states is known in closed form: quadratic losses.

A linear model ``y = X θ`` (``P`` parameters, no bias) fitted by MSE to zero targets has
``L(θ) = θᵀ A θ`` with ``A = Q diag(a) Qᵀ`` (``X = diag(sqrt(P a)) Qᵀ``, ``Q`` a random rotation, ``a`` log-spaced in
``[a_min, a_max]``). While the ellipsoid ``{L < l}`` lies inside the box ``[-1, 1]^P``, i.e. for ``l <= a_min``, its
volume is ``V(l) ∝ l^(P/2)``, so the entropy of ``x = ln L`` is ``S(x) = (P/2) x + const``: over a 4.5-nat window
at 48 parameters S spans 108 nats. The per-bin log-volume of ``[x_lo, x_hi)`` is exactly
``(P/2) x_lo + ln(exp((P/2)(x_hi - x_lo)) - 1) + const``. Used by the tests and ``benchmarks/convergence.py`` to
measure the samplers against the truth, through the same public API as any other module.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from lightning_entropy.tasks.common import NetModule, TensorDataModule


def quadratic_data(parameters: int = 48, *, a_min: float = 1.0, a_max: float = 4.0,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X, y)``: ``P`` rows whose MSE on a linear model is ``θᵀ A θ`` (eigenvalues in ``[a_min, a_max]``)."""
    if parameters < 1 or not 0 < a_min <= a_max:
        raise ValueError(f"parameters={parameters}, a_min={a_min}, a_max={a_max}: need P >= 1, 0 < a_min <= a_max.")
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(parameters, parameters, generator=g, dtype=torch.float64))
    a = torch.logspace(math.log10(a_min), math.log10(a_max), parameters, dtype=torch.float64)
    x = (torch.diag(torch.sqrt(parameters * a)) @ q.T).to(torch.float32)
    return x, torch.zeros(parameters, 1)


class QuadraticModule(NetModule):
    """The linear model of :func:`quadratic_data` (sample it in the box ``1.0``: every parameter in ``[-1, 1]``)."""

    def __init__(self, parameters: int = 48, lr: float = 1e-2, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        with torch.random.fork_rng(devices=[]):  # the same weights every time (start="module" starts from them)
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(parameters, 1, bias=False))
        self.loss_fn = nn.MSELoss()


def quadratic_datamodule(parameters: int = 48, *, a_min: float = 1.0, a_max: float = 4.0,
                         seed: int = 0) -> TensorDataModule:
    """Train and held-out splits (both the same rows: only the train loss matters here)."""
    x, y = quadratic_data(parameters, a_min=a_min, a_max=a_max, seed=seed)
    return TensorDataModule((x, y), (x, y))


def exact_entropy(edges: np.ndarray, parameters: int, a_min: float = 1.0) -> np.ndarray:
    """Exact S (nats, up to a constant) of the bins ``[edges[i], edges[i+1])`` of ``ln L``; NaN for bins that reach
    above ``ln a_min`` (there the box cuts the ellipsoid and the closed form no longer holds)."""
    edges = np.asarray(edges, dtype=float)
    lo, hi = edges[:-1], edges[1:]
    half = parameters / 2
    s = half * lo + np.log(np.expm1(half * (hi - lo)))
    return np.where(hi <= math.log(a_min) + 1e-9, s, np.nan)
