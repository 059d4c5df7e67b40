"""Spiral regression (ALGORITHM.md section 6): a smooth spiral-shaped scalar field on the square [-5, 5]^2.

Inputs ``X ~ U([-5, 5]^2)``; target ``y = sin(2 r - theta)`` with ``r = |x|`` and ``theta = atan2(x2, x1)``, plus
N(0, ``noise``). The level sets of ``2 r - theta`` are Archimedean spirals, so the ridges of ``y`` are two interleaved
spiral arms; ``y`` is continuous everywhere (``theta`` jumps by 2 pi across the negative x1 axis, which ``sin``
ignores) and bounded in [-1, 1]. ``N = n_points`` points are split in halves: ``N // 2`` train points drawn with
``seed`` and the rest with ``seed + 1``. Network ``2 -> w -> w -> 1`` (ReLU): 1,051 parameters at w = 30 and
1,005,001 at w = 1000; MSE loss. Generated: no download.
"""

from __future__ import annotations

import torch

from lightning_entropy.tasks.common import Regressor, TensorDataModule


def make_spiral_regression(n: int, *, noise: float = 0.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points ``(n, 2)`` uniform on [-5, 5]^2 and targets ``(n, 1)``."""
    if n < 1:
        raise ValueError(f"n={n}: spiral regression needs at least 1 point.")
    g = torch.Generator().manual_seed(seed)
    x = 10 * torch.rand(n, 2, generator=g) - 5
    r = x.norm(dim=1)
    theta = torch.atan2(x[:, 1], x[:, 0])
    y = torch.sin(2 * r - theta)
    if noise > 0:
        y = y + noise * torch.randn(n, generator=g)
    return x, y.unsqueeze(1)


class SpiralRegressionDataModule(TensorDataModule):
    """``n_points`` split in halves (or explicit ``n_train`` / ``n_test``); full batch by default."""

    def __init__(self, n_points: int = 100, n_train: int | None = None, n_test: int | None = None,
                 noise: float = 0.0, seed: int = 0, batch_size: int | None = None) -> None:
        if n_points < 2:
            raise ValueError(f"n_points={n_points}: spiral regression needs at least 2 points (split in halves).")
        n_train = n_points // 2 if n_train is None else n_train
        n_test = n_points - n_points // 2 if n_test is None else n_test
        for name, value in (("n_train", n_train), ("n_test", n_test)):
            if value < 1:
                raise ValueError(f"{name}={value}: spiral regression needs at least 1 point per split.")
        self.noise, self.seed = noise, seed
        super().__init__(make_spiral_regression(n_train, noise=noise, seed=seed),
                         make_spiral_regression(n_test, noise=noise, seed=seed + 1), batch_size)


class SpiralRegressor(Regressor):
    """ReLU FNN ``2 -> width x depth -> 1`` with MSE (Adam, lr 2e-3 as the paper's baseline)."""

    def __init__(self, width: int = 30, depth: int = 2, lr: float = 2e-3) -> None:
        super().__init__(2, width, depth, lr)
