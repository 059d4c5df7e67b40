"""The geometry of a landscape: a uniform grid over one or two collective variables, without anything sampled.

:class:`Grid` knows its axes (``lo``, ``hi``, bin ``width``, ``shape``, ``names``, ``labels``), its bin edges and
centres, which flat bin a walker's CVs fall in, the multilinear interpolation of any grid-shaped table between bin
centres (value and exact gradient), the deposit kernel (a normalised Gaussian in bin units, mirrored at the edges of
the region a walker can reach so that no mass is lost) and the soft-wall window. All of it is vectorized over
walkers and never synchronises with the host. :class:`~lightning_entropy.core.landscape.Landscape` is a grid that
also holds S, the visits, the observables and their snapshots.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch


def check_axes(ranges: Sequence[tuple[float, float]], bins: Sequence[int], names: Sequence[str]) -> None:
    """One or two axes, each with a finite range ``lo < hi`` and at least two bins."""
    d = len(names)
    if d not in (1, 2) or len(ranges) != d or len(bins) != d:
        raise ValueError(
            f"A landscape has one or two axes with one range and one bin count each; got names={list(names)},"
            f" ranges={list(ranges)}, bins={list(bins)}."
        )
    for (lo, hi), n, name in zip(ranges, bins, names):
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ValueError(f"Axis {name!r}: range ({lo}, {hi}) is empty or not finite; give lo < hi.")
        if int(n) < 2:
            raise ValueError(f"Axis {name!r}: bins={n}; a landscape needs at least 2 bins per axis.")


KERNEL_TABLE_ENTRIES = 4_000_000  # largest (bins x kernel width) table of deposit targets kept (32 MB)


class Grid:
    """A uniform grid over ``d`` (1 or 2) collective variables.

    Args:
        ranges: ``(lo, hi)`` per axis, in CV units (``ln L`` in nats for loss axes).
        bins: number of bins per axis.
        names: axis names (e.g. ``("ln_train_loss", "test_accuracy")``).
        labels: axis labels for figures; default the names.
        kernel_sigma: standard deviation of the deposit Gaussian, in bins (``0`` deposits into one bin only).
        kernel_cutoff: the Gaussian is cut at ``kernel_cutoff * kernel_sigma`` bins.
        window: per axis ``(lo, hi)`` of the soft wall, CV units, or ``None`` for an axis without one; default the
            grid range (no soft wall).
        device: where the grid lives (the walkers' device).
    """

    def __init__(self, ranges: Sequence[tuple[float, float]], bins: Sequence[int], names: Sequence[str], *,
                 labels: Sequence[str] | None = None, kernel_sigma: float = 1.0, kernel_cutoff: float = 4.0,
                 window: Sequence[tuple[float, float]] | None = None, device: torch.device | str | None = None) -> None:
        check_axes(ranges, bins, names)
        d = len(names)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.names = tuple(names)
        self.labels = tuple(labels) if labels is not None else self.names
        self.shape = tuple(int(n) for n in bins)
        self.lo = torch.tensor([float(r[0]) for r in ranges], dtype=torch.float64, device=self.device)
        self.hi = torch.tensor([float(r[1]) for r in ranges], dtype=torch.float64, device=self.device)
        self.width = (self.hi - self.lo) / torch.tensor(self.shape, dtype=torch.float64, device=self.device)
        self._lo0, self._width0 = float(self.lo[0]), float(self.width[0])  # the x axis's, for the 1-D hot path
        window = ranges if window is None else [r if w is None else w for w, r in zip(window, ranges)]
        self.window = torch.tensor([list(map(float, w)) for w in window], dtype=torch.float64, device=self.device)
        self.kernel_sigma = float(kernel_sigma)
        self.kernel_cutoff = float(kernel_cutoff)
        self._strides = torch.tensor(
            [math.prod(self.shape[i + 1 :]) for i in range(d)], dtype=torch.int64, device=self.device
        )
        self._offsets, self._weights = self._kernel()
        self._corners = torch.tensor(list(itertools.product((0, 1), repeat=d)), device=self.device)
        self._n = torch.tensor(self.shape, device=self.device)  # bins per axis (int64)
        self._first = torch.zeros_like(self._n)
        self._last_cell = (self._n - 2).to(torch.float64)  # the last interpolation cell per axis
        self._corner_flat = (self._corners * self._strides).sum(-1)  # (2**d,) flat offsets of a cell's corners
        self._near_table: torch.Tensor | bool | None = None  # :meth:`_kernel_bins`, built when first needed

    # -- axes and bins ----------------------------------------------------------------------------------------------

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def edges(self) -> list[np.ndarray]:
        """Bin edges per axis (numpy)."""
        return [np.linspace(float(lo), float(hi), n + 1) for lo, hi, n in zip(self.lo, self.hi, self.shape)]

    @property
    def centers(self) -> list[np.ndarray]:
        return [0.5 * (e[1:] + e[:-1]) for e in self.edges]

    def inside(self, cv: torch.Tensor) -> torch.Tensor:
        """``(W,)`` mask: the CVs are finite and inside the grid (the hard wall). The comparisons alone say it: NaN
        compares false, and ``±inf`` lies outside ``[lo, hi)``."""
        return ((cv >= self.lo) & (cv < self.hi)).all(dim=-1)

    def bin_index(self, cv: torch.Tensor) -> torch.Tensor:
        """``(W,)`` flat bin index of each walker, clamped to the grid."""
        return self.bin_within(cv, self._first, self._n)

    def _kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        r = int(math.ceil(self.kernel_cutoff * self.kernel_sigma)) if self.kernel_sigma > 0 else 0
        span = torch.arange(-r, r + 1, device=self.device)
        offsets = torch.stack(torch.meshgrid(*([span] * self.ndim), indexing="ij"), dim=-1).reshape(-1, self.ndim)
        if r == 0:
            weights = torch.ones(1, dtype=torch.float64, device=self.device)
        else:
            dist2 = (offsets.to(torch.float64) ** 2).sum(-1)
            weights = torch.exp(-dist2 / (2 * self.kernel_sigma**2))
            keep = dist2 <= (self.kernel_cutoff * self.kernel_sigma) ** 2
            offsets, weights = offsets[keep], weights[keep]
            weights = weights / weights.sum()
        return offsets, weights


    def interpolate(self, table: torch.Tensor, cv: torch.Tensor, offset: torch.Tensor | None = None,
                    lo: torch.Tensor | None = None,
                    hi: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Multilinear interpolation between bin centres of a flat grid ``table`` at ``cv`` ``(W, d)``: the value
        ``(W,)`` and its exact gradient ``(W, d)`` (CV units).

        ``offset`` ``(W,)`` selects each walker's grid inside a stack of grids (flat offset of its first bin);
        ``lo``/``hi`` ``(W, d)`` bin indices restrict each walker's interpolation cells to bins ``[lo, hi)`` (a
        window), default the whole grid.
        """
        cv = cv.to(torch.float64)
        if self.ndim == 1:  # the 1-D walk's hot path: two gathers, no corner products (same numbers)
            return self._interpolate_1d(table, cv, offset, lo, hi)
        if self.ndim == 2:  # the 2-D walk's hot path: one gather of the four corners, two lerps
            return self._interpolate_2d(table, cv, offset, lo, hi)
        i0, t = self._cell(cv, lo, hi)
        i0 = i0.long()
        corners = self._corners  # (C, d) of 0/1, C = 2**d
        flat = ((i0.unsqueeze(1) + corners) * self._strides).sum(-1)  # (W, C)
        if offset is not None:
            flat = flat + offset.unsqueeze(1)
        s = table[flat]  # S at the cell's corners
        w = torch.where(corners.bool(), t.unsqueeze(1), 1 - t.unsqueeze(1))  # (W, C, d) per-axis weights
        value = (s * w.prod(-1)).sum(-1)
        sign = corners.to(s.dtype) * 2 - 1  # d weight_k / d t_k for each corner
        slope = torch.stack(
            [(s * sign[:, k] * torch.cat([w[..., :k], w[..., k + 1 :]], dim=-1).prod(-1)).sum(-1) / self.width[k]
             for k in range(self.ndim)],
            dim=-1,
        )
        return value, slope

    def _cell(self, cv: torch.Tensor, lo: torch.Tensor | None,
              hi: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each walker's interpolation cell (its lower corner's bin per axis, float64 ``(W, d)``, kept inside bins
        ``[lo, hi)``, default the grid) and its position in the cell, ``t`` in ``[0, 1]`` per axis."""
        u = (cv - self.lo) / self.width - 0.5
        i0 = torch.floor(u).nan_to_num(0)
        if lo is None:
            i0 = torch.minimum(i0.clamp(min=0), self._last_cell)
        else:
            i0 = torch.minimum(torch.maximum(i0, lo.to(u.dtype)), (hi - 2).to(u.dtype))
        return i0, (u - i0).clamp(0.0, 1.0)

    def _interpolate_2d(self, table: torch.Tensor, cv: torch.Tensor, offset: torch.Tensor | None,
                        lo: torch.Tensor | None, hi: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`interpolate` on a 2-D grid (``cv`` float64 ``(W, 2)``): bilinear as two lerps along x and one
        along y, and its exact gradient; the same cell and weights as the d-dimensional form (equal to rounding),
        in about 30 operations instead of 50."""
        i0, t = self._cell(cv, lo, hi)
        flat = (i0.long() * self._strides).sum(-1)
        if offset is not None:
            flat = flat + offset
        s00, s01, s10, s11 = table[flat.unsqueeze(1) + self._corner_flat].unbind(-1)  # corners (x, y) in {0, 1}^2
        tx, ty = t.unbind(-1)
        dx0, dx1 = s10 - s00, s11 - s01  # along x at y = 0 and y = 1
        a, b = s00 + dx0 * tx, s01 + dx1 * tx
        dy = b - a
        return a + dy * ty, torch.stack((dx0 + (dx1 - dx0) * ty, dy), dim=-1) / self.width

    def _interpolate_1d(self, table: torch.Tensor, cv: torch.Tensor, offset: torch.Tensor | None,
                        lo: torch.Tensor | None, hi: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`interpolate` on a 1-D grid (``cv`` float64 ``(W, 1)``)."""
        first = last = None
        if lo is not None:
            first, last = lo[:, 0].to(torch.float64), (hi[:, 0] - 2).to(torch.float64)
        value, slope = self.interpolate_x(table, cv[:, 0], offset, first, last)
        return value, slope.unsqueeze(-1)

    def interpolate_x(self, table: torch.Tensor, x: torch.Tensor, offset: torch.Tensor | None = None,
                      first: torch.Tensor | None = None,
                      last: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Linear interpolation along x alone (1-D grids, the windowed walk's hot path): ``x`` float64 ``(W,)``;
        ``first``/``last`` float64 ``(W,)`` the first and last interpolation cell each walker may use (bins
        ``[lo, hi)`` give cells ``lo`` to ``hi - 2``), default the whole grid. Returns the value and the slope
        ``d value / d x``, both ``(W,)``."""
        u = (x - self._lo0) / self._width0 - 0.5
        i0 = torch.floor(u).nan_to_num(0)
        i0 = i0.clamp(0.0, float(self.shape[0] - 2)) if first is None else torch.clamp(i0, first, last)
        t = (u - i0).clamp(0.0, 1.0)
        i0 = i0.long()
        if offset is not None:
            i0 = i0 + offset
        s0, s1 = table[i0], table[i0 + 1]
        return s0 * (1 - t) + s1 * t, (s1 - s0) / self._width0

    def spread(self, cv: torch.Tensor, lo: torch.Tensor | None = None,
               hi: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The flat bin of each walker ``(W,)`` and the flat bins its deposit kernel covers ``(W, K)`` (weights
        :attr:`kernel_weights`), mirrored at the edges of bins ``[lo, hi)`` per walker and axis (default the grid)
        so that no mass leaves the region a walker can reach."""
        if lo is None and hi is None and self._kernel_bins() is not None:  # the whole grid: one lookup per walker
            here = (self._clamped(cv, self._first, self._n) * self._strides).sum(-1)
            return here, self._near_table[here]
        lo = self._first if lo is None else lo
        hi = self._n if hi is None else hi
        idx = self._clamped(cv, lo, hi)
        return (idx * self._strides).sum(-1), self._mirrored(idx, lo, hi)

    def _mirrored(self, idx: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """``(W, K)`` flat bins of the deposit kernel around bins ``idx`` ``(W, d)``, mirrored at the edges of bins
        ``[lo, hi)`` (per walker ``(W, d)`` or shared ``(d,)``)."""
        near = idx.unsqueeze(1) + self._offsets.unsqueeze(0)  # (W, K, d)
        lo_, hi_ = (b.unsqueeze(-2) if b.dim() > 1 else b for b in (lo, hi))
        near = torch.where(near < lo_, 2 * lo_ - near - 1, near)  # mirror at the edges: no mass is lost
        near = torch.where(near >= hi_, 2 * hi_ - 1 - near, near)
        near = torch.minimum(torch.maximum(near, lo_), hi_ - 1)
        return (near * self._strides).sum(-1)

    def _kernel_bins(self) -> torch.Tensor | None:
        """``(bins, K)``: :meth:`_mirrored` of every bin of the whole grid, built at the first call (the per-step
        deposit then reads one row per walker instead of recomputing it); None above :data:`KERNEL_TABLE_ENTRIES`."""
        if self._near_table is None:
            bins, k = math.prod(self.shape), int(self._offsets.shape[0])
            if bins * k > KERNEL_TABLE_ENTRIES:
                self._near_table = False
            else:
                flat = torch.arange(bins, device=self.device)
                idx = torch.stack(torch.unravel_index(flat, self.shape), dim=-1)
                self._near_table = self._mirrored(idx, self._first, self._n)
        return self._near_table if self._near_table is not False else None

    def bin_within(self, cv: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """The flat bin of each walker ``(W,)``, clamped to bins ``[lo, hi)`` per walker and axis: the first half of
        :meth:`spread`, for counts that need no deposit kernel (a frozen bias's production histogram)."""
        return (self._clamped(cv, lo, hi) * self._strides).sum(-1)

    def _clamped(self, cv: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        idx = torch.floor((cv.to(torch.float64) - self.lo) / self.width).nan_to_num(0).long()
        return torch.minimum(torch.maximum(idx, lo), hi - 1)

    @property
    def kernel_weights(self) -> torch.Tensor:
        """``(K,)`` weights of the deposit kernel (they sum to one)."""
        return self._weights


    def window_mask(self) -> torch.Tensor:
        """Boolean grid of the bins whose centres lie inside the soft-wall window (all bins without a window)."""
        mask = torch.ones(self.shape, dtype=torch.bool, device=self.device)
        for axis, c in enumerate(self.centers):
            lo, hi = (float(v) for v in self.window[axis])
            inside = torch.from_numpy((c >= lo) & (c <= hi)).to(self.device)
            shape = [1] * self.ndim
            shape[axis] = -1
            mask = mask & inside.view(shape)
        return mask


__all__ = ["Grid", "check_axes"]
