"""Where the windows lie along x: how many per replica (:func:`auto_windows`), and their bin bounds, even
(:func:`window_bounds`) or placed on the starting walkers (:func:`start_bounds`). Pure functions of bin counts, used
by :class:`~lightning_entropy.core.windows.Windows`."""

from __future__ import annotations

import math

import numpy as np


def auto_windows(walkers_per_replica: int, bins: int) -> int:
    """Windows per replica from the walker count and the x bins: about one window per four walkers, at most 8, each
    window at least about 8 bins wide (with half overlap), and a divisor of the walkers so that each window gets the
    same number of walkers."""
    cap = max(1, min(8, walkers_per_replica // 4, (2 * bins) // 8 - 1))
    return max(k for k in range(1, cap + 1) if walkers_per_replica % k == 0)


def start_bounds(bins: int, windows: int, overlap: float, starts: np.ndarray, min_core: int = 4
                 ) -> list[tuple[int, int]] | None:
    """``[lo, hi)`` x-bin bounds placed on the starting walkers: core edges halfway between the starts' quantiles
    ``k / windows`` (the lowest share of the starts goes to the lowest window, see :meth:`Windows.assign`) and even
    edges ``k * bins / windows``; each window reaches ``overlap`` of its neighbours' cores. ``starts`` are the walkers'
    starting x in bin units. None when the starts span fewer than ``windows * min_core`` bins (one start mode, a
    module's weights): then :func:`window_bounds` places the windows evenly."""
    if windows == 1:
        return [(0, bins)]
    ranked = np.sort(np.clip(np.asarray(starts, dtype=np.float64), 0, bins))
    n = len(ranked)
    if ranked[-1] - ranked[0] < windows * min_core:
        return None
    # halfway between the starts' quantiles and even edges: every window holds starts, none grows much wider
    edges = [0] + [int(round(0.5 * (ranked[min(n - 1, (k * n) // windows)] + k * bins / windows)))
                   for k in range(1, windows)] + [bins]
    for k in range(1, windows + 1):  # cores of at least min_core bins, from the bottom up
        edges[k] = max(edges[k], edges[k - 1] + min_core)
    if edges[windows] > bins:
        return None
    return _overlapping(edges, overlap)


def _overlapping(edges: list[int], overlap: float) -> list[tuple[int, int]]:
    """``[lo, hi)`` windows around the cores between consecutive ``edges`` (bins), each reaching ``overlap`` of its
    neighbours' cores."""
    windows, bins = len(edges) - 1, edges[-1]
    out = []
    for k in range(windows):
        lo = 0 if k == 0 else int(math.floor(edges[k] - overlap * (edges[k] - edges[k - 1])))
        hi = bins if k == windows - 1 else int(math.ceil(edges[k + 1] + overlap * (edges[k + 2] - edges[k + 1])))
        out.append((lo, hi))
    return out


def window_bounds(bins: int, windows: int, overlap: float) -> list[tuple[int, int]]:
    """``[lo, hi)`` x-bin bounds of ``windows`` equal windows covering ``bins`` bins, neighbours sharing about
    ``overlap`` of a window's width (at least two bins)."""
    if windows == 1:
        return [(0, bins)]
    width = bins / (windows - (windows - 1) * overlap)
    out = []
    for k in range(windows):
        lo = int(round(k * width * (1 - overlap)))
        hi = bins if k == windows - 1 else int(round(k * width * (1 - overlap) + width))
        out.append((lo, max(hi, lo + 2)))
    for k in range(1, windows):  # neighbours must share at least two bins to exchange and to be joined
        lo, hi = out[k]
        out[k] = (min(lo, out[k - 1][1] - 2), hi)
    return out


def crossing_bounds(cost: np.ndarray, windows: int, overlap: float, *, min_core: int = 2) -> list[tuple[int, int]]:
    """``[lo, hi)`` x-bin bounds whose cores hold equal shares of ``cost`` ``(nx,)``, each core at least ``min_core``
    bins, each window reaching ``overlap`` of its neighbours' cores.

    With ``cost`` the time a walker takes to cross each bin (:func:`crossing_cost`), every window then takes its
    walkers about the same time to cross."""
    cost = np.asarray(cost, dtype=np.float64).reshape(-1)
    bins = cost.shape[0]
    if windows == 1:
        return [(0, bins)]
    if windows * min_core > bins:
        raise ValueError(f"{windows} windows of at least {min_core} bins do not fit in {bins} bins: use fewer windows"
                         " or a finer grid.")
    cumulative = np.concatenate([[0.0], np.cumsum(np.clip(np.nan_to_num(cost, nan=0.0), 0.0, None))])
    targets = np.linspace(0.0, cumulative[-1], windows + 1)
    edges = [0] + [int(np.searchsorted(cumulative, t)) for t in targets[1:-1]] + [bins]
    for k in range(1, windows):  # cores of at least min_core bins, leaving room for the cores above
        edges[k] = min(max(edges[k], edges[k - 1] + min_core), bins - (windows - k) * min_core)
    return _overlapping(edges, overlap)


def crossing_cost(moved: np.ndarray, squared: np.ndarray, steps: np.ndarray, chunks: np.ndarray, *, width: float
                  ) -> np.ndarray | None:
    """``(nx,)`` time (in ``sqrt(steps)``) a walker takes to cross each x bin, ``width / sqrt(D)``, from the
    walkers' measured diffusion ``D`` per bin: ``moved`` and ``squared`` ``(nx,)`` the summed x displacements and
    their squares over chunks that started in the bin, ``steps`` the walker-steps and ``chunks`` the walker-chunks
    they took. ``D`` is the mean squared displacement of a chunk per step, drift included: a drift (walkers carried
    along by a bias still filling) counts as motion. Taking it out (the variance instead) placed the windows worse
    on the 13-parameter toy: 0.051 nats RMS over six seeds against 0.030 (0.033 with the windows left on the
    starts), where walkers cross a window within a chunk. ``moved`` is kept for that comparison. Bins without data
    take ``D`` interpolated in ``ln D`` from their neighbours (the nearest measured value beyond the ends). None with
    fewer than two measured bins.

    Why diffusion: a walker that samples ``exp(-S)`` moves along x by exchanging energy with its momenta, about
    ``sqrt(P/2)`` nats at a time, so where S is steep it crosses a bin far more slowly than where S is flat (on the
    spiral's 116 parameters: 270-300 nats per low-loss window against 9 for the highest window of eight equal
    windows, and 0.04 against 6 production crossings). Windows of equal crossing time put many narrow windows
    where S is steep."""
    moved, squared, steps, chunks = (np.asarray(a, dtype=np.float64) for a in (moved, squared, steps, chunks))
    measured = (chunks >= 1) & (steps > 0) & (squared > 0)
    if measured.sum() < 2:
        return None
    idx = np.arange(squared.shape[0])
    log_d = np.interp(idx, idx[measured], np.log(squared[measured] / steps[measured]))
    return width / np.exp(0.5 * log_d)


__all__ = ["auto_windows", "crossing_bounds", "crossing_cost", "start_bounds", "window_bounds"]
