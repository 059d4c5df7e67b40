"""Tasks the command line knows: ``task.name`` -> a builder of the datamodule and the model.

A builder returns one datamodule (the split shared by the sampler and the baseline) and a factory of fresh models
(``seed -> LightningModule``), so that every baseline seed and the sampler use the same model class and size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig


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


def spiral(cfg: DictConfig) -> Task:
    """The two-class spiral and its ReLU classifier (ALGORITHM.md section 6; 3 x 6 = 116 parameters)."""
    from lightning_entropy.tasks.spiral import SpiralClassifier, SpiralDataModule

    t, m = cfg.task, cfg.model
    dm = SpiralDataModule(n_train=t.n_train, n_test=t.n_test, noise=t.noise, seed=t.seed, batch_size=t.batch_size)

    def make_model(seed: int) -> pl.LightningModule:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return SpiralClassifier(width=m.width, depth=m.depth)

    return Task("spiral", dm, make_model, {
        "name": "spiral", "n_train": t.n_train, "n_test": t.n_test, "noise": t.noise, "seed": t.seed,
        "batch_size": t.batch_size,
    })


TASKS: dict[str, Callable[[DictConfig], Task]] = {"spiral": spiral}


def build_task(cfg: DictConfig) -> Task:
    """The task named by ``cfg.task.name``."""
    try:
        builder = TASKS[cfg.task.name]
    except KeyError:
        raise ValueError(f"task.name={cfg.task.name!r}: known tasks are {sorted(TASKS)}.") from None
    return builder(cfg)
