"""Modular addition with a small transformer (the grokking task; ALGORITHM.md section 8's follow-up work).

Data: every pair ``(a, b)`` with ``0 <= a, b < p`` as the token sequence ``a b =`` (tokens ``0 .. p - 1`` are the
numbers, token ``p`` is ``=``) and the class ``(a + b) mod p``. The ``p^2`` pairs are permuted with ``seed``; the first
``round(train_fraction * p^2)`` train and the rest are held out, so no pair is in both splits. Generated: no download.

Model: :class:`~lightning_entropy.tasks.transformer.TinyTransformer` reading the logits at the ``=`` position,
``(N, p)``, with cross-entropy: an ordinary classifier, so the landscape's axes are ln L_train and the (smoothed for
MD, hard for MC) test accuracy, as for the spiral. Default ``p = 23``, width 16, one block, 2 heads: 4,135 parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_entropy.tasks.common import NetModule, TensorDataModule
from lightning_entropy.tasks.transformer import TinyTransformer


def make_modular_addition(p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``p^2`` sequences ``(a, b, p)`` ``(p^2, 3)`` and their classes ``(a + b) mod p`` ``(p^2,)``, a-major."""
    if p < 2:
        raise ValueError(f"task.modulus={p}: must be >= 2.")
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    x = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    return x, (a + b) % p


class ModularArithmeticDataModule(TensorDataModule):
    """``(a + b) mod p`` on all ``p^2`` pairs, split by ``train_fraction`` after a permutation drawn with ``seed``."""

    def __init__(self, modulus: int = 23, train_fraction: float = 0.5, seed: int = 0,
                 batch_size: int | None = None) -> None:
        if not 0 < train_fraction < 1:
            raise ValueError(f"task.train_fraction={train_fraction}: must be between 0 and 1 (exclusive).")
        x, y = make_modular_addition(modulus)
        total = len(y)
        n_train = round(train_fraction * total)
        if not 1 <= n_train < total:
            raise ValueError(f"task.train_fraction={train_fraction} with task.modulus={modulus} leaves {n_train} of"
                             f" {total} pairs for training: both splits need at least one pair.")
        order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
        self.modulus, self.train_fraction, self.seed = modulus, train_fraction, seed
        self.train_index, self.test_index = order[:n_train], order[n_train:]
        super().__init__((x[self.train_index], y[self.train_index]), (x[self.test_index], y[self.test_index]),
                         batch_size)


class ModularArithmeticTransformer(NetModule):
    """A :class:`TinyTransformer` over ``p + 1`` tokens with ``p`` output classes read at the last position."""

    def __init__(self, modulus: int = 23, width: int = 16, depth: int = 1, heads: int = 2, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = TinyTransformer(modulus + 1, modulus, 3, width, depth, heads, last_only=True)
        self.loss_fn = nn.CrossEntropyLoss()
