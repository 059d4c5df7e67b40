"""Building what a job runs, from its configuration, before any work: the task, the strategy, the logger and the
Trainer; and the job's environment (Lightning's log levels, torch's threads).

The strategy is built generically from its ``sampler`` node: every key but ``kind`` is an argument of the strategy
class of that kind (:data:`STRATEGIES`), whose signature holds every default; the command line changes only what it
visibly must (:func:`strategy_arguments`). A value the strategy refuses is a :class:`~lightning_entropy.cli.config.
ConfigError` naming ``sampler.<key>``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_entropy.callbacks import LandscapeLogger, SamplerProgressBar
from lightning_entropy.cli import naming
from lightning_entropy.cli.config import (
    DEFAULT_BOX,
    ENTROPY_MD_KINDS,
    OPTIMIZER_KINDS,
    ConfigError,
    trainer_extras,
    validate,
)
from lightning_entropy.cli.interrupt import CHECKPOINT, Checkpointing
from lightning_entropy.cli.tasks import build_task

#: The strategy class of each sampler kind (``module:Class``; ``wang_landau`` on several devices: the DDP one).
STRATEGIES = {
    "wang_landau": "lightning_entropy.strategies.wang_landau:WangLandauStrategy",
    "wang_landau_mc": "lightning_entropy.strategies.wang_landau:WangLandauStrategy",
    "wang_landau_ddp": "lightning_entropy.strategies.wang_landau_ddp:WangLandauDDPStrategy",
    "entropy_md": "lightning_entropy.strategies.entropy_md:EntropyMDStrategy",
}
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")


# -- the environment -------------------------------------------------------------------------------------------


def quiet_lightning() -> None:
    """Silence Lightning's start-up banners and warnings that do not apply to full-batch tensor data."""
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"lightning(\.|$)")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")  # one batch per epoch


@contextlib.contextmanager
def job_environment(threads: int):
    """Quiet Lightning and set torch's thread count for the job; restore both afterwards (in-process callers)."""
    import torch

    levels = {name: logging.getLogger(name).level for name in LIGHTNING_LOGGERS}
    previous_threads = torch.get_num_threads()
    with warnings.catch_warnings():
        quiet_lightning()
        if threads:
            torch.set_num_threads(int(threads))
        try:
            yield
        finally:
            torch.set_num_threads(previous_threads)
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


# -- the strategy ------------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def strategy_class(cfg: DictConfig) -> type:
    """The strategy class of ``cfg.sampler.kind`` (the DDP one for ``wang_landau`` with ``trainer.devices > 1``)."""
    import importlib

    kind = cfg.sampler.kind
    if kind == "wang_landau" and devices(cfg) > 1:
        kind = "wang_landau_ddp"
    module, name = STRATEGIES[kind].split(":")
    return getattr(importlib.import_module(module), name)


def devices(cfg: DictConfig) -> int:
    return int(cfg.trainer.get("devices", 1)) if "trainer" in cfg else 1


def strategy_arguments(cfg: DictConfig, *, classifier: bool | None = True) -> dict[str, Any]:
    """The strategy's arguments: the ``sampler`` node without ``kind``, and what the command line decides itself.

    For a Wang-Landau kind: ``sampler`` (``md``/``mc`` from the kind); the box (``sampler.box``, else ``task.box``,
    else the kind's :data:`DEFAULT_BOX`); ``test_metric`` in ``variables`` named for the task (``test_accuracy`` for a
    classifier, ``test_loss`` otherwise; ``classifier=None``, a model of one's own: the strategy finds it); a ``null``
    axis of ``window`` without a soft wall (the strategy's ``None``); ``sync_every`` only for several devices, which
    share one landscape with ``fill="step"``.
    """
    node = _plain(cfg.sampler)
    kind = node.pop("kind")
    if kind in ENTROPY_MD_KINDS:
        return node
    node["sampler"] = "md" if kind == "wang_landau" else "mc"
    node["box"] = box_rule(cfg)
    task_metric = "test_metric" if classifier is None else "test_accuracy" if classifier else "test_loss"
    if node.get("variables") is not None:
        node["variables"] = tuple(task_metric if v == "test_metric" else v for v in node["variables"])
        for key in ("ranges", "window", "bin_width"):
            if node.get(key) is not None and len(node[key]) != len(node["variables"]):
                raise ConfigError(
                    f"sampler.{key} has {len(node[key])} entries but sampler.variables={list(cfg.sampler.variables)}"
                    f" has {len(node['variables'])} axes: give one entry per axis (or sampler.{key}=null)."
                )
    if node.get("window") is not None:  # a null entry: no soft wall on that axis
        window = [None if w is None else list(w) for w in node["window"]]
        node["window"] = None if all(w is None for w in window) else window
    if devices(cfg) > 1:
        node["fill"] = "step"  # the ranks share one landscape with the per-step factor
    else:
        node.pop("sync_every", None)
    return node


def box_rule(cfg: DictConfig) -> Any:
    """The box of a Wang-Landau run: ``sampler.box`` if set, else ``task.box``, else :data:`DEFAULT_BOX`."""
    for value in (cfg.sampler.box, cfg.task.get("box")):
        if value is not None:
            return _plain(value)
    return DEFAULT_BOX[cfg.sampler.kind]


def make_strategy(cfg: DictConfig, *, classifier: bool | None = True):
    """The strategy of ``cfg.sampler`` (:func:`strategy_class` built with :func:`strategy_arguments`).

    Raises:
        ConfigError: a value the strategy refuses, naming ``sampler.<key>``.
    """
    cls = strategy_class(cfg)
    arguments = strategy_arguments(cfg, classifier=classifier)
    try:
        return cls(**arguments)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{config_key(err, arguments)}: {err}") from err


def config_key(err: Exception, arguments: dict[str, Any]) -> str:
    """``sampler.<key>`` of the argument an error names (its message starts ``key=...``, or a ``TypeError`` names
    it in quotes), else ``sampler``."""
    text = str(err)
    match = re.match(r"\s*(\w+)=", text) or re.search(r"'(\w+)'", text)
    key = match.group(1) if match else None
    if key == "sampler":
        return "sampler.kind"
    return f"sampler.{key}" if key in arguments else "sampler"


# -- the logger, the Trainer ---------------------------------------------------------------------------------------


def make_logger(cfg: DictConfig, out_dir: Path, name: str | None = None):
    """The Lightning logger of ``cfg.logger`` (``False`` for ``none``). Its run name is ``logger.name``, else
    ``name`` (the overrides, :func:`lightning_entropy.cli.naming.run_name`): the W&B run name, the version
    directory of CSV and TensorBoard logs."""
    kind = cfg.logger.kind
    save_dir = cfg.logger.save_dir or str(out_dir)
    if kind == "none":
        return False
    name = cfg.logger.name or name
    version = naming.path_safe(name) if name else None
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=save_dir, name="logs", version=version)
    if kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        try:
            return TensorBoardLogger(save_dir=save_dir, name="tensorboard", version=version)
        except ModuleNotFoundError as err:
            raise ConfigError("logger=tensorboard needs the tensorboard or tensorboardX package: pip install"
                              " 'lightning-entropy[tensorboard]' (or use logger=csv / logger=wandb).") from err
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(project=cfg.logger.project, name=name, save_dir=save_dir, mode=cfg.logger.mode,
                       group=sweep_group())


def sweep_group() -> str | None:
    """One W&B group per Hydra multirun (its sweep directory); ``None`` for a single run."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
    except Exception:  # noqa: BLE001 - not running under Hydra (e.g. compose in tests)
        return None
    if hydra_cfg.mode is None or hydra_cfg.mode.name != "MULTIRUN":
        return None
    return f"{hydra_cfg.job.name}:{hydra_cfg.sweep.dir}"


def make_trainer(cfg: DictConfig, strategy, out: Path, *, logger, max_time, landscape_logger: bool = False):
    """The Trainer of a sampler run: ``trainer.*`` of the config, checkpoints every ``trainer.checkpoint_minutes``
    (:class:`~lightning_entropy.cli.interrupt.Checkpointing`), one progress bar over sampler steps, and with
    ``landscape_logger`` the heatmap at four moments of the run (curves and the npz at the end) for the logger."""
    import lightning.pytorch as pl

    return pl.Trainer(
        strategy=strategy,
        accelerator=cfg.trainer.accelerator,
        devices=devices(cfg),
        max_steps=int(cfg.trainer.max_steps),
        max_time=max_time,
        logger=logger,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=bool(cfg.trainer.progress_bar),
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=int(cfg.trainer.log_every_n_steps),
        default_root_dir=str(out),
        callbacks=([LandscapeLogger(every_n_steps=max(1, int(cfg.trainer.max_steps) // 4))]
                   if landscape_logger and logger else [])
        + [Checkpointing(out, float(cfg.trainer.get("checkpoint_minutes", 0.0)))]
        + ([SamplerProgressBar()] if cfg.trainer.progress_bar else []),
        **trainer_extras(cfg),  # any other Trainer argument given as +trainer.<name>=...
    )


# -- everything at once -----------------------------------------------------------------------------------------------


def build(cfg: DictConfig, out_dir: Path, name: str | None = None) -> dict[str, Any]:
    """Validate ``cfg`` and build the task, its model, the strategy (none for an optimiser alone) and the logger."""
    validate(cfg)
    try:
        task = build_task(cfg)
        model = task.make_model(cfg.sampler.seed if "seed" in cfg.sampler else 0)
    except ConfigError:
        raise
    except (ValueError, OSError, ImportError) as err:  # bad values, missing files, no network, no downloader
        raise ConfigError(f"task/model: {err}") from err
    built: dict[str, Any] = {"task": task, "model": model}
    if cfg.sampler.kind not in OPTIMIZER_KINDS:
        built["strategy"] = make_strategy(cfg, classifier=task.classifier)
    built["logger"] = make_logger(cfg, out_dir, name)
    return built


def resume_checkpoint(cfg: DictConfig) -> Path | None:
    """The checkpoint that ``resume=<run dir>`` names (``None`` without ``resume``); a missing one is a ConfigError."""
    if OmegaConf.select(cfg, "resume") is None:
        return None
    path = Path(str(cfg.resume)).expanduser() / CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"resume={cfg.resume!r}: no {CHECKPOINT} there. Give the run directory of an interrupted run"
                          " (its checkpoint is written every trainer.checkpoint_minutes and when it is stopped).")
    import zipfile

    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a truncated one has lost its directory
        raise ConfigError(f"resume={cfg.resume!r}: {path} is corrupt or truncated (not a torch checkpoint archive)."
                          " Resume from another copy, or start the run again without resume.")
    return path.resolve()


def baseline_settings(cfg: DictConfig) -> dict[str, Any]:
    """The optimiser baseline's settings (``baseline.*``; for an optimiser alone, its ``sampler.*``)."""
    b, s = cfg.baseline, cfg.sampler
    optimizer_only = s.kind in OPTIMIZER_KINDS
    return {
        "optimizer": s.kind if optimizer_only else b.optimizer,
        "lr": float(s.lr if optimizer_only else b.lr),
        "momentum": float(s.momentum if optimizer_only else b.momentum),
        "seeds": [int(x) for x in b.seeds],
        "epochs": int(b.epochs),
        "every_n_epochs": int(b.every_n_epochs),
        "accuracy_slope": float(s.get("accuracy_slope", 5.0)),
        "heldout": str(s.get("heldout", "val")),
        "accelerator": str(cfg.trainer.accelerator),
    }
