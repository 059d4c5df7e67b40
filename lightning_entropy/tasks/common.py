"""Pieces shared by the tasks: a full-batch datamodule over fixed tensors, the ReLU network builder, the module base
every task's model derives from, and a ReLU-network regressor.

Every task exposes its held-out split through ``val_dataloader`` (the "test" axis of the landscape) and puts its loss in
a ``loss_fn`` attribute, so the Wang-Landau strategy finds it and evaluates all walkers in one vectorized call.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset



def relu_net(inputs: int, width: int, depth: int, outputs: int) -> nn.Sequential:
    """``inputs -> [width] * depth -> outputs`` with ReLU between layers."""
    if width < 1 or depth < 1:
        raise ValueError(f"width={width}, depth={depth}: both must be >= 1.")
    layers: list[nn.Module] = []
    size = inputs
    for _ in range(depth):
        layers += [nn.Linear(size, width), nn.ReLU()]
        size = width
    layers.append(nn.Linear(size, outputs))
    return nn.Sequential(*layers)


class NetModule(pl.LightningModule):
    """A network ``net`` with a standard loss ``loss_fn`` (which the Wang-Landau strategy finds), trained by
    ``optimizer`` (``"adam"`` or ``"sgd"``) at ``lr``. Logs ``train_loss``, ``val_loss`` and, for classifiers,
    ``val_accuracy``. Subclasses build ``net`` and ``loss_fn`` in their ``__init__``.
    """

    optimizer = "adam"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def compute_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``loss_fn(out, y)``; per-position logits ``(N, T, C)`` with targets ``(N, T)`` (a language model) are
        flattened to ``(N T, C)`` and ``(N T,)`` first, which is the mean over all positions that the sampler's
        cross-entropy (:mod:`lightning_entropy.core.variables`, classes on the last axis) computes too."""
        if out.dim() > 2 and isinstance(self.loss_fn, nn.CrossEntropyLoss):
            return self.loss_fn(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        return self.loss_fn(out, y)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.compute_loss(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.log("val_loss", self.compute_loss(out, y))
        if isinstance(self.loss_fn, nn.CrossEntropyLoss):
            self.log("val_accuracy", (out.argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        cls = torch.optim.SGD if self.optimizer == "sgd" else torch.optim.Adam
        return cls(self.parameters(), lr=self.hparams.lr)


class TensorDataModule(pl.LightningDataModule):
    """Fixed train and held-out tensors; full-batch loaders unless ``batch_size`` is given (train set only)."""

    def __init__(self, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                 batch_size: int | None = None) -> None:
        super().__init__()
        for name, (x, y) in (("train", train), ("test", test)):
            if len(x) != len(y):
                raise ValueError(f"{name} split: {len(x)} inputs but {len(y)} targets.")
            if len(x) < 1:
                raise ValueError(f"{name} split is empty.")
        self.train_set = TensorDataset(*train)
        self.test_set = TensorDataset(*test)
        self.n_train, self.n_test = len(train[0]), len(test[0])
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size or self.n_train, shuffle=self.batch_size is not None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.n_test)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


def standardize(train: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Center and scale with the train split's mean and standard deviation (constant columns: scale 1)."""
    mean = train.mean(0)
    std = train.std(0, unbiased=False)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return tuple((t - mean) / std for t in (train, *others))


class Regressor(NetModule):
    """ReLU FNN ``inputs -> width x depth -> 1`` trained with MSE on targets of shape ``(n, 1)``."""

    def __init__(self, inputs: int, width: int = 10, depth: int = 1, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = relu_net(inputs, width, depth, 1)
        self.loss_fn = nn.MSELoss()
