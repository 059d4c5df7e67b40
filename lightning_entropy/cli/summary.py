"""What a run reports: the first keys of every ``summary.json``, the baseline's column in the landscape's metric, the
final numbers sent to the logger, and the short human report printed at the end (main job and ``entropy_md``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from lightning_entropy import analysis
from lightning_entropy.cli import upload

log = logging.getLogger("lightning_entropy.cli")

#: The optimisers' and samplers' names in titles and report lines.
SAMPLER_NAMES = {"wang_landau": "WLMD", "wang_landau_mc": "WLMC", "adam": "Adam", "sgd": "SGD"}


def estimate(value: float, error: float | None) -> str:
    """``value ± error`` with as many decimals as show the error's first significant digit (at least 3): an error
    of 0.0005 reads ``± 0.0005``, not ``± 0.000``."""
    if error is None or not math.isfinite(error):
        return f"{value:+.3f}"
    decimals = 3 if error <= 0 else min(8, max(3, -math.floor(math.log10(error))))
    return f"{value:+.{decimals}f} ± {error:.{decimals}f}"


def summary_head(cfg: DictConfig, task, model, sampler: str) -> dict[str, Any]:
    """The first keys of every ``summary.json``: task, data, model, its configuration and size, sampler."""
    return {
        "task": task.name,
        "data": task.description,
        "model": type(model).__name__,
        "model_config": OmegaConf.to_container(cfg.model, resolve=True),
        "parameters": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        "sampler": sampler,
    }


def record_metric(records: list[dict[str, float]]) -> str:
    """The column ``test_metric`` copies: hard accuracy for classifiers, ln test loss otherwise."""
    if records and math.isfinite(records[0]["hard_test_accuracy"]):
        return "hard_test_accuracy"
    return "ln_test_loss"


def batches_per_epoch(datamodule) -> int | None:
    """Optimiser steps per epoch of the data module's train loader (``None`` when it has no length before setup)."""
    try:
        return len(datamodule.train_dataloader())
    except Exception:  # noqa: BLE001 - a data module of one's own may need setup() first, or be unsized
        return None


def visited_range(x: np.ndarray, visits: np.ndarray) -> list[float] | None:
    idx = np.flatnonzero(visits > 0)
    return [float(x[idx[0]]), float(x[idx[-1]])] if idx.size else None


def final_per_seed(records: list[dict[str, float]], metric: str) -> list[dict[str, float]]:
    last: dict[int, dict[str, float]] = {}
    for r in records:
        if r["seed"] not in last or r["epoch"] >= last[r["seed"]]["epoch"]:
            last[r["seed"]] = r
    return [{"seed": s, "epoch": r["epoch"], "ln_train_loss": r["ln_train_loss"], metric: r[metric]}
            for s, r in sorted(last.items())]


def identity(a: np.ndarray) -> np.ndarray:
    """The linear axis's transform (:func:`baseline_column`): the values as they are."""
    return a


def logit(a: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """The logit accuracy axis of :mod:`lightning_entropy.core.variables`: ``ln(p / (1 - p))``, ``p = eps + (1-2eps) A``."""
    p = eps + (1 - 2 * eps) * a
    return np.log(p) - np.log1p(-p)


def baseline_column(landscape) -> tuple[str | None, Callable[[np.ndarray], np.ndarray]]:
    """The baseline record column in the landscape's test metric, and the transform onto the landscape's axis.

    2-D: the y axis (smoothed accuracy for MD, hard accuracy for MC, ln test loss; logit axes are transformed the
    same way). 1-D: the recorded observable. ``(None, ...)`` when the metric has no baseline counterpart.
    """
    if landscape.ndim == 2:
        name, label = landscape.names[1], landscape.labels[1]
    elif landscape.observable_names:
        name = label = landscape.observable_names[0]
    else:
        return None, identity
    transform = logit if label.startswith("logit") else identity

    if name == "ln_test_loss" or name == "test_loss":
        return "ln_test_loss", transform
    if "accuracy" in name and "train" not in name:
        smooth = "smoothed" in label
        return ("smooth_test_accuracy" if smooth else "hard_test_accuracy"), transform
    return None, identity


def metric_text(column: str | None, landscape=None) -> str:
    from lightning_entropy.plotting import axis_label

    if landscape is not None and landscape.ndim == 2:
        return axis_label(landscape.names[1], landscape.labels[1])
    return {"hard_test_accuracy": "test accuracy", "smooth_test_accuracy": "smoothed test accuracy",
            "ln_test_loss": axis_label("ln_test_loss")}.get(column or "", column or "test metric")


def log_final(logger: Any, summary: dict[str, Any], out: Path, *, step: int) -> None:
    """Send the final numbers (and the figure, for W&B) to the Lightning logger, if any."""
    if not logger:
        return
    metrics = {k: summary[k] for k in ("flatness", "walker_steps", "wall_time_s") if summary.get(k) is not None}
    for name, adv in (summary.get("advantage_by_readout") or {}).items():
        if adv.get("mean_advantage") is not None:
            metrics[f"report/advantage_{name}"] = adv["mean_advantage"]
    if summary.get("converged") is not None:
        metrics["report/converged"] = float(summary["converged"])
    conv = summary.get("convergence") or {}
    if conv.get("rhat_bins"):  # where the replicas agree: its bins and ends (a sweep's runs compare in the logger)
        metrics["report/agreement_bins"] = float(conv.get("agreement_bins") or 0)
        if conv.get("agreement"):
            metrics["report/agreement_lo"], metrics["report/agreement_hi"] = map(float, conv["agreement"])
        agreed = summary.get("advantage_where_replicas_agree") or {}
        if agreed.get("mean_advantage") is not None:
            metrics["report/advantage_where_replicas_agree"] = agreed["mean_advantage"]
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
    names = analysis.READOUT_NAMES
    for key, adv in (summary.get("advantage_by_readout") or {}).items():
        if adv["bins"]:
            drift = adv.get("mean_advantage_drift")
            moved = f"; moved {drift:+.3f} since the previous snapshot" if drift is not None else ""
            r_hat = adv.get("mean_advantage_r_hat")
            moved += f"; R-hat across replicas {r_hat:.3f}" if r_hat is not None else ""
            span = adv.get("x_range")
            if span is not None:  # advantage.range: the bins asked for, so that runs compare over the same ones
                moved += "; advantage.range [" + ", ".join("open" if v is None else f"{v:g}" for v in span) + "]"
            for note in adv.get("notes") or []:
                if "x_range" in note:
                    moved += f"; {note}"
            lines.append(f"  advantage of the {names.get(key, key)} over the baseline:"
                         f" {estimate(adv['mean_advantage'], adv['mean_advantage_error'])} {adv['metric']}"
                         " (positive: generalizes better; mean"
                         f" over {adv['bins']} ln L_train bins in {_span(adv['ln_train_loss_range'])}{moved})")
        else:
            lines.append(f"  advantage of the {names.get(key, key)}: no bin covered by both curves")
    if summary.get("no_advantage"):
        lines.append(f"  no advantage: {summary['no_advantage']}")
    conv = summary.get("convergence")
    if conv:
        verdict = "converged" if conv["converged"] else "NOT converged: " + "; ".join(conv["reasons"])
        lines.append(f"  convergence: {verdict}")
        span = conv.get("agreement")
        if not conv["converged"] and span is not None:
            others = [t for t in conv.get("tags", []) if t not in analysis.RANGE_TAGS]
            line = (f"  the replicas agree (R-hat of S and of the readouts) over ln L_train in {_span(span)},"
                    f" {conv['agreement_bins']} of the {conv['rhat_bins']} bins with an R-hat: "
                    + ("read the landscape there, and the rest as not settled" if not others else
                       f"but the run fails other tests ({', '.join(others)}), so nothing of it is settled yet"))
            adv = summary.get("advantage_where_replicas_agree")
            if adv and adv.get("bins") and not others:
                r_hat = adv.get("mean_advantage_r_hat")
                line += (f"; advantage of the {names.get(adv['readout'], adv['readout'])} there"
                         f" {estimate(adv['mean_advantage'], adv['mean_advantage_error'])} over {adv['bins']} bins"
                         + (f" (R-hat {r_hat:.3f})" if r_hat is not None else ""))
            lines.append(line)
    lines += stop_lines(summary)
    lines.append(f"  wall time {summary['wall_time_s']:.1f} s; files: {', '.join(summary['files'])}")
    lines.append(f"  run directory: {summary['run_dir']}")
    return lines


def md_report_lines(summary: dict[str, Any]) -> list[str]:
    """A short human summary of an ``entropy_md`` run."""
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


def publish(lines: list[str], echo: Callable[[str], None], flag=None) -> None:
    """Print the report ``lines`` and write them into the job's log file (Hydra's ``main.log``); then, if a signal
    stopped the run (``flag``), raise :class:`~lightning_entropy.cli.interrupt.Interrupted` (everything sampled is
    written; the console script says how to resume)."""
    from lightning_entropy.cli.interrupt import Interrupted
    from lightning_entropy.cli.runlog import to_log_files

    for line in lines:
        echo(line)
    to_log_files(lines)
    if flag is not None and flag.signum is not None:
        raise Interrupted(flag.signum)
