"""``lightning-entropy-report DIR``: one figure and one table for the runs of a sweep (a Hydra multirun directory, or
any directory holding run directories with a ``summary.json``).

Writes into ``DIR`` (or ``--out``):

- ``report.png``: the landscapes side by side, each with its max-S line, Eq. (1) curve and baseline;
- ``width_study.png``: the mean high-entropy advantage against parameter count, one line per task;
- ``report.csv`` and ``report.md``: one row per run (task, the overrides that made it, parameters, walkers x
  steps, the advantage with its error, its R-hat across replicas and the bins it covers, convergence);

and prints the table. Runs without a landscape (``sampler=adam``) appear in the table only.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

TABLE_COLUMNS = ("run", "task", "overrides", "parameters", "sampler", "walkers", "steps", "metric", "readout",
                 "mean_advantage", "mean_advantage_error", "mean_advantage_r_hat", "bins", "converged", "flatness")


def find_runs(root: str | Path) -> list[Path]:
    """Run directories under ``root`` (``root`` itself included): those holding a ``summary.json``, in a stable
    order (Hydra's job numbers sort numerically)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{str(root)!r} is not a directory: give a multirun directory (multirun/<date>/<time>)"
                                " or a run directory holding summary.json.")
    runs = sorted({p.parent for p in root.rglob("summary.json")},
                  key=lambda p: [int(s) if s.isdigit() else s for s in p.relative_to(root).parts])
    if not runs:
        raise FileNotFoundError(f"No summary.json under {str(root)!r}: did the runs finish? Each run directory of"
                                " `lightning-entropy -m ...` holds one when its job completes.")
    return runs


QUIET = ("trainer.progress_bar=", "task.path=", "hydra.", "logger=")


def _overrides(run: Path) -> str:
    path = run / ".hydra" / "overrides.yaml"
    if not path.exists():
        return ""
    from omegaconf import OmegaConf

    return " ".join(str(item) for item in OmegaConf.load(path))  # Hydra writes the overrides as a YAML list


def load_summaries(runs: Sequence[Path]) -> list[dict[str, Any]]:
    """The runs' summaries; a corrupt or unreadable ``summary.json`` is skipped with a warning naming the file."""
    out = []
    for run in runs:
        try:
            with open(run / "summary.json") as fh:
                summary = json.load(fh)
            if not isinstance(summary, dict):
                raise ValueError(f"a JSON {type(summary).__name__}, not an object")
        except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            warnings.warn(f"Skipping {run / 'summary.json'}: unreadable ({err}); re-run that run to include it.",
                          stacklevel=2)
            continue
        summary["run_dir"] = str(run)
        summary["run_name"] = run.name
        summary["overrides"] = _overrides(run)
        out.append(summary)
    if runs and not out:
        raise ValueError(f"None of the {len(runs)} summary.json files under the runs is readable; re-run the runs.")
    for s in out:  # settings that do not tell runs apart
        s["overrides"] = " ".join(t for t in s["overrides"].split() if not t.startswith(QUIET))
    if len(out) > 1:  # name each run by what differs between the runs (the swept values)
        common = set.intersection(*(set(s["overrides"].split()) for s in out))
        for s in out:
            s["overrides"] = " ".join(t for t in s["overrides"].split() if t not in common)
    return out


def table(summaries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    from lightning_entropy.analysis import width_table

    rows = width_table(summaries)
    extra = {s.get("run_name") or s.get("run_dir"): s for s in summaries}
    for row in rows:
        s = extra[row["run"]]
        row.update({"overrides": s.get("overrides", ""), "walkers": s.get("walkers"), "steps": s.get("steps"),
                    "flatness": s.get("flatness")})
    return [{k: row.get(k) for k in TABLE_COLUMNS} for row in rows]


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def write_table(rows: Sequence[dict[str, Any]], out: Path) -> tuple[Path, Path]:
    with open(out / "report.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(v) for k, v in row.items()})
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(_fmt(row[k]) for k in TABLE_COLUMNS) + " |" for row in rows]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.csv", out / "report.md"


def _baseline_from_curves(path: Path, edges: np.ndarray):
    """The pooled baseline a run wrote into its curves.csv, on the landscape's x edges (None without one)."""
    from lightning_entropy.baseline_curve import BaselineCurve

    if not path.exists():
        return None
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    if len(rows) != edges.size - 1 or "baseline_mean" not in rows[0]:
        return None
    get = lambda key: np.array([float(r.get(key, "nan") or "nan") for r in rows])  # noqa: E731
    count = get("baseline_count")
    if not np.nansum(count):
        return None
    return BaselineCurve(edges, get("baseline_mean"), get("baseline_std"), np.nan_to_num(count).astype(int), "baseline")


def landscapes_figure(summaries: Sequence[dict[str, Any]], *, columns: int = 3):
    """The landscapes of the runs side by side (runs without ``landscape.npz`` are skipped); None if there are none."""
    from matplotlib.figure import Figure

    from lightning_entropy import analysis, plotting
    from lightning_entropy.cli.summary import SAMPLER_NAMES, estimate
    from lightning_entropy.core.landscape import Landscape

    runs = [s for s in summaries if (Path(s["run_dir"]) / "landscape.npz").exists()]
    if not runs:
        return None
    cols = min(columns, len(runs))
    rows = math.ceil(len(runs) / cols)
    fig = Figure(figsize=(5.4 * cols, 4.0 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).reshape(-1)
    for i, (ax, s) in enumerate(zip(axes, runs)):
        run = Path(s["run_dir"])
        land = Landscape.load(run / "landscape.npz")
        exclude = int(((s.get("config") or {}).get("plot") or {}).get("exclude", 1))
        reads = analysis.readouts(land, exclude=exclude)
        conv = analysis.convergence(land, walkers=s.get("walkers"), readouts=reads)
        baseline = _baseline_from_curves(run / "curves.csv", land.edges[0])
        optimizer = str((s.get("baseline") or {}).get("optimizer") or "baseline")
        label = SAMPLER_NAMES.get(optimizer, optimizer)  # the baseline's optimiser, as the run's own figure names it
        plotting.draw_landscape(fig, ax, land, baseline=baseline, baseline_label=label, exclude=exclude,
                                readouts=reads, convergence=conv, legend=i == 0, mark=False)
        adv = s.get("mean_advantage")
        err = (s.get("advantage") or {}).get("mean_advantage_error")
        text = "" if adv is None else f"; advantage {estimate(adv, err)}"
        stated = s.get("convergence") or {}  # the run's own verdict (readouts included), as its summary states it
        title, color = plotting.verdict_title(
            f"{s.get('task')} {s.get('overrides') or s.get('run_name')}\n{s.get('parameters')} params{text}",
            stated.get("converged", conv.converged), stated.get("tags", conv.tags),
            hatched=not conv.converged and conv.agreement is not None)
        ax.set_title(title, fontsize=9, color=color)
    for ax in axes[len(runs):]:
        ax.set_visible(False)
    return fig


def report(root: str | Path, out: str | Path | None = None, *, echo=print) -> dict[str, Any]:
    """Aggregate the runs under ``root``; write the figures and tables into ``out`` (default ``root``)."""
    from lightning_entropy import plotting

    root = Path(root)
    out = Path(out) if out is not None else root
    summaries = load_summaries(find_runs(root))  # fails before anything is written
    out.mkdir(parents=True, exist_ok=True)
    rows = table(summaries)
    files = list(write_table(rows, out))
    fig = landscapes_figure(summaries)
    if fig is not None:
        files.append(plotting.save(fig, out / "report.png"))
    if any(r["mean_advantage"] is not None for r in rows):
        files.append(plotting.save(plotting.width_figure(rows, title=f"high-entropy advantage: {root.name}"),
                                   out / "width_study.png"))
    echo((out / "report.md").read_text().rstrip())
    echo(f"{len(rows)} runs; wrote " + ", ".join(str(Path(f).name) for f in files) + f" into {out}")
    return {"rows": rows, "files": [str(f) for f in files]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lightning-entropy-report",
        description="Aggregate the runs of a lightning-entropy sweep into one figure and one table.")
    parser.add_argument("directory", help="a multirun directory (multirun/<date>/<time>) or any directory of runs")
    parser.add_argument("--out", default=None, help="where to write report.png, width_study.png, report.csv/.md"
                                                    " (default: the directory)")
    args = parser.parse_args(argv)
    try:
        report(args.directory, args.out)
    except FileNotFoundError as err:
        print(f"lightning-entropy-report: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
