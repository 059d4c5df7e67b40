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

The pieces live beside this file: building (:mod:`~lightning_entropy.cli.build`), the baseline process
(:mod:`~lightning_entropy.cli.baselines`), the summary and report lines (:mod:`~lightning_entropy.cli.summary`), the
file writers (:mod:`~lightning_entropy.cli.writers`) and the figures (:mod:`lightning_entropy.plotting`).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from lightning_entropy.cli import baselines, naming, upload
from lightning_entropy.cli.build import (
    baseline_settings,
    box_rule,
    build,
    job_environment,
    make_strategy,
    make_trainer,
    resume_checkpoint,
    sweep_group,
)
from lightning_entropy.cli.config import ENTROPY_MD_KINDS, OPTIMIZER_KINDS, ConfigError
from lightning_entropy.cli.deadline import BASELINE_LEAD_S, Deadline, stopped_by
from lightning_entropy.cli.interrupt import CHECKPOINT, Interrupted, checkpointed_sampler, interruptible
from lightning_entropy.cli.md_job import run_entropy_md
from lightning_entropy.cli.rundir import claim
from lightning_entropy.cli.summary import (
    SAMPLER_NAMES,
    baseline_column,
    batches_per_epoch,
    final_per_seed,
    identity,
    log_final,
    metric_text,
    publish,
    record_metric,
    report_lines,
    summary_head,
    visited_range,
)
from lightning_entropy.cli.writers import CURVE_COLUMNS, write_curves, write_summary
from lightning_entropy.core import nonfinite
from lightning_entropy.core.fingerprint import ResumeMismatch

#: Files of a Wang-Landau run, and of an optimiser-only run.
LANDSCAPE_FILES = ("landscape.npz", "landscape.png", "curves.csv", "baseline.csv", "summary.json")
BASELINE_FILES = ("baseline.png", "curves.csv", "baseline.csv", "summary.json")

__all__ = ["BASELINE_FILES", "CURVE_COLUMNS", "LANDSCAPE_FILES", "box_rule", "make_strategy",
           "resume_checkpoint", "run"]  # the building and the writers are the job's, re-exported for its callers


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
    with job_environment(int(cfg.trainer.threads) if "trainer" in cfg else 0):
        with contextlib.ExitStack() as stack:
            flag = stack.enter_context(interruptible())  # SIGTERM/SIGINT: keep what was sampled, then Interrupted
            if OmegaConf.select(cfg, "sampler.kind") in ENTROPY_MD_KINDS:  # the training mode has its own path
                return run_entropy_md(cfg, Path(out_dir), echo, started, stack=stack, flag=flag, deadline=deadline,
                                      name=name)
            return _run(cfg, Path(out_dir), echo, started, stack=stack, flag=flag, deadline=deadline, name=name)


def _run(cfg: DictConfig, out_dir: Path, echo: Callable[[str], None], started: float, *,
         stack: contextlib.ExitStack | None = None, flag=None, deadline: Deadline | None = None,
         name: str | None = None) -> dict[str, Any]:
    run_name = name
    from lightning_entropy.baseline import save_records

    out = out_dir.resolve()
    ckpt_path = resume_checkpoint(cfg)
    deadline = deadline or Deadline.of(cfg.trainer.max_time)
    built = build(cfg, out, name)
    lock = claim(out)  # writable, and no second run on the same directory; before any sampling
    if stack is not None and lock is not None:
        stack.callback(lock.close)
    task, model, logger = built["task"], built["model"], built["logger"]
    strategy = built.get("strategy")
    kind = cfg.sampler.kind
    settings = baseline_settings(cfg)
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
    rank_failure: str | None = None  # a rank's error while the ranks stopped (the report comes from the checkpoint)
    records: list[dict[str, float]] = []
    if want_baseline and strategy is not None and cfg.baseline.parallel:
        process = baselines.start_process(cfg, settings, out, deadline.wall_clock(BASELINE_LEAD_S))
    elif want_baseline:
        t = time.perf_counter()
        share = deadline.share(1.0 if strategy is None else 0.5)  # before the sampler: at most half of the cap
        records = baselines.train_here(task, settings, int(cfg.baseline.threads) or None, share)
        timings["baseline_s"] = time.perf_counter() - t

    try:
        # 3. the landscape
        landscape = None
        if strategy is not None:
            t = time.perf_counter()
            sampler_cap = deadline.trainer_max_time()  # what is left of the job's cap
            if sampler_cap is not None:
                timings["sampler_cap_s"] = sampler_cap.total_seconds()
            trainer = make_trainer(cfg, strategy, out, logger=logger, max_time=sampler_cap, landscape_logger=True)
            if flag is not None and int(cfg.trainer.devices) > 1:
                flag.delegate(trainer.strategy.launcher)  # the ranks sample: signals are forwarded to them
            fit_started = time.time()
            try:
                trainer.fit(model, datamodule=task.datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
                stopped = stopped_by(trainer, interrupted=flag is not None and flag.signum is not None)
                lightning_steps = int(trainer.global_step)
            except ResumeMismatch as err:  # another box, model, data or grid than the checkpoint's: before sampling
                raise ConfigError(f"resume={cfg.resume}: {err}") from None
            except Exception as err:  # the ranks were told to stop and one failed on its way out
                if flag is None or flag.launcher is None or flag.signum is None:
                    raise
                lightning_steps = _from_checkpoint(strategy, out / CHECKPOINT, since=fit_started)
                if lightning_steps is None:  # stopped before sampling began (no checkpoint of this fit): nothing lost
                    raise Interrupted(flag.signum) from err
                stopped, rank_failure = "interrupted", f"{type(err).__name__}: {err}"
                echo(f"lightning-entropy: a rank failed while stopping ({rank_failure}); the report is written from"
                     f" the checkpoint the ranks saved at Lightning step {lightning_steps}")
            landscape = strategy.landscape
            timings["sampler_s"] = time.perf_counter() - t
        if flag is not None and flag.signum is not None and process is not None:
            process.kill()  # interrupted: the baseline is re-trained on resume; keep the landscape now
            process.wait()
        elif process is not None:
            t = time.perf_counter()
            records = baselines.finish_process(process, out)
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
    column = None
    if landscape is not None:
        column = _landscape_report(cfg, task, model, strategy, landscape, records, out, files, summary,
                                   parameters=parameters, optimizer_name=optimizer_name, baseline_text=baseline_text,
                                   stopped=stopped, lightning_steps=lightning_steps)
    else:
        _optimizer_report(cfg, task, model, records, out, files, summary, parameters=parameters,
                          optimizer_name=optimizer_name, baseline_text=baseline_text, settings=settings)
    if want_baseline:
        metric_col = column if landscape is not None and column is not None else record_metric(records)
        final = final_per_seed(records, metric_col) if records else []
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
        "wandb_group": sweep_group() if cfg.logger.kind == "wandb" else None,  # one group per sweep
        "run_name": run_name,
        "time_cap_s": deadline.cap,
        "interrupted": signal.Signals(flag.signum).name if flag is not None and flag.signum else None,
        **({"rank_failure": rank_failure} if rank_failure else {}),
    })
    steps_per_call = int(cfg.sampler.get("steps_per_lightning_step", 1))
    summary = write_summary(out / "summary.json", summary)
    log_final(logger, summary, out, step=lightning_steps if lightning_steps is not None else
               int(summary.get("steps") or 0) // max(steps_per_call, 1))
    publish(report_lines(summary), echo, flag)
    return summary


def _from_checkpoint(strategy, path: Path, *, since: float) -> int | None:
    """After a failed multi-process fit: ``strategy`` takes the sampler state the ranks checkpointed at ``path`` during
    this fit (written at or after ``since``), as it takes rank 0's state after a fit that ends well. Returns the
    checkpoint's Lightning step, or ``None`` when there is no such checkpoint (nothing was sampled)."""
    found = checkpointed_sampler(path, since=since)
    if found is None or not hasattr(strategy, "_adopt"):
        return None
    state, step = found
    strategy._adopt(state)
    return step


def _landscape_report(cfg: DictConfig, task, model, strategy, landscape, records: list[dict[str, float]], out: Path,
                      files: list[str], summary: dict[str, Any], *, parameters: int, optimizer_name: str,
                      baseline_text: str, stopped: str | None, lightning_steps: int | None) -> str | None:
    """The landscape's files (npz, figures, ``curves.csv``) and summary entries; returns the baseline's column in the
    landscape's metric (``None`` without one)."""
    from lightning_entropy import analysis, plotting
    from lightning_entropy.baseline import pool

    kind = cfg.sampler.kind
    column, transform = baseline_column(landscape)
    curve = None
    if records and column is not None:
        rows = [{"ln_train_loss": r["ln_train_loss"], "value": float(transform(np.float64(r[column])))}
                for r in records]
        curve = pool(rows, metric="value", edges=landscape.edges[0])
        # the curve, and every advantage read against it, is in the landscape's axis units: name a logit axis
        curve.metric = column if transform is identity else f"logit_{column}"
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
    conv = analysis.convergence(landscape, walkers=total_walkers, readouts=reads)
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
        span = cfg.advantage.range
        advantages = {name: analysis.advantage(r, curve, higher_is_better=better, in_window=in_window,
                                               x_range=None if span is None else list(span))
                      for name, r in reads.items()}
    conv = analysis.with_readouts(conv, advantages, reads)
    agreed = None  # the main readout's advantage over the bins where the replicas agree, inside advantage.range
    if primary in advantages and conv.agreement is not None:
        lo, hi = conv.agreement
        span = cfg.advantage.range
        if span is not None:
            lo = lo if span[0] is None else max(lo, float(span[0]))
            hi = hi if span[1] is None else min(hi, float(span[1]))
        if lo < hi:
            agreed = analysis.advantage(reads[primary], curve, higher_is_better="accuracy" in column,
                                        in_window=in_window, x_range=[lo, hi])
    fig = plotting.landscape_figure(landscape, baseline=curve, baseline_label=optimizer_name, title=title,
                                    exclude=int(cfg.plot.exclude), readouts=reads, convergence=conv)
    plotting.save(fig, out / "landscape.png", dpi=int(cfg.plot.dpi))
    files.append("landscape.png")
    picture = getattr(strategy, "picture", None)  # a 1-D walk's label-free S(x, y) = S(x) + ln p(y | x)
    if picture is not None:
        picture.save(out / "landscape_label_free.npz")
        fig = plotting.landscape_figure(
            picture, baseline=curve, baseline_label=optimizer_name, exclude=int(cfg.plot.exclude),
            readouts=analysis.readouts(picture, exclude=int(cfg.plot.exclude)), convergence=conv,
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
    # per bin, R-hat across replicas of S and of the main readout (NaN where unknown): where the run can be read
    if landscape.entropy_r_hat is not None:
        columns["entropy_r_hat"] = landscape.entropy_r_hat
    if primary and reads[primary].r_hat is not None:
        columns["readout_r_hat"] = reads[primary].r_hat
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
            "visited_ln_train_loss": visited_range(x, visits),
        },
        "advantage": main.summary() if main is not None else None,
        "mean_advantage": main.mean_advantage if main is not None else None,
        "advantage_by_readout": {k: v.summary() for k, v in advantages.items()},
        "advantage_where_replicas_agree": agreed.summary() if agreed is not None else None,
        "no_advantage": no_advantage,
    })
    return column


def _optimizer_report(cfg: DictConfig, task, model, records: list[dict[str, float]], out: Path, files: list[str],
                      summary: dict[str, Any], *, parameters: int, optimizer_name: str, baseline_text: str,
                      settings: dict[str, Any]) -> None:
    """An optimiser alone: the baseline figure, ``curves.csv`` and the summary entries."""
    from lightning_entropy import plotting
    from lightning_entropy.baseline import pool

    curve = pool(records, metric="test_metric") if records else None
    ylabel = metric_text(record_metric(records))
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
    batches = batches_per_epoch(task.datamodule)  # optimiser steps per epoch (1: full batch)
    summary.update({"box": None, "steps": int(settings["epochs"]) * batches if batches else None,
                    "walkers": None, "walker_steps": None, "flatness": None})
