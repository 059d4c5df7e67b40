"""A LightningModule and a LightningDataModule written the way Lightning's docs write them, for the command-line tests
(``model._target_=lit_docs.LitClassifier datamodule._target_=lit_docs.XorData``; ``tests/`` is on ``sys.path``).

No ``loss_fn`` attribute: ``F.cross_entropy`` inline, ``self.log`` in both steps, a ``validation_step`` that only
logs, minibatch loaders, its own ``configure_optimizers`` (the baseline replaces it with ``baseline.optimizer``).
"""

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class LitClassifier(pl.LightningModule):
    def __init__(self, hidden: int = 8, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(dim=1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class XorData(pl.LightningDataModule):
    """Points of the plane labelled by the sign of ``x1 * x2``; ``n_train`` / ``n_val`` of them, minibatches."""

    def __init__(self, n_train: int = 48, n_val: int = 32, batch_size: int = 16, seed: int = 0) -> None:
        super().__init__()
        self.n_train, self.n_val, self.batch_size, self.seed = n_train, n_val, batch_size, seed

    def setup(self, stage=None):
        g = torch.Generator().manual_seed(self.seed)
        x = torch.randn(self.n_train + self.n_val, 2, generator=g)
        y = (x[:, 0] * x[:, 1] > 0).long()
        self.train_set = TensorDataset(x[: self.n_train], y[: self.n_train])
        self.val_set = TensorDataset(x[self.n_train :], y[self.n_train :])

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size)


class NotAModule:
    """Not a LightningModule (the command line must say so)."""
