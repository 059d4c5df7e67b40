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
:meth:`BaselineCurve.save` write CSV files (all four live in :mod:`lightning_entropy.baseline_curve` and are
importable from here).

:func:`train_baselines` trains one model per seed with Adam or SGD through a plain Lightning ``Trainer`` and returns
all records; it is what ``lightning-entropy`` runs (in a second process, beside the sampler, by default).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_entropy.baseline_curve import COLUMNS, BaselineCurve, load_records, pool, save_records
from lightning_entropy.core.variables import hard_accuracy, loss_fn, smooth_accuracy

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


__all__ = ["CLASSIFIER_LOSSES", "COLUMNS", "BaselineCurve", "BaselineRecorder", "load_records", "make_optimizer",
           "pool", "save_records", "train_baselines", "train_one"]
