"""What the command line knows of its tasks without building one: the classes each built-in task names
(:data:`TARGETS`, as its yaml names them), whether a configuration uses them (:func:`builtin_model`,
:func:`builtin_datamodule`), and :class:`Task`, what a task's builder gives the command line.

It sits below the schema's :func:`~lightning_entropy.cli.config.validate`, the registry of builders
(:mod:`lightning_entropy.cli.tasks`) and the classes of one's own (:mod:`lightning_entropy.cli.instantiate`), which
all ask it; it imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:  # the schema's validation asks this module; it need not import Lightning
    import lightning.pytorch as pl


@dataclass
class Task:
    """What a task gives the command line.

    Attributes:
        name: ``task.name``.
        datamodule: the train / held-out split (full batch unless ``task.batch_size`` is set).
        make_model: ``seed -> module``: a fresh model whose initial weights are drawn under ``seed``.
        description: a short JSON-able description for the summary.
    """

    name: str
    datamodule: pl.LightningDataModule
    make_model: Callable[[int], pl.LightningModule]
    description: dict[str, Any]
    classifier: bool | None = True  # None: a module of one's own; the strategy finds its held-out metric


_T = "lightning_entropy.tasks."
#: The classes each built-in task builds: ``(model._target_, datamodule._target_)``, as its yaml names them.
TARGETS: dict[str, tuple[str, str]] = {
    "spiral": (_T + "spiral.SpiralClassifier", _T + "spiral.SpiralDataModule"),
    "spiral_regression": (_T + "spiral_regression.SpiralRegressor",
                          _T + "spiral_regression.SpiralRegressionDataModule"),
    "tabular": (_T + "tabular.TabularRegressor", _T + "tabular.TabularDataModule"),
    "mnist": (_T + "mnist.MNISTClassifier", _T + "mnist.MNISTDataModule"),
    "embeddings": (_T + "embeddings.EmbeddingRegressor", _T + "embeddings.EmbeddingsDataModule"),
    "char_lm": (_T + "char_lm.CharLanguageModel", _T + "char_lm.CharDataModule"),
    "modular_arithmetic": (_T + "modular_arithmetic.ModularArithmeticTransformer",
                           _T + "modular_arithmetic.ModularArithmeticDataModule"),
    "cifar_catdog": (_T + "cifar_catdog.CIFARCatDogClassifier", _T + "cifar_catdog.CIFARCatDogDataModule"),
}


def _builtin(cfg: DictConfig, node: str, index: int) -> bool:
    target = OmegaConf.select(cfg, f"{node}._target_")
    return target is None or target == TARGETS.get(cfg.task.name, (None, None))[index]


def builtin_model(cfg: DictConfig) -> bool:
    """Whether ``model._target_`` is the task's own model (or unset)."""
    return _builtin(cfg, "model", 0)


def builtin_datamodule(cfg: DictConfig) -> bool:
    """Whether ``datamodule._target_`` is the task's own data module (or unset)."""
    return _builtin(cfg, "datamodule", 1)


#: The ``task.name`` of every built-in task, in the registry's order.
TASK_NAMES = tuple(TARGETS)

__all__ = ["TARGETS", "TASK_NAMES", "Task", "builtin_datamodule", "builtin_model"]
