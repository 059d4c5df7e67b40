"""Many runs side by side: the table of a sweep's advantages against model size (from their ``summary.json``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def width_table(summaries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run of a sweep, sorted by task and parameter count: the advantage against model size.

    Each summary is a run's ``summary.json`` (as a dict).
    """
    rows = []
    for s in summaries:
        adv = s.get("advantage") or {}
        conv = s.get("convergence") or {}
        rows.append({
            "run": s.get("run_name") or s.get("run_dir"),
            "task": s.get("task"),
            "model": s.get("model_config"),
            "parameters": s.get("parameters"),
            "sampler": s.get("sampler"),
            "metric": _metric(s, adv),
            "readout": adv.get("readout"),
            "mean_advantage": adv.get("mean_advantage"),
            "mean_advantage_error": adv.get("mean_advantage_error"),
            "mean_advantage_r_hat": adv.get("mean_advantage_r_hat"),
            "bins": adv.get("bins"),
            "converged": conv.get("converged"),
        })
    rows.sort(key=lambda r: (str(r["task"]), r["parameters"] or 0))
    return rows


def _metric(summary: dict, adv: dict) -> str | None:
    """The advantage's metric with its units: a 2-D readout on a logit accuracy axis is in logits (summaries written
    before the advantage named it so say only the metric)."""
    metric = adv.get("metric")
    axis = (summary.get("axis_labels") or [""])[-1]
    if metric and not metric.startswith("logit") and axis.startswith("logit") and adv.get("readout") != "label_free":
        return f"logit_{metric}"
    return metric
