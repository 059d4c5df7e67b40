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


__all__ = ["auto_windows", "start_bounds", "window_bounds"]
