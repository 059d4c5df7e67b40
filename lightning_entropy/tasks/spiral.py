"""The paper's "arithmetic question": a two-class spiral and a small ReLU network (ALGORITHM.md section 6).

Points: radius ``r ~ U(1, 5)``, angle ``2 r + pi * class``, plus N(0, ``noise``) on both coordinates; 40 train and 40
test points by default. The classifier is a ReLU FNN with ``depth`` hidden layers of ``width`` units; the default 3 x
6 has 116 parameters. Both are generated, so the task needs no download.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lightning_entropy.tasks.common import NetModule, TensorDataModule, relu_net  # noqa: F401  (re-exported)


def make_spiral(n: int, *, noise: float = 0.1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points ``(n, 2)`` and labels ``(n,)`` (long), classes alternating."""
    if n < 2:
        raise ValueError(f"n={n}: a spiral needs at least 2 points.")
    g = torch.Generator().manual_seed(seed)
    label = torch.arange(n) % 2
    r = 1 + 4 * torch.rand(n, generator=g)
    angle = 2 * r + math.pi * label
    x = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], dim=1)
    x = x + noise * torch.randn(n, 2, generator=g)
    return x, label


class SpiralDataModule(TensorDataModule):
    """Train and test spirals drawn with different seeds; full-batch loaders by default."""

    def __init__(self, n_train: int = 40, n_test: int = 40, noise: float = 0.1, seed: int = 0,
                 batch_size: int | None = None) -> None:
        for name, value in (("n_train", n_train), ("n_test", n_test)):
            if value < 2:
                raise ValueError(f"{name}={value}: the spiral task needs at least 2 points per split.")
        self.noise, self.seed = noise, seed
        super().__init__(make_spiral(n_train, noise=noise, seed=seed), make_spiral(n_test, noise=noise, seed=seed + 1),
                         batch_size)


class SpiralClassifier(NetModule):
    """ReLU FNN ``2 -> width x depth -> 2`` trained with cross-entropy (Adam, lr 1e-3 by default)."""

    def __init__(self, width: int = 6, depth: int = 3, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = relu_net(2, width, depth, 2)
        self.loss_fn = nn.CrossEntropyLoss()
