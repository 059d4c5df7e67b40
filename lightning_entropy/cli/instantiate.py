"""Your own model and data from the command line: ``model._target_`` / ``datamodule._target_`` (Hydra ``instantiate``).

    lightning-entropy model._target_=my_pkg.LitClassifier +model.hidden=32                  # on the task's data
    lightning-entropy model._target_=my_pkg.LitClassifier datamodule._target_=my_pkg.MyData  # on your data

The keys of the node besides ``_target_`` are the constructor's arguments. The task's own knobs (``model.width``,
``model.depth``, ``model.heads``, which every task's yaml sets) reach the constructor only if it takes arguments of
those names; any other key it does not take is an error that names it. The class must be importable: installed, or
in the directory the command runs in (the job puts that directory on ``sys.path``, and the baseline process gets the
same path). A model of one's own gets every feature of the built-in tasks: the module contract finds its loss
(:mod:`lightning_entropy.strategies.contract`), the baseline trains it with ``baseline.optimizer`` (its own
``configure_optimizers`` is not used) and records it exactly as the sampler evaluates it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

from lightning_entropy.cli.errors import ConfigError
from lightning_entropy.cli.targets import Task, builtin_datamodule, builtin_model

#: The built-in tasks' model knobs: passed to a model of one's own only if its constructor takes them.
TASK_KNOBS = ("width", "depth", "heads")


def _locate(target: str, key: str) -> type:
    from hydra.utils import get_class

    try:
        return get_class(target)
    except Exception as err:  # noqa: BLE001 - Hydra wraps import errors in its own exceptions
        cause = err.__cause__ or err
        raise ConfigError(
            f"{key}={target!r}: cannot import it ({type(cause).__name__}: {cause}). Give the import path of the class"
            " (package.module.Class), installed or in the directory you run lightning-entropy in."
        ) from None


def _accepts(cls: type, name: str) -> bool:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def constructor_arguments(cfg: DictConfig, node: str, cls: type, *, knobs: tuple[str, ...] = ()) -> tuple[
        dict[str, Any], list[str]]:
    """The keys of ``cfg.<node>`` (resolved, without ``_target_``) that go to ``cls``, and the task knobs left out
    because ``cls`` does not take them."""
    args = OmegaConf.to_container(cfg[node], resolve=True)
    args.pop("_target_", None)
    dropped = [k for k in knobs if k in args and not _accepts(cls, k)]
    for key in dropped:
        del args[key]
    for key in args:
        if not _accepts(cls, key):
            raise ConfigError(
                f"{node}.{key}={args[key]!r}: {cls.__module__}.{cls.__qualname__} takes no argument {key!r}"
                f" (its arguments: {', '.join(inspect.signature(cls).parameters) or 'none'}). Remove it, or give the"
                " class that takes it."
            )
    return args, dropped


def build(target: str, args: dict[str, Any], key: str, base: type) -> Any:
    """``target(**args)`` through Hydra's ``instantiate`` (so nested ``_target_`` nodes build too), checked to be a
    ``base`` instance."""
    from hydra.utils import instantiate

    try:
        obj = instantiate({"_target_": target, **args})
    except Exception as err:  # noqa: BLE001 - Hydra wraps the constructor's error
        cause = err.__cause__ or err
        call = ", ".join(f"{k}={v!r}" for k, v in args.items())
        raise ConfigError(f"{key}={target!r}: {target}({call}) failed: {type(cause).__name__}: {cause}") from None
    if not isinstance(obj, base):
        raise ConfigError(f"{key}={target!r} builds a {type(obj).__name__}, not a {base.__module__}.{base.__name__};"
                          f" give a {base.__name__} class.")
    return obj


def instantiated_task(cfg: DictConfig, builder: Callable[[DictConfig], Task]) -> Task:
    """The task with ``model._target_`` (and ``datamodule._target_``) of one's own in place of its classes.

    Raises:
        ConfigError: an unimportable class, an argument its constructor does not take, a constructor that fails, a
            class of the wrong kind, or ``datamodule._target_`` without ``model._target_`` (the task's model is
            sized by its own data).
    """
    own_model, own_data = not builtin_model(cfg), not builtin_datamodule(cfg)
    if own_data and not own_model:
        raise ConfigError(
            f"datamodule._target_={cfg.datamodule._target_!r} with the {cfg.task.name} task's own model: give"
            " model._target_=<your LightningModule> too (the built-in models are sized by their own data)."
        )
    base = None if own_data else builder(cfg)  # the task's data (and its description)
    if own_data:
        dm_target = str(cfg.datamodule._target_)
        dm_args, _ = constructor_arguments(cfg, "datamodule", _locate(dm_target, "datamodule._target_"))
        datamodule = build(dm_target, dm_args, "datamodule._target_", pl.LightningDataModule)
    else:
        datamodule = base.datamodule
    target = str(cfg.model._target_)
    cls = _locate(target, "model._target_")
    args, dropped = constructor_arguments(cfg, "model", cls, knobs=TASK_KNOBS)

    def make_model(seed: int) -> pl.LightningModule:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return build(target, args, "model._target_", pl.LightningModule)

    if own_data:
        name = type(datamodule).__name__
        description = {"name": name, "datamodule": dm_target, **dm_args}
    else:
        name, description = base.name, dict(base.description)
    description.update({"model": target, "model_arguments": args, "task_knobs_not_passed": dropped})
    return Task(name, datamodule, make_model, description, classifier=None)
