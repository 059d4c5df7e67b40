"""The label-free 2-D picture of a 1-D walk in ln L_train: ``S(x, y) = S(x) + ln p(y | x)``, with ``p(y | x)`` the
held-out accuracy's reweighted production histogram per x bin, per replica (their spread is its error). The bias
depends on x alone, so within an x bin the held-out metric is sampled as the volume has it: no test label enters
the dynamics."""

from __future__ import annotations

import numpy as np
import torch

from lightning_entropy.core import combine
from lightning_entropy.core.landscape import Landscape

PICTURE_BINS = 41  # accuracy bins of the label-free picture: multiples of 1/40 at the bin centres


def record(counts: torch.Tensor, windows, grid: Landscape, cv: torch.Tensor, y: torch.Tensor,
           counted: torch.Tensor, value: torch.Tensor | None = None) -> None:
    """Production only: add each counting walker's reweighting weight ``exp(u(x) - reference)`` at (x bin,
    accuracy bin) of its replica into ``counts`` ``(R, nx, PICTURE_BINS)``, in place (``value``: ``u(x)`` where the
    caller has it)."""
    w = windows
    u = w.potential(cv)[0] if value is None else value
    weight = torch.exp((u - w.reference[w.owner]).clamp(max=700.0)) * counted
    iy = torch.floor((torch.nan_to_num(y.to(torch.float64)) + 0.5 / (PICTURE_BINS - 1)) * (PICTURE_BINS - 1))
    iy = iy.long().clamp(0, PICTURE_BINS - 1)
    flat = (w.replica_of * grid.shape[0] + grid.bin_index(cv)) * PICTURE_BINS + iy
    counts.view(-1).index_add_(0, flat, weight)


def picture(counts: np.ndarray, grid: Landscape, replicas: int, s_x: np.ndarray) -> Landscape:
    """The picture as a 2-D landscape from the reweighted ``counts`` ``(R, nx, ny)`` and each replica's S(x) ``s_x``
    ``(R, nx)``: the replicas' mean as its S, their grids as ``replica_entropy``, the walk's history."""
    g = grid
    half = 0.5 / (PICTURE_BINS - 1)
    names = (g.names[0], g.observable_names[0])
    out = Landscape([(float(g.lo[0]), float(g.hi[0])), (-half, 1 + half)], [g.shape[0], PICTURE_BINS], names,
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
