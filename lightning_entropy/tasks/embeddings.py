"""Regression on precomputed language-model embeddings (ALGORITHM.md section 6: polymer band gap).

Data: an ``.npz`` given by ``path`` with arrays ``X_train`` (n, d), ``y_train`` (n,), ``X_test``, ``y_test``, e.g. the
768-d TransPolymer embeddings of ``../shared/data/polymer_bandgap_embeddings.npz`` (448 / 113 rows, standardized band
gap). Used as stored (the targets are already standardized there); ``n_train`` / ``n_test`` keep the first rows of
each split (``None``: all). Head ``d -> width -> 1`` (ReLU) with MSE: 768 -> 10 -> 1 = 7,701 parameters. The same
head serves the sampler and the baseline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lightning_entropy.tasks.common import Regressor, TensorDataModule

KEYS = ("X_train", "y_train", "X_test", "y_test")


def load_embeddings(path: str | Path | None) -> dict[str, np.ndarray]:
    if path is None or str(path) == "":
        raise ValueError("task.path is not set: the embeddings task needs an .npz with arrays "
                         f"{', '.join(KEYS)} (e.g. task.path=../shared/data/polymer_bandgap_embeddings.npz).")
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"task.path={str(path)!r}: no such file (an .npz with arrays {', '.join(KEYS)}).")
    with np.load(p, allow_pickle=False) as z:
        missing = [k for k in KEYS if k not in z.files]
        if missing:
            raise ValueError(f"task.path={str(path)!r}: the .npz has no array(s) {missing} (it has {z.files}).")
        return {k: np.asarray(z[k]) for k in KEYS}


class EmbeddingsDataModule(TensorDataModule):
    def __init__(self, path: str | Path | None, n_train: int | None = None, n_test: int | None = None,
                 batch_size: int | None = None) -> None:
        arrays = load_embeddings(path)
        self.source = str(path)

        def split(kind: str, n: int | None):
            x = torch.as_tensor(arrays[f"X_{kind}"], dtype=torch.float32)
            y = torch.as_tensor(arrays[f"y_{kind}"], dtype=torch.float32).reshape(-1, 1)
            if x.ndim != 2 or len(x) != len(y):
                raise ValueError(f"task.path={self.source!r}: X_{kind} has shape {tuple(x.shape)}, y_{kind} {len(y)} rows.")
            if n is not None:
                if not 1 <= n <= len(x):
                    raise ValueError(f"task.n_{kind}={n}: the {kind} split of {self.source!r} has {len(x)} rows.")
                x, y = x[:n], y[:n]
            return x, y

        train, test = split("train", n_train), split("test", n_test)
        self.features = train[0].shape[1]
        super().__init__(train, test, batch_size)


class EmbeddingRegressor(Regressor):
    """Regression head ``features -> width x depth -> 1`` (ReLU) with MSE."""

    def __init__(self, features: int = 768, width: int = 10, depth: int = 1, lr: float = 1e-2) -> None:
        super().__init__(features, width, depth, lr)
