"""Optimiser baseline records pooled per ``ln L_train`` bin, and the CSV files of records and curves.

A record is one epoch of one optimiser run, ``{seed, epoch, ln_train_loss, test_metric, ...}`` (:data:`COLUMNS`, as
:class:`~lightning_entropy.baseline.BaselineRecorder` writes them). :func:`pool` bins the records of any number of
seeds by ``ln L_train`` (0.1 wide, or the landscape's own x edges) into a :class:`BaselineCurve` (per-bin mean,
standard deviation, count, seeds and the standard error across seeds); :func:`save_records` / :func:`load_records`
and :meth:`BaselineCurve.save` write and read CSV files.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Columns of every record, in CSV order (metrics a task does not have are NaN).
COLUMNS = (
    "seed",
    "epoch",
    "ln_train_loss",
    "test_metric",
    "hard_test_accuracy",
    "smooth_test_accuracy",
    "ln_test_loss",
)


# -- pooling -------------------------------------------------------------------------------------------------------


@dataclass
class BaselineCurve:
    """Baseline records pooled per ``ln L_train`` bin: arrays of one value per bin (NaN where a bin is empty).

    Attributes:
        edges: bin edges (``len(mean) + 1``), in ``ln L_train`` units (nats of ln loss).
        mean: mean of the metric over the records in each bin.
        std: sample standard deviation (``ddof=1``; NaN with fewer than two records).
        count: number of records in each bin.
        metric: the pooled column.
        dropped: records outside the edges (or with non-finite values) that no bin holds.
        seeds: number of seeds (independent runs) with records in each bin (0 where records carry no seed).
        sem: standard error of the bin's mean across seeds: the spread of the per-seed bin means over
            ``sqrt(seeds)`` (NaN with fewer than two seeds). Epochs of one run are correlated; seeds are not.
    """

    edges: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray
    metric: str
    dropped: int = 0
    seeds: np.ndarray | None = None
    sem: np.ndarray | None = None

    @property
    def centers(self) -> np.ndarray:
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    def save(self, path: str | Path) -> Path:
        """Write ``x_lo, x_hi, x_center, mean, std, count`` per bin as CSV."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["ln_train_loss_lo", "ln_train_loss_hi", "ln_train_loss", f"{self.metric}_mean",
                        f"{self.metric}_std", "count"])
            for lo, hi, c, m, s, n in zip(self.edges[:-1], self.edges[1:], self.centers, self.mean, self.std,
                                          self.count):
                w.writerow([_fmt(lo), _fmt(hi), _fmt(c), _fmt(m), _fmt(s), int(n)])
        return path


def pool(
    records: Iterable[dict[str, float]],
    *,
    metric: str = "test_metric",
    edges: Sequence[float] | np.ndarray | None = None,
    width: float = 0.1,
) -> BaselineCurve:
    """Pool records (of any number of seeds and epochs) into bins of ``ln L_train``.

    Args:
        records: dicts with ``ln_train_loss`` and ``metric`` keys (e.g. :attr:`BaselineRecorder.records`).
        metric: the column to average.
        edges: bin edges, e.g. ``landscape.edges[0]`` so that baseline and landscape share their x bins. Without
            edges, bins are ``width`` wide and aligned to multiples of ``width`` (0.1: ``[-4.0, -3.9)``, ...).
        width: bin width when no edges are given (nats of ln loss).

    Returns:
        A :class:`BaselineCurve` with per-bin mean, standard deviation and count.
    """
    rows = list(records)
    xs = np.array([r["ln_train_loss"] for r in rows], dtype=float)
    ys = np.array([r[metric] for r in rows], dtype=float) if rows else np.zeros(0)
    ok = np.isfinite(xs) & np.isfinite(ys)
    if edges is None:
        if not (math.isfinite(width) and width > 0):
            raise ValueError(f"width={width!r} must be a positive bin width in ln L_train units.")
        if ok.any():
            lo = math.floor(xs[ok].min() / width + 1e-9) * width
            hi = (math.floor(xs[ok].max() / width + 1e-9) + 1) * width
        else:
            lo, hi = 0.0, width
        n = max(1, int(round((hi - lo) / width)))
        edges = lo + width * np.arange(n + 1)
    edges = np.asarray(edges, dtype=float)
    if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0):
        raise ValueError("edges must be an increasing 1-D array of at least two bin edges.")
    idx = np.searchsorted(edges, xs, side="right") - 1
    inside = ok & (idx >= 0) & (idx < edges.size - 1)
    nb = edges.size - 1
    count = np.bincount(idx[inside], minlength=nb).astype(float)
    total = np.bincount(idx[inside], weights=ys[inside], minlength=nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / count, np.nan)
        dev = np.bincount(idx[inside], weights=(ys[inside] - mean[idx[inside]]) ** 2, minlength=nb)
        std = np.where(count > 1, np.sqrt(dev / np.maximum(count - 1, 1)), np.nan)
    seeds, sem = _seed_spread(rows, idx, ys, inside, nb)
    return BaselineCurve(edges, mean, std, count.astype(int), metric, dropped=int(len(rows) - inside.sum()),
                         seeds=seeds, sem=sem)


def _seed_spread(rows: list[dict[str, float]], idx: np.ndarray, ys: np.ndarray, inside: np.ndarray,
                 nb: int) -> tuple[np.ndarray, np.ndarray]:
    """Per bin: how many seeds have records there, and the standard error of the mean across those seeds."""
    seeds = np.zeros(nb, dtype=int)
    sem = np.full(nb, np.nan)
    if not rows or "seed" not in rows[0]:
        return seeds, sem
    seed = np.array([r["seed"] for r in rows], dtype=float)
    names = np.unique(seed[inside])
    per_seed = np.full((names.size, nb), np.nan)
    for i, name in enumerate(names):
        m = inside & (seed == name)
        c = np.bincount(idx[m], minlength=nb)
        t = np.bincount(idx[m], weights=ys[m], minlength=nb)
        per_seed[i] = np.where(c > 0, t / np.maximum(c, 1), np.nan)
    seeds = np.isfinite(per_seed).sum(axis=0)
    for b in np.flatnonzero(seeds > 1):
        v = per_seed[:, b][np.isfinite(per_seed[:, b])]
        sem[b] = v.std(ddof=1) / math.sqrt(v.size)
    return seeds, sem


# -- files ------------------------------------------------------------------------------------------------------------


def _fmt(value: float) -> str:
    return "nan" if not np.isfinite(value) else repr(float(value))


def save_records(records: Iterable[dict[str, float]], path: str | Path) -> Path:
    """Write records as CSV with the columns of :data:`COLUMNS`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # atomic: temp file, then os.replace
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(COLUMNS))
        w.writeheader()
        for r in records:
            w.writerow({k: (r[k] if k in ("seed", "epoch") else _fmt(r[k])) for k in COLUMNS})
    os.replace(tmp, path)
    return path


def load_records(path: str | Path) -> list[dict[str, float]]:
    """Read records written by :func:`save_records`."""
    with open(path, newline="") as fh:
        return [
            {k: (int(v) if k in ("seed", "epoch") else float(v)) for k, v in row.items()} for row in csv.DictReader(fh)
        ]


__all__ = ["COLUMNS", "BaselineCurve", "load_records", "pool", "save_records"]
