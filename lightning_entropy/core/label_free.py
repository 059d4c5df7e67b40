"""The label-free 2-D picture of a 1-D walk in ln L_train: ``S(x, y) = S(x) + ln p(y | x)``, with ``p(y | x)`` the
held-out metric's reweighted production histogram per x bin, per replica (their spread is its error). The bias
depends on x alone, so within an x bin the held-out metric is sampled as the volume has it: no test label enters
the dynamics.

The metric's axis: for an accuracy :data:`PICTURE_BINS` bins centred on multiples of 1/40 over [0, 1]; for the ln
of a loss, 0.1-nat bins over :data:`LOSS_RANGE` (values beyond it count in the end bins), of which the picture keeps
the rows its walkers reached."""

from __future__ import annotations

import numpy as np
import torch

from lightning_entropy.core import combine
from lightning_entropy.core.landscape import Landscape

PICTURE_BINS = 41  # metric bins of the label-free picture (for an accuracy: multiples of 1/40 at the bin centres)
ACCURACY_RANGE = (0.0, 1.0)
LOSS_RANGE = (-20.0, 20.0)  # ln of a held-out loss: 1e-9 to 5e8, far beyond what a walk reaches
LOSS_BINS = 401  # 0.1 nats apart, centred on multiples of 0.1


def axis(name: str) -> tuple[tuple[float, float], int] | None:
    """The picture's metric range (first and last bin centre) and number of bins for the observable ``name``: an
    accuracy's, or the ln of a loss's (``ln_..._loss``); ``None`` for any other observable (no picture)."""
    if "accuracy" in name:
        return ACCURACY_RANGE, PICTURE_BINS
    if name.startswith("ln_") and name.endswith("_loss"):
        return LOSS_RANGE, LOSS_BINS
    return None


def record(counts: torch.Tensor, windows, grid: Landscape, cv: torch.Tensor, y: torch.Tensor,
           counted: torch.Tensor, value: torch.Tensor | None = None,
           y_range: tuple[float, float] = ACCURACY_RANGE) -> None:
    """Production only: add each counting walker's reweighting weight ``exp(u(x) - reference)`` at (x bin,
    metric bin) of its replica into ``counts`` ``(R, nx, bins)``, in place; the bins are centred on an even grid from
    ``y_range[0]`` to ``y_range[1]`` (``value``: ``u(x)`` where the caller has it)."""
    w = windows
    u = w.potential(cv)[0] if value is None else value
    weight = torch.exp((u - w.reference[w.owner]).clamp(max=700.0)) * counted
    lo, hi = y_range
    bins = counts.shape[-1]
    scaled = (torch.nan_to_num(y.to(torch.float64), nan=lo) - lo) / (hi - lo)
    iy = torch.floor((scaled + 0.5 / (bins - 1)) * (bins - 1)).clamp(0, bins - 1).long()
    flat = (w.replica_of * grid.shape[0] + grid.bin_index(cv)) * bins + iy
    counts.view(-1).index_add_(0, flat, weight)


def picture(counts: np.ndarray, grid: Landscape, replicas: int, s_x: np.ndarray,
            y_range: tuple[float, float] = ACCURACY_RANGE) -> Landscape:
    """The picture as a 2-D landscape from the reweighted ``counts`` ``(R, nx, ny)`` (bins centred on an even grid
    from ``y_range[0]`` to ``y_range[1]``) and each replica's S(x) ``s_x`` ``(R, nx)``: the replicas' mean as its S,
    their grids as ``replica_entropy``, the walk's history. Beyond :data:`PICTURE_BINS` bins (a loss's axis) only
    the rows from the lowest to the highest reached are kept, with one empty row on each side."""
    g = grid
    lo, hi = (float(v) for v in y_range)
    step = (hi - lo) / (counts.shape[-1] - 1)
    if counts.shape[-1] > PICTURE_BINS:
        rows = np.flatnonzero(counts.sum(axis=(0, 1)) > 0)
        first = max(int(rows[0]) - 1, 0) if rows.size else 0
        last = min(int(rows[-1]) + 1, counts.shape[-1] - 1) if rows.size else counts.shape[-1] - 1
        counts, lo, hi = counts[..., first:last + 1], lo + first * step, lo + last * step
    names = (g.names[0], g.observable_names[0])
    ranges = [(float(g.lo[0]), float(g.hi[0])), (lo - step / 2, hi + step / 2)]
    out = Landscape(ranges, [g.shape[0], counts.shape[-1]], names,
                    labels=(g.labels[0], f"{g.observable_names[0]} (label-free)"), kernel_sigma=0.0,
                    groups=replicas, device=g.device,
                    metadata={**g.metadata, "test_labels_in_dynamics": False, "label_free_picture": True})
    with np.errstate(divide="ignore", invalid="ignore"):
        conditional = np.log(counts / counts.sum(-1, keepdims=True))
    grids = np.where(counts > 0, s_x[..., None] + conditional, np.nan)
    mean, _, _ = combine.replica_statistics(grids.reshape(replicas, -1))
    mean = torch.from_numpy(mean.reshape(out.shape)).to(out.bias)
    out.known.copy_(torch.isfinite(mean))
    out.bias.copy_(torch.nan_to_num(mean, nan=0.0))
    out.visits.copy_(torch.from_numpy((counts > 0).sum(0).astype(np.float64)).to(out.visits))
    out.recent_visits[0].copy_(torch.from_numpy((counts > 0).astype(np.float64)).to(out.visits))
    out.replica_entropy = grids
    out.entropy_r_hat = g.entropy_r_hat  # its x-marginal is the walk's S(x)
    out.history = [dict(h) for h in g.history]
    return out
