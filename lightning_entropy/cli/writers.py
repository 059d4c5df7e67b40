"""The files a run writes besides the landscape's npz and the figures: ``curves.csv``, ``md_trace.csv`` and
``summary.json`` (through :func:`jsonable`, the one conversion of numpy values and NaN to JSON), each written
atomically (:mod:`lightning_entropy.cli.atomic`).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from lightning_entropy.cli.atomic import atomic_open

CURVE_COLUMNS = ("ln_train_loss", "max_s", "max_s_err", "mean_curve", "mean_curve_err", "label_free", "label_free_err",
                 "undersampled", "baseline_mean", "baseline_std", "baseline_sem", "baseline_count", "advantage",
                 "advantage_err", "visits", "in_window", "entropy_r_hat", "readout_r_hat")
INTEGER_COLUMNS = ("baseline_count", "visits", "in_window", "undersampled")


def write_curves(path: Path, x: np.ndarray, columns: dict[str, np.ndarray]) -> Path:
    """``curves.csv``: one row per x bin with the columns of :data:`CURVE_COLUMNS` (NaN for a column not given)."""
    with atomic_open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CURVE_COLUMNS)
        for i, xc in enumerate(x):
            row = [float(xc)] + [float(columns[c][i]) if c in columns else math.nan for c in CURVE_COLUMNS[1:]]
            w.writerow(["nan" if not math.isfinite(v) else (int(v) if c in INTEGER_COLUMNS else repr(v))
                        for c, v in zip(CURVE_COLUMNS, row)])
    return path


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def write_summary(path: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """``summary.json`` of :func:`jsonable` ``summary``; returns what was written."""
    summary = jsonable(summary)
    with atomic_open(path, "w") as fh:
        json.dump(summary, fh, indent=2)
    return summary


def write_trace(path: Path, trace: dict[str, np.ndarray], metric: str | None) -> Path:
    """``md_trace.csv``: per observation the MD step and the walkers' mean and std of ln L_train and the metric."""
    columns = ["ln_train_loss_mean", "ln_train_loss_std"]
    if metric is not None:
        columns += [f"{metric}_mean", f"{metric}_std"]
    with atomic_open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", *columns])
        for i, step in enumerate(trace["step"]):
            w.writerow([int(step), *(repr(float(trace[c][i])) for c in columns)])
    return path
