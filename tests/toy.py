"""A network small enough to brute-force: 13 parameters (2 -> 3 tanh -> 1) in the box [-1, 1], 12 + 12 points.

Uniform samples of the box give the exact log-volume of every bin (up to a constant), and the exact per-bin
average of the held-out loss (Eq. 1), to test the samplers against.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lightning_entropy.core.box import Box, uniform
from lightning_entropy.core.evaluator import Evaluator, FullBatch
from lightning_entropy.core.landscape import Landscape
from lightning_entropy.core.variables import resolve
from lightning_entropy.core.walkers import ParameterLayout
from lightning_entropy.tasks.common import NetModule, TensorDataModule

BOX = Box.constant(1.0)
RANGES = {"ln_train_loss": (-3.5, 2.3), "ln_test_loss": (-3.5, 2.3)}
WIDTH = 0.1


def toy_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(24, 2, generator=g)
    y = torch.sin(x[:, 0]) * torch.cos(x[:, 1]) + 0.1 * torch.randn(24, generator=g)
    return x, y


def toy_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))


def toy_problem(dims: int, observables: tuple[str, ...] = ()):
    """(net, layout, evaluator, bound) for a 1-D (ln L_train) or 2-D (ln L_train, ln L_test) walk."""
    x, y = toy_data()
    net = toy_net()
    layout = ParameterLayout.of(net)
    data = FullBatch(train=(x[:12], y[:12]), test=(x[12:], y[12:]))
    names = ("train_loss", "test_loss")[:dims]
    variables = [resolve(n, loss="mse") for n in names]
    obs = [resolve(n, loss="mse") for n in observables]
    evaluator = Evaluator(net, layout, data, variables, obs)
    return net, layout, evaluator, BOX.bounds(layout)


def toy_landscape(dims: int, kernel_sigma: float = 1.0, observables: tuple[str, ...] = (), groups: int = 8) -> Landscape:
    names = ("ln_train_loss", "ln_test_loss")[:dims]
    ranges = [RANGES[n] for n in names]
    bins = [int(round((hi - lo) / WIDTH)) for lo, hi in ranges]
    obs = [resolve(n, loss="mse").name for n in observables]
    return Landscape(ranges, bins, names, kernel_sigma=kernel_sigma, observables=obs, groups=groups)


def brute_force(samples: int = 2_000_000, seed: int = 1):
    """Counts of uniform box samples per bin of the toy landscapes (1-D, 2-D), and the per-x-bin mean of ln L_test."""
    _, layout, evaluator, bound = toy_problem(2)
    edges = toy_landscape(2).edges
    gen = torch.Generator().manual_seed(seed)
    counts2 = np.zeros((len(edges[0]) - 1, len(edges[1]) - 1))
    with torch.no_grad():
        for _ in range(samples // 250_000):
            values = evaluator(uniform(250_000, bound, gen)).values.numpy()
            counts2 += np.histogramdd(values, bins=edges)[0]
    counts1 = counts2.sum(axis=1)
    centers_y = 0.5 * (edges[1][1:] + edges[1][:-1])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_test = (counts2 * centers_y).sum(axis=1) / counts1
    return counts1, counts2, mean_test


def rms_error(entropy: np.ndarray, counts: np.ndarray, min_count: int = 2000) -> tuple[float, int]:
    """RMS difference (nats) between a sampled S and the exact log-volume over well-sampled bins, after removing
    the free additive constant."""
    good = (counts >= min_count) & np.isfinite(entropy)
    diff = entropy[good] - np.log(counts[good])
    diff -= diff.mean()
    return float(np.sqrt((diff**2).mean())), int(good.sum())


class ToyModule(NetModule):
    """The toy network as a LightningModule (MSE loss), for the strategies."""

    def __init__(self) -> None:
        super().__init__()
        self.net = toy_net()
        self.loss_fn = nn.MSELoss()


def toy_datamodule() -> TensorDataModule:
    """The toy problem's 12 train and 12 held-out points (full-batch loaders)."""
    x, y = toy_data()
    return TensorDataModule((x[:12], y[:12].unsqueeze(1)), (x[12:], y[12:].unsqueeze(1)))
