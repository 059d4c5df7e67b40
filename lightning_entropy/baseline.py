"""Optimiser baselines recorded exactly like the sampler bins its walkers (ALGORITHM.md section 7).

:class:`BaselineRecorder` is a Lightning ``Callback``: at the end of every training epoch it evaluates the module on
the *whole* train set and the *whole* held-out set (the datamodule's ``val_dataloader``, or ``test_dataloader`` with
``heldout="test"``), without gradients, and keeps one record

    (seed, epoch, ln L_train, test metric, and every other held-out metric that applies)

where the losses and accuracies are computed with the very functions that define the sampler's collective variables
(:mod:`lightning_entropy.core.variables`), with the loss found on the module exactly as the sampler finds it (the
module contract, :func:`lightning_entropy.strategies.contract.inspect_module`: a ``loss_fn``/``criterion``
attribute, or the standard loss ``training_step`` computes of ``forward``, or else ``training_step`` itself), on the
data the fit uses (a datamodule, the module's loaders or the loaders given to ``fit``). A baseline and a landscape
built from the same data and model class therefore share data split, model and metric by construction.

Test metric (``metric="auto"``): hard accuracy for classifiers (a cross-entropy or BCE-with-logits loss, as an
attribute or inline in ``training_step``), ``ln`` of the held-out loss otherwise. A module without a standard loss is
evaluated through its own ``training_step`` (ln L_train) and ``validation_step`` (ln of the loss it returns; NaN if
it returns none), with its ``self.log`` calls captured. Classifier records also hold
``smooth_test_accuracy`` (the differentiable accuracy a Wang-Landau MD landscape uses as its y axis) and
``ln_test_loss``, so the curve drawn over a landscape can use the landscape's own y metric.

:func:`pool` pools records from several seeds into bins of ``ln L_train`` (0.1 wide, or the landscape's own x bin
edges) and returns per-bin mean, standard deviation and count; :func:`save_records` / :func:`load_records` and
:meth:`BaselineCurve.save` write CSV files.

:func:`train_baselines` trains one model per seed with Adam or SGD through a plain Lightning ``Trainer`` and returns
all records; it is what ``lightning-entropy`` runs (in a second process, beside the sampler, by default).
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from lightning_entropy.core.variables import hard_accuracy, loss_fn, smooth_accuracy

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

CLASSIFIER_LOSSES = ("cross_entropy", "binary_cross_entropy")


class BaselineRecorder(Callback):
    """Record ``(ln L_train, test metric)`` of an optimiser run at the end of every training epoch.

    Args:
        seed: a label stored with every record (the seed of the run), so records of several runs can be pooled.
        metric: ``"auto"`` (hard accuracy for classifiers, ln test loss otherwise), ``"hard_test_accuracy"``,
            ``"smooth_test_accuracy"`` or ``"ln_test_loss"``: which column is ``test_metric``.
        accuracy_slope: slope ``k`` of the smoothed accuracy (use the sampler's ``accuracy_slope``).
        heldout: ``"val"`` (the datamodule's ``val_dataloader``, as the sampler's default) or ``"test"``.
        loss: ``"auto"`` (found as the sampler finds it: attribute, inline standard loss, else ``training_step``),
            a loss name or callable, or ``None`` (``training_step`` itself).
        every_n_epochs: record every this many epochs (1: every epoch).

    The data are read once, at ``on_train_start``, from the loaders of the fit (as the sampler reads them) and kept
    as full batches on the module's device. Records are kept as tensors during the run (no host synchronisation per
    epoch) and turned into Python floats by :attr:`records`.
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        metric: str = "auto",
        accuracy_slope: float = 5.0,
        heldout: str = "val",
        loss: Any = "auto",
        every_n_epochs: int = 1,
    ) -> None:
        super().__init__()
        if metric not in ("auto", "hard_test_accuracy", "smooth_test_accuracy", "ln_test_loss"):
            raise ValueError(
                f"metric={metric!r}: use 'auto', 'hard_test_accuracy', 'smooth_test_accuracy' or 'ln_test_loss'."
            )
        from lightning_entropy.strategies.contract import check_heldout  # late: the strategies import Lightning

        check_heldout(heldout)
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs={every_n_epochs!r} must be a positive integer.")
        self.seed = seed
        self.metric = metric
        self.accuracy_slope = float(accuracy_slope)
        self.heldout = heldout
        self.loss = loss
        self.every_n_epochs = every_n_epochs
        self._rows: list[torch.Tensor] = []
        self._epochs: list[int] = []
        self._data: tuple[torch.Tensor | None, ...] | None = None
        self._steps: tuple[Any, Any] | None = None  # (evaluator, layout) of a module without a standard loss
        self._loss: Callable | None = None
        self._classifier = False

    # -- Lightning hooks -----------------------------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from lightning_entropy.strategies.contract import inspect_module  # late: the strategies import Lightning

        was_training = pl_module.training
        try:
            contract = inspect_module(trainer, pl_module, loss=self.loss, heldout=self.heldout,
                                      device=pl_module.device)
        finally:
            pl_module.train(was_training)  # the contract evaluates in eval mode; the optimiser trains as it was
        kind = contract.loss
        self._classifier = isinstance(kind, str) and kind in CLASSIFIER_LOSSES
        if self.metric in ("hard_test_accuracy", "smooth_test_accuracy") and not self._classifier:
            what = repr(kind) if kind is not None else "the loss training_step returns (no standard loss of forward)"
            raise ValueError(f"metric={self.metric!r} is an accuracy, but the module's loss is {what} (not a"
                             " classifier's cross-entropy). Use metric='ln_test_loss' or 'auto'.")
        if kind is None:  # the step path: the module's own training_step / validation_step, for one walker
            names = ["train_loss"] + (["test_loss"] if contract.data.has_heldout and contract.returns_loss("test")
                                      else [])
            self._steps = (contract.evaluator([contract.resolve(n) for n in names], vectorize=False),
                           contract.layout)
            return
        self._loss = loss_fn(kind)
        x, y = contract.data.train
        held = contract.data.test
        self._data = (x, y) + (tuple(held) if held is not None else (None, None))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1  # epochs completed
        if epoch % self.every_n_epochs:
            return
        self._rows.append(self.evaluate(pl_module))
        self._epochs.append(epoch)

    # -- evaluation ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, module: torch.nn.Module) -> torch.Tensor:
        """``[ln L_train, hard acc, smooth acc, ln L_test]`` of ``module`` now (accuracies NaN for non-classifiers;
        ln L_test NaN without a held-out set or, on the step path, when ``validation_step`` returns no loss)."""
        if self._data is None and self._steps is None:
            raise RuntimeError("BaselineRecorder.evaluate runs after on_train_start has read the data.")
        was_training = module.training
        module.eval()
        try:
            if self._steps is not None:
                return self._evaluate_steps(module)
            x, y, xt, yt = self._data
            out = module(x)
            out_t = module(xt) if xt is not None else None
        finally:
            module.train(was_training)
        ln_train = torch.log(self._loss(out, y))
        nan = torch.full_like(ln_train, float("nan"))
        ln_test = torch.log(self._loss(out_t, yt)) if out_t is not None else nan
        if self._classifier and out_t is not None:
            hard = hard_accuracy(out_t, yt)
            smooth = smooth_accuracy(self.accuracy_slope)(out_t, yt)
        else:
            hard = smooth = nan
        return torch.stack([ln_train, hard, smooth, ln_test]).detach().to(torch.float64)

    def _evaluate_steps(self, module: torch.nn.Module) -> torch.Tensor:
        evaluator, layout = self._steps
        values = evaluator(layout.flatten(module).unsqueeze(0)).values[0].detach().to(torch.float64)
        nan = torch.full((), float("nan"), dtype=torch.float64, device=values.device)
        ln_test = values[1] if values.numel() > 1 else nan
        return torch.stack([values[0], nan, nan, ln_test])

    @property
    def test_metric(self) -> str:
        """The column that ``test_metric`` copies (``metric`` with ``"auto"`` resolved)."""
        if self.metric != "auto":
            return self.metric
        return "hard_test_accuracy" if self._classifier else "ln_test_loss"

    @property
    def records(self) -> list[dict[str, float]]:
        """One dict per recorded epoch with the keys of :data:`COLUMNS`."""
        if not self._rows:
            return []
        values = torch.stack(self._rows).cpu().numpy()
        out = []
        for epoch, (ln_train, hard, smooth, ln_test) in zip(self._epochs, values):
            row = {
                "seed": self.seed if self.seed is not None else -1,
                "epoch": epoch,
                "ln_train_loss": float(ln_train),
                "hard_test_accuracy": float(hard),
                "smooth_test_accuracy": float(smooth),
                "ln_test_loss": float(ln_test),
            }
            row["test_metric"] = row[self.test_metric]
            out.append({k: row[k] for k in COLUMNS})
        return out


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


# -- training ---------------------------------------------------------------------------------------------------------


def make_optimizer(name: str, params, *, lr: float, momentum: float = 0.0) -> torch.optim.Optimizer:
    """``"adam"`` or ``"sgd"`` (with ``momentum``) over ``params``."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    raise ValueError(f"optimizer={name!r}: use 'adam' or 'sgd'.")


def train_baselines(
    build: Callable[[int], tuple[pl.LightningDataModule, pl.LightningModule]],
    *,
    seeds: Sequence[int],
    epochs: int,
    optimizer: str = "adam",
    lr: float = 1e-3,
    momentum: float = 0.0,
    metric: str = "auto",
    accuracy_slope: float = 5.0,
    every_n_epochs: int = 1,
    heldout: str = "val",
    accelerator: str = "cpu",
    threads: int | None = None,
    max_time: float | None = None,
) -> list[dict[str, float]]:
    """Train one model per seed and return the records of all of them (see :class:`BaselineRecorder`).

    Args:
        build: ``seed -> (datamodule, module)``; the datamodule must be the sampler's (same split), the module a
            fresh instance of the sampler's model class initialised under ``seed``.
        seeds: one run per seed (the seed sets the initial weights and any batch shuffling).
        epochs: epochs per run (full batch for the default datamodules: one optimiser step per epoch).
        optimizer: ``"adam"`` or ``"sgd"``; ``lr`` and ``momentum`` as in ``torch.optim``.
        metric, accuracy_slope, every_n_epochs, heldout: as in :class:`BaselineRecorder` (use the sampler's
            ``accuracy_slope`` and ``heldout``).
        accelerator: the Lightning accelerator of the runs.
        threads: ``torch.set_num_threads`` during the runs (``None`` leaves it); restored afterwards.
        max_time: seconds for all runs together (``None``: no cap). Each seed gets an equal share of what is left
            when it starts and stops at its share (Lightning's ``max_time``) with the epochs it reached; the records'
            ``epoch`` column shows how far each run got.
    """
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    deadline = time.monotonic() + max_time if max_time is not None else None
    try:
        return _train(build, seeds, epochs, optimizer, lr, momentum, metric, accuracy_slope, every_n_epochs, heldout,
                      accelerator, deadline)
    finally:
        torch.set_num_threads(previous_threads)


def _train(build, seeds, epochs, optimizer, lr, momentum, metric, accuracy_slope, every_n_epochs, heldout,
           accelerator, deadline: float | None = None) -> list[dict[str, float]]:
    records: list[dict[str, float]] = []
    for i, seed in enumerate(seeds):
        share = None
        if deadline is not None:
            share = (deadline - time.monotonic()) / (len(seeds) - i)
            if share <= 0:
                break  # the time is up: the remaining seeds have no records
        _, recorder = train_one(build, int(seed), epochs=epochs, optimizer=optimizer, lr=lr, momentum=momentum,
                                metric=metric, accuracy_slope=accuracy_slope, every_n_epochs=every_n_epochs,
                                heldout=heldout, accelerator=accelerator, max_time=share)
        records.extend(recorder.records)
    return records


def train_one(build: Callable[[int], tuple[pl.LightningDataModule, pl.LightningModule]], seed: int, *, epochs: int,
              optimizer: str = "adam", lr: float = 1e-3, momentum: float = 0.0, metric: str = "auto",
              accuracy_slope: float = 5.0, every_n_epochs: int = 1, heldout: str = "val", accelerator: str = "cpu",
              max_time: float | None = None) -> tuple[pl.LightningModule, BaselineRecorder]:
    """One baseline run of ``seed`` (arguments as in :func:`train_baselines`; ``max_time`` in seconds); returns the
    trained module and its recorder."""
    pl.seed_everything(int(seed), verbose=False)
    datamodule, module = build(int(seed))
    module.configure_optimizers = _optimizer_factory(module, optimizer, lr, momentum)
    recorder = BaselineRecorder(seed=int(seed), metric=metric, accuracy_slope=accuracy_slope,
                                heldout=heldout, every_n_epochs=every_n_epochs)
    trainer = pl.Trainer(
        max_epochs=int(epochs), accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=[recorder], max_time=timedelta(seconds=max_time) if max_time is not None else None,
    )
    trainer.fit(module, datamodule=datamodule)
    datamodule.trainer = None  # the caller's data module keeps no reference to this run (e.g. for pickling)
    return module, recorder


def _optimizer_factory(module: pl.LightningModule, name: str, lr: float, momentum: float):
    make_optimizer(name, [torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=momentum)  # fail early on bad names

    def configure_optimizers():
        return make_optimizer(name, module.parameters(), lr=lr, momentum=momentum)

    return configure_optimizers
