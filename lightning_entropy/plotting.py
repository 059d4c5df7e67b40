"""Matplotlib figures of entropy landscapes and optimiser baselines, readable at a glance.

- :func:`landscape_figure`: the heatmap of ``S - max S`` (nats) over (ln L_train, test metric) with the max-S line
  (the test-axis position of max S per train-loss bin), the Eq. (1) mean curve (the exp(S)-weighted test metric per
  train-loss bin) and, when given, the optimiser baseline with its spread. A 1-D landscape is drawn as ``S(x)`` with
  its unbiased observable curve and the baseline on a second axis.
- :func:`baseline_figure`: the baseline curve alone (``lightning-entropy sampler=adam``).
- :func:`trace_figure`: the held-out metric of entropy-MD walkers over MD time against the baseline
  (``lightning-entropy sampler=entropy_md``).

The figures are built with :class:`matplotlib.figure.Figure` directly (no ``pyplot`` state, no GUI backend), so they
can be made from any thread or process; :func:`save` writes one to disk.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from lightning_entropy.analysis import inside_window

if TYPE_CHECKING:
    from lightning_entropy.analysis import Convergence, Readout
    from lightning_entropy.baseline_curve import BaselineCurve
    from lightning_entropy.core.landscape import Landscape

MAX_S_COLOR = "#ff00ff"  # the paper's magenta line
MEAN_COLOR = "white"
BASELINE_COLOR = "#ff7f0e"
MARK_COLOR = "#b00000"  # the not-converged mark


def axis_label(name: str, label: str | None = None) -> str:
    """Axis text in the paper's units for a CV ``name`` (its ``label`` from the landscape when it says more)."""
    if name == "ln_train_loss":
        return r"$\ln L_\mathrm{train}$ (ln of full-batch train loss)"
    if name == "ln_test_loss":
        return r"$\ln L_\mathrm{test}$ (ln of full-batch held-out loss)"
    if label and label.startswith("smoothed A_test"):
        return "smoothed test accuracy " + label[len("smoothed A_test"):].strip()
    if label and label.startswith("logit"):
        return f"logit of {label[len('logit'):].strip()}"
    if name in ("test_accuracy", "hard_test_accuracy") or label == "A_test":
        return "test accuracy"
    return label or name


def _view(edges: np.ndarray, visited: np.ndarray, pad: int = 2) -> tuple[float, float]:
    """Axis limits around the visited bins of one axis, ``pad`` bins wider on each side."""
    idx = np.flatnonzero(visited)
    if idx.size == 0:
        return float(edges[0]), float(edges[-1])
    lo, hi = max(idx[0] - pad, 0), min(idx[-1] + 1 + pad, edges.size - 1)
    return float(edges[lo]), float(edges[hi])


def _draw_baseline(ax, curve: BaselineCurve, label: str) -> None:
    ok = curve.count > 0
    if not ok.any():
        return
    x, m = curve.centers, curve.mean
    s = np.where(np.isfinite(curve.std), curve.std, 0.0)
    ax.fill_between(x, np.where(ok, m - s, np.nan), np.where(ok, m + s, np.nan), color=BASELINE_COLOR, alpha=0.25,
                    linewidth=0, label=f"{label} ± 1 std")
    ax.plot(x[ok], m[ok], "o-", color=BASELINE_COLOR, markersize=2.5, linewidth=1.6, label=f"{label} mean")


def landscape_figure(
    landscape: Landscape,
    *,
    baseline: BaselineCurve | None = None,
    baseline_label: str = "Adam",
    title: str | None = None,
    exclude: int = 1,
    readouts: dict[str, Readout] | None = None,
    convergence: Convergence | None = None,
    figsize: tuple[float, float] = (8.0, 5.6),
) -> Figure:
    """The landscape with its max-S line, Eq. (1) mean curve and (optionally) the baseline.

    Args:
        landscape: a 1-D or 2-D :class:`~lightning_entropy.Landscape`.
        baseline: the baseline pooled on the landscape's x bins (:func:`lightning_entropy.baseline.pool`), in the
            same metric as the landscape's test axis.
        baseline_label: legend name of the baseline (the optimiser).
        title: figure title.
        exclude: test-axis rows ignored at each end by the max-S line.
        readouts: :func:`lightning_entropy.analysis.readouts` of the landscape: the curves are drawn from them with
            their error bands, solid where well sampled and dotted where under-sampled.
        convergence: :func:`lightning_entropy.analysis.convergence`: a run that is not converged says so on the
            figure.
    """
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    draw_landscape(fig, ax, landscape, baseline=baseline, baseline_label=baseline_label, exclude=exclude,
                   readouts=readouts, convergence=convergence)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def _draw_readout(ax, readout: Readout, color: str, style: str, label: str) -> None:
    """A readout curve: solid on well-sampled bins with a ±1 standard-error band, dotted on under-sampled ones."""
    x, v, e = readout.x, readout.value, readout.error
    good = np.where(~readout.undersampled, v, np.nan)
    ax.plot(x, v, ":", color=color, linewidth=1.2)
    ax.plot(x, good, style, color=color, linewidth=2.0, label=label)
    if np.isfinite(e).any():
        ax.fill_between(x, good - np.nan_to_num(e), good + np.nan_to_num(e), color=color, alpha=0.25, linewidth=0)


def draw_landscape(
    fig: Figure,
    ax,
    landscape: Landscape,
    *,
    baseline: BaselineCurve | None = None,
    baseline_label: str = "Adam",
    exclude: int = 1,
    readouts: dict[str, Readout] | None = None,
    convergence: Convergence | None = None,
    legend: bool = True,
    mark: bool = True,
) -> None:
    """Draw :func:`landscape_figure`'s content into ``ax`` (of ``fig``), e.g. one panel of a sweep figure.

    ``mark=False`` leaves the not-converged mark to the caller (a panel's title, :func:`verdict_title`); the x where
    the replicas disagree is hatched either way.
    """
    s = landscape.entropy
    xe = landscape.edges[0]
    xlabel = axis_label(landscape.names[0], landscape.labels[0])
    show_mark, mark = mark, None  # the not-converged mark: a legend's title where the legend could cover a box
    if show_mark and convergence is not None and not convergence.converged:
        mark = "NOT CONVERGED\n" + "\n".join(convergence.tags)
        if convergence.agreement is not None:
            mark += "\nreplicas agree outside the hatched x"
    top = ax  # the axes drawn last (a twin axes covers the one below it)
    if landscape.ndim == 2:
        ye = landscape.edges[1]
        finite = np.isfinite(s)
        mesh = ax.pcolormesh(xe, ye, np.ma.masked_invalid(s.T), cmap="viridis", shading="flat", rasterized=True)
        cbar = fig.colorbar(mesh, ax=ax)
        cbar.set_label("S - max S (nats)")
        max_label, mean_label = "max S (per train-loss bin)", "exp(S)-weighted mean (Eq. (1))"
        if readouts is not None and "max_s" in readouts:
            _draw_readout(ax, readouts["max_s"], MAX_S_COLOR, "-", max_label)
            _draw_readout(ax, readouts["mean_curve"], MEAN_COLOR, "--", mean_label)
        else:
            x, y_max = landscape.max_entropy_curve(exclude=exclude)
            ax.plot(x, y_max, "-", color=MAX_S_COLOR, linewidth=2.0, label=max_label)
            x, y_mean = landscape.mean_curve()
            ax.plot(x, y_mean, "--", color=MEAN_COLOR, linewidth=1.8, label=mean_label)
        if baseline is not None:
            _draw_baseline(ax, baseline, baseline_label)
        x_lo, x_hi = _view(xe, finite.any(axis=1) & inside_window(landscape))
        y_lo, y_hi = _view(ye, finite.any(axis=0))
        if baseline is not None and (baseline.count > 0).any():  # keep the baseline in view (inside the grid)
            ok = (baseline.count > 0) & inside_window(landscape)
            spread = np.nan_to_num(baseline.std)
            if ok.any():
                x_lo = min(x_lo, float(baseline.edges[:-1][ok].min()))
                x_hi = max(x_hi, float(baseline.edges[1:][ok].max()))
                y_lo = max(float(ye[0]), min(y_lo, float(np.nanmin((baseline.mean - spread)[ok]))))
                y_hi = min(float(ye[-1]), max(y_hi, float(np.nanmax((baseline.mean + spread)[ok]))))
        ax.set_xlim(x_lo, x_hi)
        ax.set_ylim(y_lo, y_hi)
        ax.set_ylabel(axis_label(landscape.names[1], landscape.labels[1]))
        ax.set_facecolor("#d9d9d9")
        if legend:
            box = ax.legend(loc="lower left", fontsize=8, framealpha=0.85)  # low loss + low accuracy: empty
            box.get_frame().set_facecolor("#f0f0f0")
    else:
        finite = np.isfinite(s)
        x = landscape.centers[0]
        ax.plot(x, s, "-", color="black", label="S - max S")
        ax.set_ylabel("S - max S (nats)")
        ax.set_xlim(*_view(xe, finite & inside_window(landscape)))
        if landscape.observable_names:
            ax2 = ax.twinx()
            label = "mean over the volume at this train loss (Eq. (1))"
            if readouts is not None and "label_free" in readouts:
                _draw_readout(ax2, readouts["label_free"], MAX_S_COLOR, "-", label)
            else:
                xo, mean, err = landscape.observable_curve(landscape.observable_names[0])
                ax2.errorbar(xo, mean, yerr=err, fmt="-", color=MAX_S_COLOR, linewidth=1.6, capsize=0, label=label)
            if baseline is not None:
                _draw_baseline(ax2, baseline, baseline_label)
            ax2.set_ylabel(axis_label(landscape.observable_names[0]))
            handles, labels = ax.get_legend_handles_labels()
            more_handles, more_labels = ax2.get_legend_handles_labels()
            top = ax2
            if legend:
                box = ax2.legend(handles + more_handles, labels + more_labels, loc="best", fontsize=8, title=mark,
                                 title_fontsize=7)
                if mark is not None:
                    box.get_title().set_color(MARK_COLOR)
                    mark = None
        elif legend:
            ax.legend(loc="best", fontsize=8)
    ax.set_xlabel(xlabel)
    if convergence is not None and not convergence.converged and convergence.agreement is not None:
        lo, hi = ax.get_xlim()
        a, b = convergence.agreement  # where the replicas agree (analysis.agreement): the rest is hatched
        hatch = {"facecolor": "none", "edgecolor": MARK_COLOR, "hatch": "//", "alpha": 0.35, "linewidth": 0}
        for start, stop in ((lo, a), (b, hi)):
            if stop > start:
                ax.axvspan(start, stop, **hatch)
        ax.set_xlim(lo, hi)
    if mark is not None:
        top.text(0.98, 0.98, mark, transform=top.transAxes, ha="right", va="top", fontsize=7, color=MARK_COLOR,
                 bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": MARK_COLOR}, zorder=10)


def verdict_title(title: str, converged: bool | None, tags: Sequence[str] = (), *,
                  hatched: bool = False) -> tuple[str, str]:
    """A panel's title with the run's verdict as its last lines, and its colour: the mark's red when the run is not
    converged (for panels drawn with ``draw_landscape(..., mark=False)``, where a box would cover the curves);
    ``converged=None``: no verdict known, the title as it is. ``hatched``: the panel hatches the x where the
    replicas disagree, and the title says so."""
    if converged is None:
        return title, "black"
    if converged:
        return title + "\nconverged", "black"
    text = "NOT CONVERGED: " + ", ".join(tags) + ("; hatched: replicas disagree" if hatched else "")
    return title + "\n" + "\n".join(textwrap.wrap(text, width=56)), MARK_COLOR


def convergence_figure(history: list[dict[str, float]], *, walkers: int | None = None, title: str | None = None,
                       thresholds: dict[str, float] | None = None,
                       figsize: tuple[float, float] = (9.0, 3.2)) -> Figure:
    """Three panels over the run's snapshots (``landscape.history``): the RMS change of S between snapshots, the
    window's histogram flatness, and the walkers that made a round trip across the train-loss range."""
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, 3)
    steps = np.array([h["step"] for h in history], dtype=float)
    panels = (
        ("s_change", "S change between snapshots (nats RMS)", True),
        ("flatness", "histogram flatness in the window", False),
        ("walkers_with_round_trip", "walkers with a round trip", False),
    )
    for ax, (key, label, log) in zip(axes, panels):
        values = np.array([h.get(key, np.nan) for h in history], dtype=float)
        ax.plot(steps, values, "o-", markersize=3)
        limit = (thresholds or {}).get(key if key != "walkers_with_round_trip" else "round_trip_fraction")
        if limit is not None:
            ax.axhline(limit * (walkers or 1) if key == "walkers_with_round_trip" else limit, color="grey",
                       linestyle="--", linewidth=1)
        if log and np.isfinite(values).any() and (values[np.isfinite(values)] > 0).all():
            ax.set_yscale("log")
        ax.set_xlabel("sampler step")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def width_figure(rows: list[dict], *, title: str | None = None, figsize: tuple[float, float] = (6.4, 4.2)) -> Figure:
    """The advantage against parameter count, one line per task (rows of
    :func:`lightning_entropy.analysis.width_table`); hollow markers for runs that are not converged."""
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    tasks = sorted({str(r["task"]) for r in rows})
    for task in tasks:
        mine = [r for r in rows if str(r["task"]) == task and r["mean_advantage"] is not None and r["parameters"]]
        if not mine:
            continue
        p = np.array([r["parameters"] for r in mine], dtype=float)
        a = np.array([r["mean_advantage"] for r in mine], dtype=float)
        e = np.array([r["mean_advantage_error"] or 0.0 for r in mine], dtype=float)
        line = ax.errorbar(p, a, yerr=e, fmt="-", capsize=3, label=task)
        done = np.array([bool(r["converged"]) for r in mine])
        color = line[0].get_color()
        ax.plot(p[done], a[done], "o", color=color)
        ax.plot(p[~done], a[~done], "o", color=color, markerfacecolor="white")
    ax.axhline(0.0, color="grey", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("mean high-entropy advantage\n(positive: generalizes better than the baseline)")
    ax.grid(alpha=0.3)
    if tasks:
        ax.legend(fontsize=8, title="hollow: not converged", title_fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def baseline_figure(
    curve: BaselineCurve,
    *,
    label: str = "Adam",
    ylabel: str = "test accuracy",
    title: str | None = None,
    figsize: tuple[float, float] = (7.0, 4.6),
) -> Figure:
    """The baseline curve alone: per ln L_train bin the mean test metric with a ±1 std band."""
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    _draw_baseline(ax, curve, label)
    ax.set_xlabel(axis_label("ln_train_loss"))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if (curve.count > 0).any():
        ax.legend(loc="best", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def save(fig: Figure, path: str | Path, *, dpi: int = 130) -> Path:
    """Write ``fig`` (format from the suffix) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def trace_figure(trace: dict[str, np.ndarray], metric: str | None, *, baseline: dict[str, float],
                 target: float, width: float, ensemble: float | None, title: str):
    """Held-out metric of the walkers over MD time (mean ± std) against the baseline; ln L_train below it."""
    step = trace["step"]
    fig = Figure(figsize=(7.5, 6.5 if metric else 3.5))
    axes = fig.subplots(2 if metric else 1, 1, sharex=True, squeeze=False)
    panels = ([(metric, baseline["test_metric"])] if metric else []) + [("ln_train_loss", baseline["ln_train_loss"])]
    for ax, (name, base) in zip(axes[:, 0], panels):
        mean, std = trace[f"{name}_mean"], trace[f"{name}_std"]
        ax.plot(step, mean, color="C0", label="MD walkers (mean ± std)")
        ax.fill_between(step, mean - std, mean + std, color="C0", alpha=0.25, linewidth=0)
        ax.axhline(base, color="C3", linestyle="--", label="baseline (start)")
        if name == "ln_train_loss":
            ax.axhspan(target - width, target + width, color="0.8", alpha=0.6, label="target ± restraint width")
        elif ensemble is not None and np.isfinite(ensemble):
            ax.plot(step[-1:], [ensemble], "k*", markersize=10, label="walker ensemble (end)")
        ax.set_ylabel(name.replace("_", " "))
        ax.legend(fontsize=8, loc="best")
    axes[-1, 0].set_xlabel("MD step")
    axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
