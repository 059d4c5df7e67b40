"""``lightning-entropy sampler=entropy_md``: train the baseline, then hold its train loss with MD and compare.

Order of work (called by :func:`lightning_entropy.cli.job.run`; the building, the baseline run, the writers and the
report lines are the main job's, from :mod:`~lightning_entropy.cli.build`, :mod:`~lightning_entropy.baseline`,
:mod:`~lightning_entropy.cli.writers` and :mod:`~lightning_entropy.cli.summary`):

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
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_entropy.cli import upload
from lightning_entropy.cli.build import baseline_settings, build, make_strategy, make_trainer, resume_checkpoint
from lightning_entropy.cli.config import ConfigError
from lightning_entropy.cli.deadline import Deadline, stopped_by
from lightning_entropy.cli.rundir import claim
from lightning_entropy.cli.summary import md_report_lines, publish, summary_head
from lightning_entropy.cli.writers import write_summary, write_trace
from lightning_entropy.core.fingerprint import ResumeMismatch

MD_FILES = ("baseline.csv", "md_trace.csv", "md_trace.png", "summary.json")


def make_md_strategy(cfg: DictConfig):
    """The :class:`~lightning_entropy.EntropyMDStrategy` of ``cfg.sampler`` (see
    :func:`lightning_entropy.cli.build.make_strategy`)."""
    return make_strategy(cfg)


def _evaluate(recorder, module, metric: str) -> dict[str, float]:
    values = recorder.evaluate(module).tolist()  # [ln L_train, hard acc, smooth acc, ln L_test]
    row = dict(zip(("ln_train_loss", "hard_test_accuracy", "smooth_test_accuracy", "ln_test_loss"), values))
    return {"ln_train_loss": row["ln_train_loss"], "test_metric": row[metric]}


def run_entropy_md(cfg: DictConfig, out_dir: Path, echo: Callable[[str], None], started: float, *,
                   stack: contextlib.ExitStack | None = None, flag=None, deadline: Deadline | None = None,
                   name: str | None = None) -> dict[str, Any]:
    """The ``entropy_md`` job (see the module docstring); returns the summary it writes to ``summary.json``. The
    baseline takes at most half of the time cap, MD the rest.

    With ``flag`` (from :func:`~lightning_entropy.cli.interrupt.interruptible`) a SIGTERM/SIGINT while the MD runs
    stops it at a Lightning step, writes ``checkpoint.ckpt``, the trace and the summary (``"interrupted"``) of what was
    sampled, and raises :class:`~lightning_entropy.cli.interrupt.Interrupted`; ``resume=<run dir>`` trains the
    baseline again (deterministic) and continues the MD from the checkpoint."""
    from lightning_entropy import plotting
    from lightning_entropy.baseline import save_records, train_one

    out = Path(out_dir).resolve()
    ckpt_path = resume_checkpoint(cfg)
    deadline = deadline or Deadline.of(cfg.trainer.max_time)
    built = build(cfg, out, name)
    task, strategy, logger = built["task"], built["strategy"], built["logger"]
    upload.log_config(logger, OmegaConf.to_container(cfg, resolve=True))
    lock = claim(out)  # writable, and no second run on the same directory (released when this process ends)
    if stack is not None and lock is not None:
        stack.callback(lock.close)
    settings = baseline_settings(cfg)
    seed = settings["seeds"][0]
    timings: dict[str, float] = {}

    t = time.perf_counter()
    model, recorder = train_one(lambda s: (task.datamodule, task.make_model(s)), seed, epochs=settings["epochs"],
                                optimizer=settings["optimizer"], lr=settings["lr"], momentum=settings["momentum"],
                                accuracy_slope=settings["accuracy_slope"], every_n_epochs=settings["every_n_epochs"],
                                heldout=settings["heldout"], accelerator=str(cfg.trainer.accelerator),
                                max_time=deadline.share(0.5))
    metric = recorder.test_metric
    baseline = _evaluate(recorder, model, metric)
    timings["baseline_s"] = time.perf_counter() - t

    t = time.perf_counter()
    trainer = make_trainer(cfg, strategy, out, logger=logger, max_time=deadline.trainer_max_time())
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
    fig = plotting.trace_figure(trace, strategy.metric_name, baseline=baseline, target=strategy.target, width=strategy.width,
                       ensemble=ensemble_row["test_metric"], title=title)
    plotting.save(fig, out / "md_trace.png", dpi=int(cfg.plot.dpi))
    higher = "accuracy" in metric
    gain = result["test_metric"] - baseline["test_metric"]
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
        "restraint_center": strategy.center,
        "hold": strategy.hold,
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
    summary = write_summary(out / "summary.json", summary)
    if logger:
        logger.log_metrics({"report/baseline_test_metric": baseline["test_metric"],
                            "report/test_metric": result["test_metric"]}, step=int(trainer.global_step))
        upload.upload_files(logger, out, summary["files"], summary)
        logger.save()
        upload.close(logger)
    publish(md_report_lines(summary), echo, flag)
    return summary


__all__ = ["MD_FILES", "make_md_strategy", "md_report_lines", "run_entropy_md"]
