"""The landscape: a 1-D or 2-D grid over collective variables holding the running entropy estimate S.

Walkers sample ``p(θ) ∝ exp(-S(cv(θ)))``; every visit deposits a normalised Gaussian (in bin units) scaled by the
Wang-Landau factor, so S grows where walkers linger until the visit histogram is flat, which happens exactly when
S equals the log-volume of the box mapped into each bin (up to a constant).

- Deposits are vectorized over walkers (``index_add_``, no host synchronisation). The kernel is mirrored at the
  grid edges so that edge bins receive the same mass per visit as interior bins (no pile-up bias).
- ``value_and_slope`` interpolates S multilinearly between bin centres, so the force is the exact gradient of the
  bias the walkers feel (Metropolis-adjusted dynamics use the same function).
- Walls: the grid range is a hard wall (a walker that leaves it is sent back, see the samplers); an optional soft
  quadratic wall ``strength * d**2`` acts outside ``window``. Walls are never written into S.
- Observables recorded without bias give per-bin averages: from a 1-D walk in ``ln L_train`` the average held-out
  metric per bin estimates Eq. (1) without using held-out labels in the dynamics.

The grid's geometry (bins, interpolation, the deposit kernel, the window) is :mod:`lightning_entropy.core.grid`;
the ``.npz`` file is :mod:`lightning_entropy.core.landscape_file`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_entropy.core import landscape_file
from lightning_entropy.core.grid import Grid, check_axes


class Landscape(Grid):
    """The running entropy estimate S on a uniform grid over ``d`` (1 or 2) collective variables (the grid's
    geometry, interpolation and deposit kernel: :class:`~lightning_entropy.core.grid.Grid`).

    Args:
        ranges, bins, names, labels, kernel_sigma, kernel_cutoff, window, device: the grid, as for
            :class:`~lightning_entropy.core.grid.Grid` (``(lo, hi)`` and bin count per axis in CV units, axis names
            and figure labels, the deposit Gaussian's width in bins and its cut-off, the soft-wall window).
        wall_strength: ``c`` of the soft wall ``c * d**2`` (nats per CV unit squared); ``0`` disables it.
        observables: names of quantities recorded per bin without bias.
        groups: walker groups (walker ``w`` is in group ``w % groups``) with their own recent visit histograms and
            observable sums; their spread is the statistical uncertainty of the readouts (see
            :mod:`lightning_entropy.analysis`). 1 keeps no group statistics.
        metadata: what the landscape says of its run (settings, versions, timings; saved with it).
    """

    def __init__(
        self,
        ranges: Sequence[tuple[float, float]],
        bins: Sequence[int],
        names: Sequence[str],
        *,
        labels: Sequence[str] | None = None,
        kernel_sigma: float = 1.0,
        kernel_cutoff: float = 4.0,
        window: Sequence[tuple[float, float]] | None = None,
        wall_strength: float = 0.0,
        observables: Sequence[str] = (),
        groups: int = 1,
        device: torch.device | str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        check_axes(ranges, bins, names)
        if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
            raise ValueError(f"groups={groups!r} must be a positive integer (walker groups for error bars).")
        if kernel_sigma < 0 or wall_strength < 0:
            raise ValueError(f"kernel_sigma={kernel_sigma} and wall_strength={wall_strength} must be >= 0.")
        super().__init__(ranges, bins, names, labels=labels, kernel_sigma=kernel_sigma, kernel_cutoff=kernel_cutoff,
                         window=window, device=device)
        self.wall_strength = float(wall_strength)
        self.observable_names = tuple(observables)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.bias = torch.zeros(self.shape, dtype=torch.float64, device=self.device)
        self.visits = torch.zeros(self.shape, dtype=torch.float64, device=self.device)
        # bins where ``bias`` holds an estimate of S (a run with replicas publishes S only where it has one)
        self.known = torch.ones(self.shape, dtype=torch.bool, device=self.device)
        k = len(self.observable_names)
        self.obs_sum = torch.zeros((k, *self.shape), dtype=torch.float64, device=self.device)
        self.obs_sq = torch.zeros((k, *self.shape), dtype=torch.float64, device=self.device)
        self.obs_count = torch.zeros(self.shape, dtype=torch.float64, device=self.device)
        self._walker_steps = torch.zeros((), dtype=torch.int64, device=self.device)
        # per walker group: visits in the current and the previous snapshot interval, observables over the run
        self.groups = int(groups)
        g = self.groups
        self.recent_visits = torch.zeros((2, g, *self.shape), dtype=torch.float64, device=self.device)
        self.group_obs_sum = torch.zeros((k, g, *self.shape), dtype=torch.float64, device=self.device)
        self.group_obs_count = torch.zeros((g, *self.shape), dtype=torch.float64, device=self.device)
        self.snapshot_bias = torch.zeros(self.shape, dtype=torch.float64, device=self.device)
        self.snapshot_visits = torch.zeros(self.shape, dtype=torch.float64, device=self.device)
        self.prior_bias = torch.zeros(self.shape, dtype=torch.float64, device=self.device)  # the snapshot before
        self.prior_visits = torch.zeros(self.shape, dtype=torch.float64, device=self.device)
        self.history: list[dict[str, float]] = []  # one entry per snapshot (see ``snapshot``)
        # (replicas, *shape): S of each independent replica (nats, NaN where unvisited), published by the run
        self.replica_entropy: np.ndarray | None = None
        # (blocks, 2, replicas, nx): sum and count of the first observable per production block, replica and x bin
        self.replica_blocks: np.ndarray | None = None
        # (blocks, replicas, nx, ny): 2-D walks' reweighted production mass per block and replica (windows summed)
        self.replica_grid_blocks: np.ndarray | None = None
        # (nx,): rank-normalized split R-hat of S across replicas per x bin (NaN where unknown), published by the run
        self.entropy_r_hat: np.ndarray | None = None
        self._group_of: torch.Tensor | None = None

    # -- the bias the walkers feel ------------------------------------------------------------------------------

    def value_and_slope(self, cv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """S (plus soft walls) at each walker's CVs and its gradient ``dS/dcv``: shapes ``(W,)`` and ``(W, d)``."""
        cv = cv.to(torch.float64)
        value, slope = self.interpolate(self.bias.reshape(-1), cv)
        return self.add_walls(cv, value, slope)

    def add_walls(self, cv: torch.Tensor, value: torch.Tensor,
                  slope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``value`` ``(W,)`` and ``slope`` ``(W, d)`` of a bias at ``cv`` (float64) plus the soft walls outside
        ``window`` (``wall_strength * d**2``; unchanged without walls)."""
        if self.wall_strength > 0:
            below = (self.window[:, 0] - cv).clamp(min=0)
            above = (cv - self.window[:, 1]).clamp(min=0)
            value = value + self.wall_strength * (below**2 + above**2).sum(-1)
            slope = slope + 2 * self.wall_strength * (above - below)
        return value, slope

    # -- updates (vectorized, no host sync) -----------------------------------------------------------------------

    def deposit(self, cv: torch.Tensor, amount: torch.Tensor | float, mask: torch.Tensor) -> None:
        """Add ``amount`` nats times the kernel around the bin of each walker in ``mask``, and count the visits.

        ``amount`` is a scalar or ``(W,)`` tensor; the kernel sums to one, so each walker adds exactly ``amount``.
        """
        m = mask.to(torch.float64)
        amount = torch.as_tensor(amount, dtype=torch.float64, device=self.device) * m
        here, near = self.spread(cv)
        spread = (amount.unsqueeze(1) * self._weights.unsqueeze(0)).reshape(-1)
        self.bias.view(-1).index_add_(0, near.reshape(-1), spread)
        self.count(here, m)

    def count(self, here: torch.Tensor, weight: torch.Tensor) -> None:
        """Count visits (``weight`` ``(W,)``, 0/1) at flat bins ``here`` ``(W,)`` in the histogram and the walker
        groups' recent histograms, without touching S."""
        self.visits.view(-1).index_add_(0, here, weight)
        self.recent_visits[0].view(-1).index_add_(0, self._group_offset(here.shape[0]) + here, weight)

    def record(self, cv: torch.Tensor, observed: torch.Tensor, mask: torch.Tensor) -> None:
        """Accumulate per-bin sums of observables ``(W, k)`` for walkers in ``mask``."""
        flat = self.bin_index(cv)
        m = mask.to(torch.float64)
        obs = torch.nan_to_num(observed.to(torch.float64)) * m.unsqueeze(1)
        self.obs_sum.view(len(self.observable_names), -1).index_add_(1, flat, obs.T)
        self.obs_sq.view(len(self.observable_names), -1).index_add_(1, flat, (obs**2).T)
        self.obs_count.view(-1).index_add_(0, flat, m)
        k = len(self.observable_names)
        grouped = self._group_offset(cv.shape[0]) + flat  # flat index into (groups, bins)
        self.group_obs_sum.view(k, -1).index_add_(1, grouped, obs.T)
        self.group_obs_count.view(-1).index_add_(0, grouped, m)

    def clear_observables(self) -> None:
        """Forget the per-bin observables recorded so far (in place; S, the histogram and the walker-step count are
        untouched). A run calls it at its production phase's first observation, so the per-bin averages come from the
        frozen bias's equilibrium alone and not from the Wang-Landau phase, whose walkers still carry the memory of
        their starting points (``metadata["observables_from_step"]`` records the step)."""
        for tensor in (self.obs_sum, self.obs_sq, self.obs_count, self.group_obs_sum, self.group_obs_count):
            tensor.zero_()

    def assign_groups(self, group_of: torch.Tensor) -> None:
        """Put walker ``w`` in group ``group_of[w]`` (``(W,)`` ints in ``[0, groups)``) instead of ``w % groups``,
        e.g. its replica, so that the group statistics are those of independent replicas."""
        self._group_of = group_of.to(self.device, torch.int64) * math.prod(self.shape)

    def _group_offset(self, walkers: int) -> torch.Tensor:
        """``(W,)`` offset of each walker's group in a flattened ``(groups, bins)`` array (cached per W)."""
        if self._group_of is None or self._group_of.numel() != walkers:
            size = math.prod(self.shape)
            self._group_of = (torch.arange(walkers, device=self.device) % self.groups) * size
        return self._group_of

    def snapshot(self, step: int, **extra: float) -> dict[str, float]:
        """Close a snapshot interval: measure how much S moved since the last snapshot, start a new interval of the
        recent per-group histograms, and append an entry to :attr:`history`. Synchronises with the host: call it
        at a cadence (the strategies do so a few times per run), not per step.

        The entry holds ``step``, ``walker_steps``, ``s_change`` (RMS change of S in nats since the previous
        snapshot, over bins visited at both and inside the window, after removing the mean shift; NaN at the
        first snapshot), ``flatness`` (inside the window) and any ``extra`` figures (e.g. round trips).
        """
        visited = (self.visits > 0) & (self.snapshot_visits > 0) & self.window_mask() & self.known
        change = float("nan")
        if bool(visited.any()):
            d = (self.bias - self.snapshot_bias)[visited]
            change = float(torch.sqrt(((d - d.mean()) ** 2).mean()))
        entry = {"step": int(step), "walker_steps": self.walker_steps, "s_change": change,
                 "flatness": self.flatness(window_only=True), **{k: float(v) for k, v in extra.items()}}
        self.history.append(entry)
        self.prior_bias.copy_(self.snapshot_bias)
        self.prior_visits.copy_(self.snapshot_visits)
        self.snapshot_bias.copy_(self.bias)
        self.snapshot_visits.copy_(self.visits)
        self.recent_visits[1].copy_(self.recent_visits[0])
        self.recent_visits[0].zero_()
        return entry

    def add_walker_steps(self, count: int) -> None:
        """Count ``count`` sampler steps (summed over walkers); an in-place add on the device, no host sync."""
        self._walker_steps += count

    # -- accumulators: what sampling adds to ------------------------------------------------------------------------

    #: The grids sampling adds to (deposits, visits, recorded observables, per-group statistics), in a fixed order;
    #: with ``walker_steps`` they are :meth:`accumulators`.
    ACCUMULATORS = ("bias", "visits", "obs_sum", "obs_sq", "obs_count", "recent_visits", "group_obs_sum",
                    "group_obs_count")

    def accumulators(self) -> dict[str, torch.Tensor]:
        """The live tensors that deposits, visits and observations add to, by name (:attr:`ACCUMULATORS`, then
        ``walker_steps``, a 0-d int64 count). Each is a sum over walker steps, so copies of one landscape filled by
        separate walkers combine by adding their changes (as the DDP strategy does). Writing into them changes
        the landscape."""
        return {**{k: getattr(self, k) for k in self.ACCUMULATORS}, "walker_steps": self._walker_steps}

    def accumulator_vector(self) -> torch.Tensor:
        """The :meth:`accumulators` as one new float64 vector, flattened in order (one buffer for a collective;
        walker steps are exact up to 2**53)."""
        return torch.cat([t.reshape(-1).to(torch.float64) for t in self.accumulators().values()])

    def load_accumulator_vector(self, vector: torch.Tensor) -> None:
        """Set the :meth:`accumulators` in place from a vector laid out as :meth:`accumulator_vector` lays it out
        (integer counts rounded)."""
        tensors = list(self.accumulators().values())
        if sum(t.numel() for t in tensors) != vector.numel():
            raise ValueError(f"The vector holds {vector.numel()} values; this landscape's accumulators hold"
                             f" {sum(t.numel() for t in tensors)}: both must have the same grid and groups.")
        offset = 0
        for tensor in tensors:
            piece = vector[offset : offset + tensor.numel()].view_as(tensor)
            tensor.copy_(piece if tensor.is_floating_point() else piece.round().to(tensor.dtype))
            offset += tensor.numel()

    # -- readouts (numpy) ------------------------------------------------------------------------------------------

    @property
    def walker_steps(self) -> int:
        """Sampler steps summed over walkers."""
        return int(self._walker_steps)

    @property
    def histogram(self) -> np.ndarray:
        """Visits per bin (all walkers, whole run)."""
        return self.visits.cpu().numpy().copy()

    @property
    def entropy(self) -> np.ndarray:
        """S - max S in nats, NaN where never visited."""
        s = self.bias.cpu().numpy().copy()
        s[(self.visits.cpu().numpy() == 0) | ~self.known.cpu().numpy()] = np.nan
        if np.isfinite(s).any():
            s -= np.nanmax(s)
        return s

    @property
    def entropy_error(self) -> np.ndarray:
        """Standard error of S per bin (nats) across independent replicas; NaN where fewer than two replicas
        visited a bin, or everywhere when the run had a single replica."""
        if self.replica_entropy is None or self.replica_entropy.shape[0] < 2:
            return np.full(self.shape, np.nan)
        from lightning_entropy.core.combine import replica_statistics

        flat = self.replica_entropy.reshape(self.replica_entropy.shape[0], -1)
        return replica_statistics(flat)[1].reshape(self.shape)

    def flatness(self, histogram: torch.Tensor | None = None, quantile: float = 0.05, *,
                 window_only: bool = False) -> float:
        """How flat the visit histogram is over the visited bins: its ``quantile`` (default the 5th percentile)
        divided by its mean. 1 is perfectly flat; 0 when nothing was visited. The low quantile, not the minimum,
        keeps a few rarely reachable edge bins of a continuous landscape from vetoing flatness forever.
        ``window_only`` counts only the bins inside the soft-wall window (the region the run is about).
        """
        h = (self.visits if histogram is None else histogram).reshape(-1)
        keep = self.visits > 0
        if window_only:
            keep = keep & self.window_mask()
        h = h[keep.reshape(-1)]
        if h.numel() == 0 or float(h.mean()) == 0:
            return 0.0
        return float(torch.quantile(h, quantile) / h.mean())

    def observable_curve(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-bin unbiased average of an observable along the first axis: ``(x, mean, standard error)``.

        For a 2-D landscape the average is over the whole column (all y), weighted by visits.
        """
        if name not in self.observable_names:
            raise KeyError(f"No observable {name!r} was recorded; recorded: {self.observable_names}.")
        k = self.observable_names.index(name)
        dims = tuple(range(1, self.ndim))
        s, q, c = (a.sum(dims) if dims else a for a in (self.obs_sum[k], self.obs_sq[k], self.obs_count))
        s, q, c = s.cpu().numpy(), q.cpu().numpy(), c.cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(c > 0, s / c, np.nan)
            var = np.where(c > 1, q / c - mean**2, np.nan)
            err = np.sqrt(np.clip(var, 0, None) / c)
        return self.centers[0], mean, err

    def max_entropy_curve(self, exclude: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Per x bin, the y position of max S, ignoring ``exclude`` rows at each end of the y axis (walls' pile-up)."""
        self._need_2d("max_entropy_curve")
        s = self.entropy
        if exclude:
            s = s.copy()
            s[:, :exclude] = np.nan
            s[:, s.shape[1] - exclude :] = np.nan
        y = self.centers[1]
        out = np.full(self.shape[0], np.nan)
        ok = np.isfinite(s).any(axis=1)
        out[ok] = y[np.nanargmax(np.where(np.isfinite(s[ok]), s[ok], -np.inf), axis=1)]
        return self.centers[0], out

    def mean_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """Eq. (1): the exp(S)-weighted mean of the y axis per x bin (2-D), or the first observable's average (1-D)."""
        if self.ndim == 1:
            if not self.observable_names:
                raise ValueError("A 1-D landscape has a mean curve only if an observable was recorded.")
            x, mean, _ = self.observable_curve(self.observable_names[0])
            return x, mean
        s = self.entropy
        w = np.exp(np.where(np.isfinite(s), s, -np.inf))
        total = w.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(total > 0, (w * self.centers[1]).sum(axis=1) / total, np.nan)
        return self.centers[0], mean

    def _need_2d(self, what: str) -> None:
        if self.ndim != 2:
            raise ValueError(f"{what} needs a 2-D landscape (train loss x test metric); this one has axes {self.names}.")

    # -- persistence -------------------------------------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        return {"ranges": [[float(a), float(b)] for a, b in zip(self.lo, self.hi)], "bins": list(self.shape),
                "names": list(self.names), "labels": list(self.labels), "kernel_sigma": self.kernel_sigma,
                "kernel_cutoff": self.kernel_cutoff, "window": self.window.tolist(),
                "wall_strength": self.wall_strength, "observables": list(self.observable_names),
                "groups": self.groups}

    #: numpy arrays a run publishes on its landscape (``None`` until it does), saved when present
    _PUBLISHED = ("replica_entropy", "replica_blocks", "replica_grid_blocks", "entropy_r_hat")
    _GROUP_STATE = ("recent_visits", "group_obs_sum", "group_obs_count", "snapshot_bias", "snapshot_visits",
                    "prior_bias", "prior_visits")

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self._config(),
            "metadata": dict(self.metadata),
            "bias": self.bias.clone(),
            "visits": self.visits.clone(),
            "known": self.known.clone(),
            "obs_sum": self.obs_sum.clone(),
            "obs_sq": self.obs_sq.clone(),
            "obs_count": self.obs_count.clone(),
            "walker_steps": self._walker_steps.clone(),
            **{key: getattr(self, key).clone() for key in self._GROUP_STATE},
            "history": [dict(h) for h in self.history],
            **{key: torch.from_numpy(np.asarray(getattr(self, key), dtype=np.float64)) for key in self._PUBLISHED
               if getattr(self, key) is not None},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"]["bins"] != list(self.shape) or state["config"]["names"] != list(self.names):
            raise ValueError(
                f"Checkpointed landscape has axes {state['config']['names']} with bins {state['config']['bins']}, but"
                f" this run has {list(self.names)} with {list(self.shape)}: resume with the same variables and bins."
            )
        for key in ("bias", "visits", "obs_sum", "obs_sq", "obs_count"):
            getattr(self, key).copy_(state[key])
        if "known" in state:  # absent in files written before replicas existed
            self.known.copy_(state["known"])
        for key in self._GROUP_STATE:  # absent in files written before group statistics existed
            if key in state:
                getattr(self, key).copy_(state[key])
        self.history = [dict(h) for h in state.get("history", [])]
        for key in self._PUBLISHED:
            value = state.get(key)
            setattr(self, key, None if value is None else np.asarray(torch.as_tensor(value).cpu().numpy(),
                                                                     dtype=np.float64))
        self._walker_steps.copy_(state["walker_steps"])
        self.metadata.update(state.get("metadata", {}))

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device=None) -> Landscape:
        cfg = dict(state["config"])
        ranges, bins, names = cfg.pop("ranges"), cfg.pop("bins"), cfg.pop("names")
        out = cls(ranges, bins, names, device=device, **cfg)
        out.load_state_dict(state)
        return out

    def save(self, path: str | Path) -> Path:
        """Write an ``.npz`` with the grid, histogram, observables and metadata (JSON; see
        :mod:`lightning_entropy.core.landscape_file`), atomically."""
        return landscape_file.write(self.state_dict(), self.entropy, path)

    @classmethod
    def load(cls, path: str | Path, device=None) -> Landscape:
        """Read a file written by :meth:`save`; a corrupt, truncated or non-finite one raises ``ValueError`` naming it."""
        return landscape_file.read(path, lambda state: cls.from_state_dict(state, device=device))

    def __repr__(self) -> str:
        axes = ", ".join(
            f"{n}: [{float(lo):.3g}, {float(hi):.3g}) x {b}" for n, lo, hi, b in zip(self.names, self.lo, self.hi, self.shape)
        )
        return f"Landscape({axes}; walker_steps={self.walker_steps})"
