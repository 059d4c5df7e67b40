"""Tabular regression (ALGORITHM.md section 6): a table, a one-hidden-layer ReLU network, MSE.

Data: scikit-learn's bundled diabetes table by default (442 rows, 10 features; no download; rows permuted with
``seed`` because the table is stored in collection order), or any table by ``path``:

- ``.npz``: arrays ``X`` (n, d) and ``y`` (n,) (``target`` names another array instead of ``y``);
- ``.csv``: a header row and numeric columns; ``target`` names the target column (default: the last column).

A file's rows are used in file order. Split: rows ``[0, n_train)`` train and ``[n_train, n_train + n_test)`` test;
``None`` takes a quarter of the rows for each, which is the reference study's split of the house-price table (1,460
rows: rows 0-364 train, 365-729 test). Features and target are standardized with the train split's statistics.
Network ``d -> width -> 1`` (ReLU): 331 -> 10 -> 1 = 3,331 parameters for the house prices.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from lightning_entropy.tasks.common import Regressor, TensorDataModule, standardize


def load_table(path: str | Path | None = None, target: str | None = None, *,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """Features ``(n, d)``, target ``(n,)`` and a short description of the source."""
    if path is None:
        from sklearn.datasets import load_diabetes

        data = load_diabetes()
        order = np.random.default_rng(seed).permutation(len(data.target))
        return data.data[order], data.target[order], "sklearn diabetes"
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"task.path={str(path)!r}: no such file (give an .npz with arrays X, y or a .csv).")
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            key = target or "y"
            missing = [k for k in ("X", key) if k not in z.files]
            if missing:
                raise ValueError(f"task.path={str(path)!r}: the .npz has no array(s) {missing} (it has {z.files}).")
            x, y = np.asarray(z["X"], dtype=np.float64), np.asarray(z[key], dtype=np.float64).reshape(-1)
    elif p.suffix == ".csv":
        with open(p) as fh:
            header = [h.strip() for h in fh.readline().strip().split(",")]
        try:
            with warnings.catch_warnings():  # an empty body is reported below, with the fix
                warnings.simplefilter("ignore", UserWarning)
                table = np.loadtxt(p, delimiter=",", skiprows=1, ndmin=2)
        except ValueError as err:
            raise ValueError(f"task.path={str(path)!r}: columns must be numeric ({err}).") from None
        if table.shape[0] == 0:
            raise ValueError(f"task.path={str(path)!r}: the CSV has a header ({header}) but no data rows; give a table"
                             " with at least one row per split.")
        if table.shape[1] != len(header):
            raise ValueError(f"task.path={str(path)!r}: the header names {len(header)} columns but the rows have"
                             f" {table.shape[1]}; make them agree.")
        name = target if target is not None else header[-1]
        if name not in header:
            raise ValueError(f"task.target={name!r}: not a column of {str(path)!r} (columns: {header}).")
        col = header.index(name)
        y = table[:, col]
        x = np.delete(table, col, axis=1)
    else:
        raise ValueError(f"task.path={str(path)!r}: use an .npz (arrays X, y) or a .csv file.")
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"task.path={str(path)!r}: X has shape {x.shape} but y has {len(y)} rows.")
    if x.shape[1] == 0:
        raise ValueError(f"task.path={str(path)!r}: the table has a target but 0 feature columns, so the network would"
                         " have no inputs; add feature columns (or name another task.target).")
    return x, y, str(p)


class TabularDataModule(TensorDataModule):
    """A table split by rows and standardized with train statistics; full batch by default."""

    def __init__(self, path: str | Path | None = None, target: str | None = None, n_train: int | None = None,
                 n_test: int | None = None, seed: int = 0, batch_size: int | None = None) -> None:
        x, y, self.source = load_table(path, target, seed=seed)
        n = len(y)
        n_train = n // 4 if n_train is None else n_train
        n_test = n // 4 if n_test is None else n_test
        if n_train < 1 or n_test < 1 or n_train + n_test > n:
            raise ValueError(f"task.n_train={n_train}, task.n_test={n_test}: the table {self.source} has {n} rows"
                             " (each split needs >= 1 row, and together at most all rows).")
        xt = torch.as_tensor(x, dtype=torch.float32)
        yt = torch.as_tensor(y, dtype=torch.float32).unsqueeze(1)
        x_train, x_test = standardize(xt[:n_train], xt[n_train:n_train + n_test])
        y_train, y_test = standardize(yt[:n_train], yt[n_train:n_train + n_test])
        self.features = xt.shape[1]
        super().__init__((x_train, y_train), (x_test, y_test), batch_size)


class TabularRegressor(Regressor):
    """ReLU FNN ``features -> width x depth -> 1`` with MSE."""

    def __init__(self, features: int, width: int = 10, depth: int = 1, lr: float = 1e-3) -> None:
        super().__init__(features, width, depth, lr)
