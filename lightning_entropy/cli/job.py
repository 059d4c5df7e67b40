"""The main job of ``lightning-entropy``: one landscape, its optimiser baseline and the report, in one directory.

:func:`run` does the work for a composed configuration and can be called without Hydra (tests, notebooks)::

    from lightning_entropy.cli import compose_config, run
    summary = run(compose_config(["trainer.max_steps=5"]), "outputs/try")

Order of work:

1. Validate every value and build everything that can fail on a bad value (task, model, strategy, logger) before any
   training starts: a wrong configuration fails in seconds with a message naming the key.
2. Train the baseline (one run per seed, recorded every epoch with
   :class:`~lightning_entropy.baseline.BaselineRecorder`) in a second process while the sampler runs
   (``baseline.parallel``), or in this process.
3. Sample the landscape with ``Trainer(strategy=WangLandauStrategy(...))`` on the same datamodule and model class.
4. Write ``landscape.npz``, ``landscape.png``, ``curves.csv``, ``baseline.csv`` and ``summary.json``.

With ``sampler=adam`` or ``sampler=sgd`` only the baseline runs: ``baseline.png``, ``baseline.csv``, ``curves.csv``
and ``summary.json`` are written. ``sampler=entropy_md`` (the training mode) runs :mod:`lightning_entropy.cli.md_job`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from lightning_entropy.callbacks import LandscapeLogger, SamplerProgressBar
from lightning_entropy.cli import naming, upload
from lightning_entropy.cli.atomic import atomic_open
from lightning_entropy.cli.config import (
    DEFAULT_BOX,
    ENTROPY_MD_KINDS,
    OPTIMIZER_KINDS,
    ConfigError,
    trainer_extras,
    validate,
)
from lightning_entropy.cli.deadline import BASELINE_LEAD_S, Deadline, stopped_by
from lightning_entropy.cli.interrupt import CHECKPOINT, Checkpointing, Interrupted, interruptible
from lightning_entropy.cli.rundir import claim
from lightning_entropy.cli.runlog import to_log_files
from lightning_entropy.cli.tasks import Task, build_task
from lightning_entropy.core import nonfinite
from lightning_entropy.core.fingerprint import ResumeMismatch

log = logging.getLogger("lightning_entropy.cli")

#: Files of a Wang-Landau run, and of an optimiser-only run.
LANDSCAPE_FILES = ("landscape.npz", "landscape.png", "curves.csv", "baseline.csv", "summary.json")
BASELINE_FILES = ("baseline.png", "curves.csv", "baseline.csv", "summary.json")
CURVE_COLUMNS = ("ln_train_loss", "max_s", "max_s_err", "mean_curve", "mean_curve_err", "label_free", "label_free_err",
                 "undersampled", "baseline_mean", "baseline_std", "baseline_sem", "baseline_count", "advantage",
                 "advantage_err", "visits", "in_window")
INTEGER_COLUMNS = ("baseline_count", "visits", "in_window", "undersampled")

OPEN_WINDOW = 1e9  # the soft-wall limit of an axis given as null in sampler.window (no wall: CVs never get there)

SAMPLER_NAMES = {"wang_landau": "WLMD", "wang_landau_mc": "WLMC", "adam": "Adam", "sgd": "SGD"}


LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")


def _quiet_lightning() -> None:
    """Silence Lightning's start-up banners and warnings that do not apply to full-batch tensor data."""
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    _filter_warnings()


@contextlib.contextmanager
def _job_environment(threads: int):
    """Quiet Lightning and set torch's thread count for the job; restore both afterwards (in-process callers)."""
    import torch

    levels = {name: logging.getLogger(name).level for name in LIGHTNING_LOGGERS}
    previous_threads = torch.get_num_threads()
    with warnings.catch_warnings():
        _quiet_lightning()
        if threads:
            torch.set_num_threads(int(threads))
        try:
            yield
        finally:
            torch.set_num_threads(previous_threads)
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def _filter_warnings() -> None:
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"lightning(\.|$)")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")  # one batch per epoch


# -- building (everything that can fail on a bad value, before any work) --------------------------------------------


def make_strategy(cfg: DictConfig, *, classifier: bool | None = True):
    """The :class:`~lightning_entropy.WangLandauStrategy` of ``cfg.sampler`` (``wang_landau`` / ``wang_landau_mc``),
    or its DDP form :class:`~lightning_entropy.WangLandauDDPStrategy` when ``trainer.devices > 1``.

    ``test_metric`` in ``sampler.variables`` names the task's held-out metric: ``test_accuracy`` for a classifier,
    ``test_loss`` otherwise (``classifier=None``, a model of one's own: the strategy finds it from the module). Any
    other name goes to the strategy unchanged (an accuracy on a regression task is an error there). The box is
    ``sampler.box``, else the task's ``task.box``, else the sampler kind's default.
    """
    from lightning_entropy.strategies.wang_landau import WangLandauStrategy
    from lightning_entropy.strategies.wang_landau_ddp import WangLandauDDPStrategy

    s = cfg.sampler
    devices = int(cfg.trainer.get("devices", 1)) if "trainer" in cfg else 1
    cls, extra = (WangLandauDDPStrategy, {"sync_every": s.sync_every}) if devices > 1 else (WangLandauStrategy, {})
    task_metric = "test_metric" if classifier is None else "test_accuracy" if classifier else "test_loss"
    variables = tuple(task_metric if v == "test_metric" else v for v in s.variables)
    plain = lambda v: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v  # noqa: E731
    n_axes = len(s.variables)
    for key in ("ranges", "window", "bin_width"):
        value = s[key]
        if value is not None and len(value) != n_axes:
            raise ConfigError(
                f"sampler.{key} has {len(value)} entries but sampler.variables={list(s.variables)} has {n_axes} axes:"
                f" give one entry per axis (or sampler.{key}=null)."
            )
    window = plain(s.window)
    if window is not None:  # a null entry: no soft wall on that axis
        window = [list(w) if w is not None else [-OPEN_WINDOW, OPEN_WINDOW] for w in window]
        if all(w == [-OPEN_WINDOW, OPEN_WINDOW] for w in window):
            window = None
    try:
        return cls(
            **extra,
            sampler="md" if s.kind == "wang_landau" else "mc",
            variables=variables,
            walkers=s.walkers,
            box=box_rule(cfg),
            seed=s.seed,
            ranges=plain(s.ranges),
            bin_width=plain(s.bin_width),
            range_margin=s.range_margin,
            kernel_sigma=s.kernel_sigma,
            window=window,
            wall_strength=s.wall_strength,
            schedule=plain(s.schedule),
            **({} if devices > 1 else {"fill": s.fill, "replicas": s.replicas, "windows": s.windows,
                                       "production": s.production, "log_f0": s.log_f0,
                                       "exchange_every": s.exchange_every}),
            dt=s.dt,
            friction=s.friction,
            metropolis=s.metropolis,
            mass=s.mass,
            step_size=s.step_size,
            adapt_steps=s.adapt_steps,
            adapt_every=s.adapt_every,
            steps_per_lightning_step=s.steps_per_lightning_step,
            start=s.start,
            start_steps=s.start_steps,
            start_lr=s.start_lr,
            start_budget=s.start_budget,
            observables=plain(s.observables),
            observe_every=s.observe_every,
            heldout=s.heldout,
            accuracy_slope=s.accuracy_slope,
            accuracy_axis=s.accuracy_axis,
            vectorize=plain(s.vectorize),
            threads=plain(s.threads),
            snapshot_every=s.snapshot_every,
            groups=s.groups,
        )
    except (ValueError, TypeError) as err:
        raise ConfigError(f"sampler: {err}") from err


def box_rule(cfg: DictConfig) -> Any:
    """The box of a Wang-Landau run: ``sampler.box`` if set, else ``task.box``, else :data:`DEFAULT_BOX`."""
    for value in (cfg.sampler.box, cfg.task.get("box")):
        if value is not None:
            return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return DEFAULT_BOX[cfg.sampler.kind]


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
                       group=_sweep_group())


def _sweep_group() -> str | None:
    """One W&B group per Hydra multirun (its sweep directory); ``None`` for a single run."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
    except Exception:  # noqa: BLE001 - not running under Hydra (e.g. compose in tests)
        return None
    if hydra_cfg.mode is None or hydra_cfg.mode.name != "MULTIRUN":
        return None
    return f"{hydra_cfg.job.name}:{hydra_cfg.sweep.dir}"


def _build(cfg: DictConfig, out_dir: Path, name: str | None = None) -> dict[str, Any]:
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


# -- the baseline -------------------------------------------------------------------------------------------------


def _baseline_settings(cfg: DictConfig) -> dict[str, Any]:
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


def _train_baseline(task: Task, settings: dict[str, Any], threads: int | None,
                    max_time: float | None = None) -> list[dict[str, float]]:
    from lightning_entropy.baseline import train_baselines

    return train_baselines(lambda seed: (task.datamodule, task.make_model(seed)), threads=threads,
                           max_time=max_time, **settings)


def _start_baseline_process(cfg: DictConfig, settings: dict[str, Any], out: Path,
                            deadline: float | None = None) -> subprocess.Popen:
    """Start ``python -m lightning_entropy.cli.baseline_process`` on the same configuration (same split and model).

    Its output goes to ``baseline.log`` in the run directory (removed when it succeeds); its records to
    ``baseline.csv``. It stops at ``deadline`` (``time.time()``) and imports from this process's ``sys.path`` (a
    ``model._target_`` of one's own is found there too).
    """
    threads = int(cfg.baseline.threads)
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    request = {"config": OmegaConf.to_container(cfg, resolve=True), "settings": settings, "threads": threads,
               "output": str(out / "baseline.csv"), "parent": os.getpid(), "deadline": deadline,
               "sys_path": [p for p in sys.path if p]}
    log_file = open(out / "baseline.log", "w")  # noqa: SIM115 - closed by _finish_baseline_process
    try:
        process = subprocess.Popen([sys.executable, "-m", "lightning_entropy.cli.baseline_process"],
                                   stdin=subprocess.PIPE, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                   text=True)
        process.stdin.write(json.dumps(request))
        process.stdin.close()
    finally:
        log_file.close()
    return process


def _finish_baseline_process(process: subprocess.Popen, out: Path) -> list[dict[str, float]]:
    """Wait for the baseline process and read its records; raise with the end of its log if it failed."""
    from lightning_entropy.baseline import load_records

    code = process.wait()
    log_path = out / "baseline.log"
    if code != 0:
        tail = log_path.read_text()[-3000:] if log_path.exists() else ""
        raise RuntimeError(f"The baseline process failed (exit code {code}); the end of {log_path}:\n{tail}")
    log_path.unlink(missing_ok=True)
    return load_records(out / "baseline.csv")


# -- reporting ---------------------------------------------------------------------------------------------------------


def _logit(a: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """The logit accuracy axis of :mod:`lightning_entropy.core.variables`: ``ln(p / (1 - p))``, ``p = eps + (1-2eps) A``."""
    p = eps + (1 - 2 * eps) * a
    return np.log(p) - np.log1p(-p)


def baseline_column(landscape) -> tuple[str | None, Callable[[np.ndarray], np.ndarray]]:
    """The baseline record column in the landscape's test metric, and the transform onto the landscape's axis.

    2-D: the y axis (smoothed accuracy for MD, hard accuracy for MC, ln test loss; logit axes are transformed the
    same way). 1-D: the recorded observable. ``(None, ...)`` when the metric has no baseline counterpart.
    """
    identity = lambda a: a  # noqa: E731
    if landscape.ndim == 2:
        name, label = landscape.names[1], landscape.labels[1]
    elif landscape.observable_names:
        name = label = landscape.observable_names[0]
    else:
        return None, identity
    transform = _logit if label.startswith("logit") else identity

    if name == "ln_test_loss" or name == "test_loss":
        return "ln_test_loss", transform
    if "accuracy" in name and "train" not in name:
        smooth = "smoothed" in label
        return ("smooth_test_accuracy" if smooth else "hard_test_accuracy"), transform
    return None, identity


def _metric_text(column: str | None, landscape=None) -> str:
    from lightning_entropy.plotting import axis_label

    if landscape is not None and landscape.ndim == 2:
        return axis_label(landscape.names[1], landscape.labels[1])
    return {"hard_test_accuracy": "test accuracy", "smooth_test_accuracy": "smoothed test accuracy",
            "ln_test_loss": axis_label("ln_test_loss")}.get(column or "", column or "test metric")


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


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def _final_per_seed(records: list[dict[str, float]], metric: str) -> list[dict[str, float]]:
    last: dict[int, dict[str, float]] = {}
    for r in records:
        if r["seed"] not in last or r["epoch"] >= last[r["seed"]]["epoch"]:
            last[r["seed"]] = r
    return [{"seed": s, "epoch": r["epoch"], "ln_train_loss": r["ln_train_loss"], metric: r[metric]}
            for s, r in sorted(last.items())]


# -- the job -------------------------------------------------------------------------------------------------------------


def run(cfg: DictConfig, out_dir: str | Path, *, echo: Callable[[str], None] = print,
        overrides: list[str] | None = None, started: float | None = None) -> dict[str, Any]:
    """Run the main job for a composed configuration and write its files into ``out_dir``; returns the summary.

    Everything that can fail on a bad value (task, model, strategy, logger) is built before any training. torch's
    thread count (``trainer.threads``) and Lightning's log levels are restored when the job returns. The whole job
    (start phase, sampler, baseline, report) keeps within ``trainer.max_time`` (:mod:`lightning_entropy.cli.deadline`).
    ``overrides`` name the run for the loggers (default: the running Hydra job's command-line overrides).
    ``started`` (``time.monotonic()``; default: now) is when the job's time cap starts counting.

    Raises:
        ConfigError: a value that cannot work (raised before any training; nothing is written).
    """
    deadline = Deadline.of(OmegaConf.select(cfg, "trainer.max_time"), started)
    started = time.perf_counter()  # the job's wall time (summary.json's wall_time_s) counts from here
    name = naming.run_name(overrides if overrides is not None else naming.command_line_overrides())
    with _job_environment(int(cfg.trainer.threads) if "trainer" in cfg else 0):
        with contextlib.ExitStack() as stack:
            flag = stack.enter_context(interruptible())  # SIGTERM/SIGINT: keep what was sampled, then Interrupted
            if OmegaConf.select(cfg, "sampler.kind") in ENTROPY_MD_KINDS:  # the training mode has its own path
                from lightning_entropy.cli.md_job import run_entropy_md

                return run_entropy_md(cfg, Path(out_dir), echo, started, stack=stack, flag=flag, deadline=deadline,
                                      name=name)
            return _run(cfg, Path(out_dir), echo, started, stack=stack, flag=flag, deadline=deadline, name=name)


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


def _run(cfg: DictConfig, out_dir: Path, echo: Callable[[str], None], started: float, *,
         stack: contextlib.ExitStack | None = None, flag=None, deadline: Deadline | None = None,
         name: str | None = None) -> dict[str, Any]:
    run_name = name
    import lightning.pytorch as pl

    from lightning_entropy import analysis, plotting
    from lightning_entropy.baseline import pool, save_records

    out = out_dir.resolve()
    ckpt_path = resume_checkpoint(cfg)
    deadline = deadline or Deadline.of(cfg.trainer.max_time)
    built = _build(cfg, out, name)
    lock = claim(out)  # writable, and no second run on the same directory; before any sampling
    if stack is not None and lock is not None:
        stack.callback(lock.close)
    task, model, logger = built["task"], built["model"], built["logger"]
    strategy = built.get("strategy")
    kind = cfg.sampler.kind
    settings = _baseline_settings(cfg)
    want_baseline = kind in OPTIMIZER_KINDS or bool(cfg.baseline.enabled)
    # startup_s: from the cap's start (the command's start) to here: imports, composition, building
    timings: dict[str, float] = {"startup_s": time.monotonic() - deadline.started}
    upload.log_config(logger, OmegaConf.to_container(cfg, resolve=True))  # every setting, for every logger
    if strategy is not None and deadline.cap is not None:
        echo(f"lightning-entropy: {task.name}, {type(model).__name__}; time cap trainer.max_time="
             f"{cfg.trainer.max_time} for the whole job (start phase, sampler, baseline; the report is written within"
             " it)")

    # 2. the baseline: in a second process beside the sampler, or here
    process: subprocess.Popen | None = None
    records: list[dict[str, float]] = []
    if want_baseline and strategy is not None and cfg.baseline.parallel:
        process = _start_baseline_process(cfg, settings, out, deadline.wall_clock(BASELINE_LEAD_S))
    elif want_baseline:
        t = time.perf_counter()
        share = deadline.share(1.0 if strategy is None else 0.5)  # before the sampler: at most half of the cap
        records = _train_baseline(task, settings, int(cfg.baseline.threads) or None, share)
        timings["baseline_s"] = time.perf_counter() - t

    try:
        # 3. the landscape
        landscape = None
        if strategy is not None:
            t = time.perf_counter()
            sampler_cap = deadline.trainer_max_time()  # what is left of the job's cap
            if sampler_cap is not None:
                timings["sampler_cap_s"] = sampler_cap.total_seconds()
            trainer = pl.Trainer(
                strategy=strategy,
                accelerator=cfg.trainer.accelerator,
                devices=int(cfg.trainer.devices),
                max_steps=int(cfg.trainer.max_steps),
                max_time=sampler_cap,
                logger=logger,
                enable_checkpointing=False,
                enable_model_summary=False,
                enable_progress_bar=bool(cfg.trainer.progress_bar),
                num_sanity_val_steps=0,
                limit_val_batches=0,
                log_every_n_steps=int(cfg.trainer.log_every_n_steps),
                default_root_dir=str(out),
                # the heatmap at four moments of the run and at the end; curves and the npz at the end
                callbacks=([LandscapeLogger(every_n_steps=max(1, int(cfg.trainer.max_steps) // 4))] if logger else [])
                + [Checkpointing(out, float(cfg.trainer.get("checkpoint_minutes", 0.0)))]
                + ([SamplerProgressBar()] if cfg.trainer.progress_bar else []),  # one bar over sampler steps
                **trainer_extras(cfg),  # any other Trainer argument given as +trainer.<name>=...
            )
            if flag is not None and int(cfg.trainer.devices) > 1:
                flag.delegate(trainer.strategy.launcher)  # the ranks sample: signals are forwarded to them
            try:
                trainer.fit(model, datamodule=task.datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
            except ResumeMismatch as err:  # another box, model, data or grid than the checkpoint's: before sampling
                raise ConfigError(f"resume={cfg.resume}: {err}") from None
            except Exception as err:  # a rank stopped by the signal before sampling began: nothing to keep
                if flag is not None and flag.launcher is not None and flag.signum is not None:
                    raise Interrupted(flag.signum) from err
                raise
            landscape = strategy.landscape
            timings["sampler_s"] = time.perf_counter() - t
            stopped = stopped_by(trainer, interrupted=flag is not None and flag.signum is not None)
            lightning_steps = int(trainer.global_step)
        if flag is not None and flag.signum is not None and process is not None:
            process.kill()  # interrupted: the baseline is re-trained on resume; keep the landscape now
            process.wait()
        elif process is not None:
            t = time.perf_counter()
            records = _finish_baseline_process(process, out)
            timings["baseline_wait_s"] = time.perf_counter() - t
    finally:
        if process is not None and process.poll() is None:  # the sampler failed or was interrupted
            process.kill()
            process.wait()

    # 4. the report
    t = time.perf_counter()
    if strategy is None:
        stopped, lightning_steps = None, None
    files: list[str] = []
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer_name = SAMPLER_NAMES.get(settings["optimizer"], settings["optimizer"])
    baseline_text = (f"{optimizer_name} lr {settings['lr']:g}, {len(settings['seeds'])} seeds x {settings['epochs']}"
                     " epochs") if want_baseline else "no baseline"
    if records:
        save_records(records, out / "baseline.csv")
        files.append("baseline.csv")

    summary = summary_head(cfg, task, model, kind)
    if landscape is not None:
        column, transform = baseline_column(landscape)
        curve = None
        if records and column is not None:
            rows = [{"ln_train_loss": r["ln_train_loss"], "value": float(transform(np.float64(r[column])))}
                    for r in records]
            curve = pool(rows, metric="value", edges=landscape.edges[0])
            curve.metric = column
        landscape.save(out / "landscape.npz")
        files.append("landscape.npz")
        meta = landscape.metadata
        steps = int(meta.get("steps", 0))
        box = meta.get("box", {})
        box_text = box.get("rule", "?") + (f" c={box['c']:g}" if "c" in box else "")
        title = (f"{task.name}: {type(model).__name__} ({parameters} params, box {box_text})\n"
                 f"{SAMPLER_NAMES[kind]}: {strategy.walkers * int(cfg.trainer.devices)} walkers x {steps:,} steps"
                 f"; baseline: {baseline_text}")
        x = landscape.centers[0]
        nbins = x.size
        nan = np.full(nbins, np.nan)
        reads = analysis.readouts(landscape, exclude=int(cfg.plot.exclude))
        total_walkers = int(strategy.walkers) * int(cfg.trainer.devices)
        conv = analysis.convergence(landscape, walkers=total_walkers)
        primary = "max_s" if "max_s" in reads else ("label_free" if "label_free" in reads else None)
        in_window = analysis.inside_window(landscape)
        advantages = {}
        no_advantage = None  # why there is no advantage although the baseline ran
        if records and column is None:
            axis = landscape.names[1] if landscape.ndim == 2 else (landscape.observable_names or ["none"])[0]
            no_advantage = (f"the landscape's held-out axis {axis!r} has no baseline counterpart (the baseline records"
                            " ln L_test and, with a classifier's loss, the accuracy); sample"
                            " sampler.variables=[train_loss,test_metric] for an advantage")
        if curve is not None and column is not None:
            better = "accuracy" in column
            advantages = {name: analysis.advantage(r, curve, higher_is_better=better, in_window=in_window)
                          for name, r in reads.items()}
        fig = plotting.landscape_figure(landscape, baseline=curve, baseline_label=optimizer_name, title=title,
                                        exclude=int(cfg.plot.exclude), readouts=reads, convergence=conv)
        plotting.save(fig, out / "landscape.png", dpi=int(cfg.plot.dpi))
        files.append("landscape.png")
        picture = getattr(strategy, "picture", None)  # a 1-D walk's label-free S(x, y) = S(x) + ln p(y | x)
        if picture is not None:
            picture.save(out / "landscape_label_free.npz")
            fig = plotting.landscape_figure(
                picture, baseline=curve, baseline_label=optimizer_name, exclude=int(cfg.plot.exclude),
                readouts=analysis.readouts(picture, exclude=int(cfg.plot.exclude)),
                title=title + "\nlabel-free picture: S(x) + ln p(y | x), no test label in the dynamics")
            plotting.save(fig, out / "landscape_label_free.png", dpi=int(cfg.plot.dpi))
            files += ["landscape_label_free.npz", "landscape_label_free.png"]
        if conv.history:
            fig = plotting.convergence_figure(conv.history, walkers=total_walkers, thresholds=conv.thresholds,
                                              title=f"{task.name}: convergence over {len(conv.history)} snapshots")
            plotting.save(fig, out / "convergence.png", dpi=int(cfg.plot.dpi))
            files.append("convergence.png")
        hist = landscape.histogram
        visits = hist.sum(axis=tuple(range(1, hist.ndim))) if hist.ndim > 1 else hist
        _, mean_y = landscape.mean_curve() if (landscape.ndim == 2 or landscape.observable_names) else (x, nan)
        columns = {"mean_curve": mean_y, "visits": visits, "in_window": in_window}
        for name in analysis.READOUTS:
            r = reads.get(name)
            if name != "mean_curve":
                columns[name] = r.value if r is not None else nan
            columns[f"{name}_err"] = r.error if r is not None else nan
        under = reads[primary].undersampled if primary else np.ones(nbins, dtype=bool)
        columns["undersampled"] = under.astype(float)
        main = advantages.get(primary)
        columns.update({
            "baseline_mean": curve.mean if curve is not None else nan,
            "baseline_std": curve.std if curve is not None else nan,
            "baseline_sem": curve.sem if curve is not None and curve.sem is not None else nan,
            "baseline_count": curve.count if curve is not None else np.zeros(nbins),
            "advantage": main.per_bin if main is not None else nan,
            "advantage_err": main.error if main is not None else nan,
        })
        write_curves(out / "curves.csv", x, columns)
        files.append("curves.csv")
        summary.update({
            "box": box,
            "steps": steps,
            "walkers": int(strategy.walkers) * int(cfg.trainer.devices),
            "devices": int(cfg.trainer.devices),
            "walker_steps": int(landscape.walker_steps),
            "nonfinite_moves": nonfinite.counts(getattr(strategy, "_state", None))[0],  # NaN/inf proposals sent back
            "flatness": float(landscape.flatness()),
            "convergence": conv.summary(),
            "converged": conv.converged,
            "variables": list(landscape.names),
            "axis_labels": list(landscape.labels),
            "test_labels_in_dynamics": bool(meta.get("test_labels_in_dynamics", False)),
            "schedule": meta.get("schedule"),
            "integrator": meta.get("integrator"),
            "start": meta.get("start"),
            "start_phase": meta.get("start_phase"),  # optimiser steps asked for and run (fewer at the time cap)
            "stopped_by": stopped,  # max_steps, max_time (the job's time cap), max_epochs or interrupted
            "lightning_steps": lightning_steps,
            "max_steps": int(cfg.trainer.max_steps),
            "landscape": {
                "bins": list(landscape.shape),
                "ranges": [[float(e[0]), float(e[-1])] for e in landscape.edges],
                "visited_bins": int((hist > 0).sum()),
                "visited_ln_train_loss": _visited_range(x, visits),
            },
            "advantage": main.summary() if main is not None else None,
            "mean_advantage": main.mean_advantage if main is not None else None,
            "advantage_by_readout": {k: v.summary() for k, v in advantages.items()},
            "no_advantage": no_advantage,
        })
    else:
        curve = pool(records, metric="test_metric") if records else None
        ylabel = _metric_text(_record_metric(records))
        title = (f"{task.name}: {type(model).__name__} ({parameters} params)\n{baseline_text}")
        if curve is not None:
            fig = plotting.baseline_figure(curve, label=optimizer_name, ylabel=ylabel, title=title)
            plotting.save(fig, out / "baseline.png", dpi=int(cfg.plot.dpi))
            files.append("baseline.png")
            nbins = curve.mean.size
            write_curves(out / "curves.csv", curve.centers, {
                "baseline_mean": curve.mean, "baseline_std": curve.std, "baseline_sem": curve.sem,
                "baseline_count": curve.count, "visits": np.zeros(nbins), "in_window": np.ones(nbins),
            })
            files.append("curves.csv")
        batches = _batches_per_epoch(task.datamodule)  # optimiser steps per epoch (1: full batch)
        summary.update({"box": None, "steps": int(settings["epochs"]) * batches if batches else None,
                        "walkers": None, "walker_steps": None, "flatness": None})
    if want_baseline:
        metric_col = column if landscape is not None and column is not None else _record_metric(records)
        final = _final_per_seed(records, metric_col) if records else []
        summary["baseline"] = {
            **{k: settings[k] for k in ("optimizer", "lr", "momentum", "seeds", "epochs", "every_n_epochs")},
            "batch_size": task.description.get("batch_size"),
            "records": len(records),
            "metric": metric_col,
            "final": final,
            # the time cap ended a run before its epochs (or left a seed without any)
            "stopped_by_time": len(final) < len(settings["seeds"]) or any(
                f["epoch"] < int(settings["epochs"]) for f in final),
        }
    timings["report_s"] = time.perf_counter() - t
    files.append("summary.json")
    summary.update({
        "wall_time_s": time.perf_counter() - started,
        "timings": timings,
        "run_dir": str(out),
        "files": files,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "wandb_group": _sweep_group() if cfg.logger.kind == "wandb" else None,  # one group per sweep
        "run_name": run_name,
        "time_cap_s": deadline.cap,
        "interrupted": signal.Signals(flag.signum).name if flag is not None and flag.signum else None,
    })
    steps_per_call = int(cfg.sampler.get("steps_per_lightning_step", 1))
    summary = _jsonable(summary)
    with atomic_open(out / "summary.json", "w") as fh:
        json.dump(summary, fh, indent=2)
    _log_final(logger, summary, out, step=lightning_steps if lightning_steps is not None else
               int(summary.get("steps") or 0) // max(steps_per_call, 1))
    lines = report_lines(summary)
    for line in lines:
        echo(line)
    to_log_files(lines)  # and into the job's log file (Hydra's main.log)
    if flag is not None and flag.signum is not None:
        raise Interrupted(flag.signum)  # everything sampled is written; the console script says how to resume
    return summary


def summary_head(cfg: DictConfig, task: Task, model, sampler: str) -> dict[str, Any]:
    """The first keys of every ``summary.json``: task, data, model, its configuration and size, sampler."""
    return {
        "task": task.name,
        "data": task.description,
        "model": type(model).__name__,
        "model_config": OmegaConf.to_container(cfg.model, resolve=True),
        "parameters": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        "sampler": sampler,
    }


def _record_metric(records: list[dict[str, float]]) -> str:
    """The column ``test_metric`` copies: hard accuracy for classifiers, ln test loss otherwise."""
    if records and math.isfinite(records[0]["hard_test_accuracy"]):
        return "hard_test_accuracy"
    return "ln_test_loss"


def _batches_per_epoch(datamodule) -> int | None:
    """Optimiser steps per epoch of the data module's train loader (``None`` when it has no length before setup)."""
    try:
        return len(datamodule.train_dataloader())
    except Exception:  # noqa: BLE001 - a data module of one's own may need setup() first, or be unsized
        return None


def _visited_range(x: np.ndarray, visits: np.ndarray) -> list[float] | None:
    idx = np.flatnonzero(visits > 0)
    return [float(x[idx[0]]), float(x[idx[-1]])] if idx.size else None


def _log_final(logger: Any, summary: dict[str, Any], out: Path, *, step: int) -> None:
    """Send the final numbers (and the figure, for W&B) to the Lightning logger, if any."""
    if not logger:
        return
    metrics = {k: summary[k] for k in ("flatness", "walker_steps", "wall_time_s") if summary.get(k) is not None}
    for name, adv in (summary.get("advantage_by_readout") or {}).items():
        if adv.get("mean_advantage") is not None:
            metrics[f"report/advantage_{name}"] = adv["mean_advantage"]
    if summary.get("converged") is not None:
        metrics["report/converged"] = float(summary["converged"])
    try:
        logger.log_metrics({f"report/{k}" if "/" not in k else k: v for k, v in metrics.items()}, step=step)
        if hasattr(logger, "log_image") and (out / "landscape.png").exists():
            logger.log_image(key="landscape", images=[str(out / "landscape.png")])
        upload.upload_files(logger, out, summary.get("files") or (), summary)  # W&B: the run's files
        logger.save()
        logger.finalize("success")  # closes and flushes writers that the Trainer had closed and this call reopened
        upload.close(logger)  # W&B: the next job of a sweep gets its own run
    except Exception as err:  # noqa: BLE001 - a logger problem must not lose the files already written
        log.warning("could not log the final report to %s: %s", type(logger).__name__, err)


def stop_lines(summary: dict[str, Any]) -> list[str]:
    """What the time cap cut short: the start phase, the sampler (``stopped_by: max_time``), the baseline."""
    cap = summary.get("config", {}).get("trainer", {}).get("max_time")
    lines = []
    start = summary.get("start_phase") or {}
    if start.get("shortened_by_time"):
        lines.append(f"  start phase shortened by the time cap: {start['steps_run']} of {start['steps_requested']}"
                     f" {summary.get('start')} steps")
    if summary.get("stopped_by") == "max_time":
        lines.append(f"  stopped by the time cap trainer.max_time={cap} after {summary['steps']:,} sampler steps"
                     f" ({summary['lightning_steps']} of trainer.max_steps={summary['max_steps']} Lightning steps);"
                     " raise trainer.max_time for more")
    base = summary.get("baseline")
    if base and base.get("stopped_by_time"):
        reached = ", ".join(f"{f['epoch']}" for f in base["final"]) or "none"
        lines.append(f"  baseline stopped by the time cap: epochs reached per seed {reached} of {base['epochs']}")
    return lines


def _span(pair: list[float] | None) -> str:
    return "none" if not pair else f"[{pair[0]:.2f}, {pair[1]:.2f}]"


def report_lines(summary: dict[str, Any]) -> list[str]:
    """A short human summary of a run (printed at the end)."""
    lines = [f"lightning-entropy: {summary['task']}, {summary['model']} ({summary['parameters']} parameters),"
             f" sampler {summary['sampler']}"]
    if summary.get("walkers"):
        lines.append(f"  landscape: {summary['walkers']} walkers x {summary['steps']:,} steps"
                     f" = {summary['walker_steps']:,} walker-steps; flatness {summary['flatness']:.3f};"
                     f" visited ln L_train {_span(summary['landscape']['visited_ln_train_loss'])}")
    base = summary.get("baseline")
    if base:
        finals = [f["ln_train_loss"] for f in base["final"] if f["ln_train_loss"] is not None]
        end = f"; final ln L_train {min(finals):.2f}..{max(finals):.2f}" if finals else ""
        lines.append(f"  baseline: {base['optimizer']} lr {base['lr']:g}, {len(base['seeds'])} seeds x"
                     f" {base['epochs']} epochs ({base['records']} records, metric {base['metric']}){end}")
    names = {"max_s": "max-S line", "mean_curve": "Eq. (1) mean", "label_free": "label-free Eq. (1)"}
    for key, adv in (summary.get("advantage_by_readout") or {}).items():
        if adv["bins"]:
            drift = adv.get("mean_advantage_drift")
            moved = f"; moved {drift:+.3f} since the previous snapshot" if drift is not None else ""
            lines.append(f"  advantage of the {names.get(key, key)} over the baseline: {adv['mean_advantage']:+.3f}"
                         f" ± {adv['mean_advantage_error']:.3f} {adv['metric']} (positive: generalizes better; mean"
                         f" over {adv['bins']} ln L_train bins in {_span(adv['ln_train_loss_range'])}{moved})")
        else:
            lines.append(f"  advantage of the {names.get(key, key)}: no bin covered by both curves")
    if summary.get("no_advantage"):
        lines.append(f"  no advantage: {summary['no_advantage']}")
    conv = summary.get("convergence")
    if conv:
        verdict = "converged" if conv["converged"] else "NOT converged: " + "; ".join(conv["reasons"])
        lines.append(f"  convergence: {verdict}")
    lines += stop_lines(summary)
    lines.append(f"  wall time {summary['wall_time_s']:.1f} s; files: {', '.join(summary['files'])}")
    lines.append(f"  run directory: {summary['run_dir']}")
    return lines
