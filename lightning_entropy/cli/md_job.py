"""``lightning-entropy sampler=entropy_md``: train the baseline, then hold its train loss with MD and compare.

Order of work (called by :func:`lightning_entropy.cli.job.run`):

1. Validate the configuration and build the task, the strategy and the logger (a bad value fails before training).
2. Train one baseline model (``baseline.optimizer``, ``baseline.lr``, ``baseline.epochs``, the first of
   ``baseline.seeds``), recorded every ``baseline.every_n_epochs`` epochs like every baseline.
3. Run :class:`~lightning_entropy.EntropyMDStrategy` from the trained weights for ``trainer.max_steps`` Lightning steps.
4. Evaluate the trained model and the MD result with the same functions (:class:`~lightning_entropy.baseline.
   BaselineRecorder`) and write ``summary.json`` (``baseline_test_metric``, ``test_metric``, the train losses of both,
   the walkers' mean and the ensemble), ``md_trace.csv``, ``md_trace.png`` and ``baseline.csv``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from lightning_entropy.cli import upload
from lightning_entropy.cli.atomic import atomic_open
from lightning_entropy.cli.deadline import Deadline, stopped_by
from lightning_entropy.cli.config import ConfigError, trainer_extras, validate
from lightning_entropy.cli.interrupt import Checkpointing, Interrupted
from lightning_entropy.cli.rundir import claim
from lightning_entropy.cli.runlog import to_log_files
from lightning_entropy.cli.tasks import build_task
from lightning_entropy.core.fingerprint import ResumeMismatch

MD_FILES = ("baseline.csv", "md_trace.csv", "md_trace.png", "summary.json")


def make_md_strategy(cfg: DictConfig):
    """The :class:`~lightning_entropy.EntropyMDStrategy` of ``cfg.sampler``."""
    from lightning_entropy.strategies.entropy_md import EntropyMDStrategy

    s = cfg.sampler
    plain = lambda v: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v  # noqa: E731
    try:
        return EntropyMDStrategy(
            walkers=s.walkers, box=plain(s.box), seed=s.seed, target=s.target, strength=s.strength, dt=s.dt,
            adapt_steps=s.adapt_steps, friction=s.friction, metropolis=s.metropolis, mass=s.mass,
            steps_per_lightning_step=s.steps_per_lightning_step, observe_every=s.observe_every, select=s.select,
            heldout=s.heldout, max_start_shift=s.max_start_shift, vectorize=plain(s.vectorize),
        )
    except (ValueError, TypeError) as err:
        raise ConfigError(f"sampler: {err}") from err


def _train_start(task, settings: dict[str, Any], seed: int, accelerator: str, max_time: float | None = None):
    """One baseline run (recorded every ``every_n_epochs``, stopped after ``max_time`` seconds); returns the trained
    module and its recorder."""
    from datetime import timedelta

    import lightning.pytorch as pl

    from lightning_entropy.baseline import BaselineRecorder, _optimizer_factory

    pl.seed_everything(seed, verbose=False)
    model = task.make_model(seed)
    model.configure_optimizers = _optimizer_factory(model, settings["optimizer"], settings["lr"], settings["momentum"])
    recorder = BaselineRecorder(seed=seed, accuracy_slope=settings["accuracy_slope"], heldout=settings["heldout"],
                                every_n_epochs=settings["every_n_epochs"])
    pl.Trainer(max_epochs=settings["epochs"], accelerator=accelerator, devices=1, logger=False,
               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
               num_sanity_val_steps=0, limit_val_batches=0, callbacks=[recorder],
               max_time=timedelta(seconds=max_time) if max_time is not None else None).fit(model,
                                                                                            datamodule=task.datamodule)
    return model, recorder


def _evaluate(recorder, module, metric: str) -> dict[str, float]:
    values = recorder.evaluate(module).tolist()  # [ln L_train, hard acc, smooth acc, ln L_test]
    row = dict(zip(("ln_train_loss", "hard_test_accuracy", "smooth_test_accuracy", "ln_test_loss"), values))
    return {"ln_train_loss": row["ln_train_loss"], "test_metric": row[metric]}


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


def trace_figure(trace: dict[str, np.ndarray], metric: str | None, *, baseline: dict[str, float],
                 target: float, width: float, ensemble: float | None, title: str):
    """Held-out metric of the walkers over MD time (mean ± std) against the baseline; ln L_train below it."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    step = trace["step"]
    fig, axes = plt.subplots(2 if metric else 1, 1, figsize=(7.5, 6.5 if metric else 3.5), sharex=True, squeeze=False)
    panels = ([(metric, baseline["test_metric"])] if metric else []) + [("ln_train_loss", baseline["ln_train_loss"])]
    for ax, (name, base) in zip(axes[:, 0], panels):
        mean, std = trace[f"{name}_mean"], trace[f"{name}_std"]
        ax.plot(step, mean, color="C0", label="MD walkers (mean ± std)")
        ax.fill_between(step, mean - std, mean + std, color="C0", alpha=0.25, linewidth=0)
        ax.axhline(base, color="C3", linestyle="--", label="baseline (start)")
        if name == "ln_train_loss":
            ax.axhspan(target - width, target + width, color="0.8", alpha=0.6, label="target ± restraint width")
        elif ensemble is not None and math.isfinite(ensemble):
            ax.plot(step[-1:], [ensemble], "k*", markersize=10, label="walker ensemble (end)")
        ax.set_ylabel(name.replace("_", " "))
        ax.legend(fontsize=8, loc="best")
    axes[-1, 0].set_xlabel("MD step")
    axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def run_entropy_md(cfg: DictConfig, out_dir: Path, echo: Callable[[str], None], started: float, *,
                   stack: contextlib.ExitStack | None = None, flag=None, deadline: Deadline | None = None,
                   name: str | None = None) -> dict[str, Any]:
    """The ``entropy_md`` job (see the module docstring); returns the summary it writes to ``summary.json``. The
    baseline takes at most half of the time cap, MD the rest.

    With ``flag`` (from :func:`~lightning_entropy.cli.interrupt.interruptible`) a SIGTERM/SIGINT while the MD runs
    stops it at a Lightning step, writes ``checkpoint.ckpt``, the trace and the summary (``"interrupted"``) of what was
    sampled, and raises :class:`~lightning_entropy.cli.interrupt.Interrupted`; ``resume=<run dir>`` trains the
    baseline again (deterministic) and continues the MD from the checkpoint."""
    import lightning.pytorch as pl

    from lightning_entropy import plotting
    from lightning_entropy.baseline import save_records
    from lightning_entropy.callbacks import SamplerProgressBar
    from lightning_entropy.cli.job import _baseline_settings, _jsonable, make_logger, resume_checkpoint

    out = Path(out_dir).resolve()
    ckpt_path = resume_checkpoint(cfg)
    deadline = deadline or Deadline.of(cfg.trainer.max_time)
    validate(cfg)
    try:
        task = build_task(cfg)
    except ConfigError:
        raise
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"task/model: {err}") from err
    strategy = make_md_strategy(cfg)
    logger = make_logger(cfg, out, name)
    upload.log_config(logger, OmegaConf.to_container(cfg, resolve=True))
    lock = claim(out)  # writable, and no second run on the same directory (released when this process ends)
    if stack is not None and lock is not None:
        stack.callback(lock.close)
    settings = _baseline_settings(cfg)
    seed = settings["seeds"][0]
    timings: dict[str, float] = {}

    t = time.perf_counter()
    model, recorder = _train_start(task, settings, seed, str(cfg.trainer.accelerator), deadline.share(0.5))
    metric = recorder.test_metric
    baseline = _evaluate(recorder, model, metric)
    timings["baseline_s"] = time.perf_counter() - t

    t = time.perf_counter()
    trainer = pl.Trainer(
        strategy=strategy, accelerator=cfg.trainer.accelerator, devices=1, max_steps=int(cfg.trainer.max_steps),
        max_time=deadline.trainer_max_time(), logger=logger, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=bool(cfg.trainer.progress_bar), num_sanity_val_steps=0, limit_val_batches=0,
        log_every_n_steps=int(cfg.trainer.log_every_n_steps), default_root_dir=str(out),
        callbacks=[Checkpointing(out, float(cfg.trainer.get("checkpoint_minutes", 0.0)))]
        + ([SamplerProgressBar()] if cfg.trainer.progress_bar else []), **trainer_extras(cfg),
    )
    try:
        trainer.fit(model, datamodule=task.datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    except ResumeMismatch as err:  # another box, model or data than the checkpoint's: before any MD step
        raise ConfigError(f"resume={cfg.resume}: {err}") from None
    timings["sampler_s"] = time.perf_counter() - t
    stopped = stopped_by(trainer)

    t = time.perf_counter()
    returned = _evaluate(recorder, model, metric)  # the module holds the selected walker
    trace = strategy.trace
    try:
        ensemble = strategy.ensemble_metrics()
    except ValueError as err:  # a module sampled through its own training_step: no averaged prediction to score
        ensemble = {"ln_train_loss": math.nan}
        echo(f"lightning-entropy: no ensemble figures: {err}")
    ensemble_row = {"ln_train_loss": ensemble["ln_train_loss"], "test_metric": ensemble.get(metric, math.nan)}
    walkers_mean = {"ln_train_loss": float(trace["ln_train_loss_mean"][-1]),
                    "test_metric": float(trace[f"{metric}_mean"][-1]) if metric in trace else math.nan}
    result = ensemble_row if strategy.select == "ensemble" else returned
    save_records(recorder.records, out / "baseline.csv")
    write_trace(out / "md_trace.csv", trace, strategy.metric_name)
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    steps = int(trace["step"][-1]) if len(trace["step"]) else 0
    title = (f"{task.name}: {type(model).__name__} ({parameters} params), box {strategy.box}\n"
             f"entropy MD: {strategy.walkers} walkers x {steps:,} steps at ln L_train = {strategy.target:.3f}"
             f" (width {strategy.width:.3g})\nstart: {settings['optimizer']} lr {settings['lr']:g},"
             f" {settings['epochs']} epochs")
    fig = trace_figure(trace, strategy.metric_name, baseline=baseline, target=strategy.target, width=strategy.width,
                       ensemble=ensemble_row["test_metric"], title=title)
    plotting.save(fig, out / "md_trace.png", dpi=int(cfg.plot.dpi))
    higher = "accuracy" in metric
    gain = result["test_metric"] - baseline["test_metric"]
    from lightning_entropy.cli.job import summary_head  # late: job.py imports this module

    summary: dict[str, Any] = {
        **summary_head(cfg, task, model, "entropy_md"),
        "metric": metric,
        "higher_is_better": higher,
        "baseline_test_metric": baseline["test_metric"],
        "test_metric": result["test_metric"],
        "test_metric_gain": gain if higher else -gain,
        "baseline_ln_train_loss": baseline["ln_train_loss"],
        "ln_train_loss": result["ln_train_loss"],
        "target": strategy.target,
        "restraint_width": strategy.width,
        "ln_train_loss_offset_widths": (result["ln_train_loss"] - baseline["ln_train_loss"]) / strategy.width,
        "select": strategy.select,
        "selected_walker": returned,
        "walkers_mean": walkers_mean,
        "ensemble": ensemble_row,
        "box": strategy.box.describe(),
        "walkers": strategy.walkers,
        "steps": steps,
        "walker_steps": steps * strategy.walkers,
        "dt": strategy.dt,
        "acceptance": strategy.acceptance,
        "test_labels_in_dynamics": False,
        "stopped_by": stopped,
        "lightning_steps": int(trainer.global_step),
        "max_steps": int(cfg.trainer.max_steps),
        "baseline": {**{k: settings[k] for k in ("optimizer", "lr", "momentum", "epochs", "every_n_epochs")},
                     "seed": seed, "batch_size": task.description.get("batch_size"),
                     "records": len(recorder.records),
                     "stopped_by_time": bool(recorder.records) and recorder.records[-1]["epoch"] < settings["epochs"],
                     "final": [{"seed": seed, "epoch": recorder.records[-1]["epoch"]}] if recorder.records else []},
        "files": list(MD_FILES),
        "interrupted": signal.Signals(flag.signum).name if flag is not None and flag.signum else None,
    }
    timings["report_s"] = time.perf_counter() - t
    summary.update({"wall_time_s": time.perf_counter() - started, "timings": timings, "run_dir": str(out),
                    "run_name": name, "time_cap_s": deadline.cap, "config": OmegaConf.to_container(cfg, resolve=True)})
    summary = _jsonable(summary)
    with atomic_open(out / "summary.json", "w") as fh:
        json.dump(summary, fh, indent=2)
    if logger:
        logger.log_metrics({"report/baseline_test_metric": baseline["test_metric"],
                            "report/test_metric": result["test_metric"]}, step=int(trainer.global_step))
        upload.upload_files(logger, out, summary["files"], summary)
        logger.save()
        upload.close(logger)
    lines = md_report_lines(summary)
    for line in lines:
        echo(line)
    to_log_files(lines)
    if flag is not None and flag.signum is not None:
        raise Interrupted(flag.signum)  # everything sampled is written; the console script says how to resume
    return summary


def md_report_lines(summary: dict[str, Any]) -> list[str]:
    """A short human summary of an ``entropy_md`` run."""
    from lightning_entropy.cli.job import stop_lines  # late: job.py imports this module
    m = summary["metric"]

    def num(v: Any) -> str:
        return "nan" if v is None else f"{v:.4f}"

    return [
        f"lightning-entropy: {summary['task']}, {summary['model']} ({summary['parameters']} parameters), sampler"
        f" entropy_md ({summary['walkers']} walkers x {summary['steps']:,} MD steps, box {summary['box']})",
        f"  baseline ({summary['baseline']['optimizer']}): {m} {num(summary['baseline_test_metric'])} at ln L_train"
        f" {num(summary['baseline_ln_train_loss'])}",
        f"  entropy_md ({summary['select']}): {m} {num(summary['test_metric'])} at ln L_train"
        f" {num(summary['ln_train_loss'])} (restraint width {summary['restraint_width']:.3g});"
        f" walkers' mean {num(summary['walkers_mean']['test_metric'])},"
        f" ensemble {num(summary['ensemble']['test_metric'])}",
        *stop_lines(summary),
        f"  wall time {summary['wall_time_s']:.1f} s; files: {', '.join(summary['files'])}",
        f"  run directory: {summary['run_dir']}",
    ]
