"""Matplotlib figures of entropy landscapes and optimiser baselines, readable at a glance.

- :func:`landscape_figure`: the heatmap of ``S - max S`` (nats) over (ln L_train, test metric) with the max-S line
  (the test-axis position of max S per train-loss bin), the Eq. (1) mean curve (the exp(S)-weighted test metric per
  train-loss bin) and, when given, the optimiser baseline with its spread. A 1-D landscape is drawn as ``S(x)`` with
  its unbiased observable curve and the baseline on a second axis.
- :func:`baseline_figure`: the baseline curve alone (``lightning-entropy sampler=adam``).

The figures are built with :class:`matplotlib.figure.Figure` directly (no ``pyplot`` state, no GUI backend), so they
can be made from any thread or process; :func:`save` writes one to disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from lightning_entropy.baseline import BaselineCurve
    from lightning_entropy.core.landscape import Landscape

MAX_S_COLOR = "#ff00ff"  # the paper's magenta line
MEAN_COLOR = "white"
BASELINE_COLOR = "#ff7f0e"


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


def inside_window(landscape: Landscape) -> np.ndarray:
    """Per x bin: is the bin centre inside the soft-wall window? (All true without a soft wall.)

    Outside the window the walkers also felt the wall, and the wall is not part of S, so S is underestimated there
    by the wall's height; figures show only the window.
    """
    x = landscape.centers[0]
    window = getattr(landscape, "window", None)
    if not getattr(landscape, "wall_strength", 0.0) or window is None:
        return np.ones(x.size, dtype=bool)
    lo, hi = (float(v) for v in window[0])
    return (x >= lo) & (x <= hi)


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
    """
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    s = landscape.entropy
    xe = landscape.edges[0]
    xlabel = axis_label(landscape.names[0], landscape.labels[0])
    if landscape.ndim == 2:
        ye = landscape.edges[1]
        finite = np.isfinite(s)
        mesh = ax.pcolormesh(xe, ye, np.ma.masked_invalid(s.T), cmap="viridis", shading="flat", rasterized=True)
        cbar = fig.colorbar(mesh, ax=ax)
        cbar.set_label("S - max S (nats)")
        x, y_max = landscape.max_entropy_curve(exclude=exclude)
        ax.plot(x, y_max, "-", color=MAX_S_COLOR, linewidth=2.0, label="max S (per train-loss bin)")
        x, y_mean = landscape.mean_curve()
        ax.plot(x, y_mean, "--", color=MEAN_COLOR, linewidth=1.8, label="Eq. (1): exp(S)-weighted mean")
        if baseline is not None:
            _draw_baseline(ax, baseline, baseline_label)
        ax.set_xlim(*_view(xe, finite.any(axis=1) & inside_window(landscape)))
        ax.set_ylim(*_view(ye, finite.any(axis=0)))
        ax.set_ylabel(axis_label(landscape.names[1], landscape.labels[1]))
        ax.set_facecolor("#d9d9d9")
        legend = ax.legend(loc="lower left", fontsize=8, framealpha=0.85)  # low loss + low accuracy: empty
        legend.get_frame().set_facecolor("#f0f0f0")
    else:
        finite = np.isfinite(s)
        x = landscape.centers[0]
        ax.plot(x, s, "-", color="black", label="S - max S")
        ax.set_ylabel("S - max S (nats)")
        ax.set_xlim(*_view(xe, finite & inside_window(landscape)))
        if landscape.observable_names:
            ax2 = ax.twinx()
            xo, mean, err = landscape.observable_curve(landscape.observable_names[0])
            ax2.errorbar(xo, mean, yerr=err, fmt="-", color=MAX_S_COLOR, linewidth=1.6, capsize=0,
                         label="Eq. (1): unbiased mean per train-loss bin")
            if baseline is not None:
                _draw_baseline(ax2, baseline, baseline_label)
            ax2.set_ylabel(axis_label(landscape.observable_names[0]))
            handles, labels = ax.get_legend_handles_labels()
            more_handles, more_labels = ax2.get_legend_handles_labels()
            ax2.legend(handles + more_handles, labels + more_labels, loc="best", fontsize=8)
        else:
            ax.legend(loc="best", fontsize=8)
    ax.set_xlabel(xlabel)
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
