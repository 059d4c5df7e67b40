"""Windows in ln L_train with replica exchange, and independent replicas: the walkers' own bias estimates.

Replica-exchange Wang-Landau (REWL; Vogel, Li, Wust & Landau, PRL 110, 210603, 2013) on the landscape's grid:

- ``replicas`` independent copies of the whole calculation (own walkers, own biases, own random numbers). Their
  spread is the only error estimate that sees a wrong bias; R-hat across them is the convergence test.
- Per replica, the x axis (ln L_train) is split into ``windows`` overlapping windows; a 2-D landscape is windowed
  along x only. Each (replica, window) pair is one *estimate*: a bias grid on the landscape's geometry, filled by
  its own ``m`` walkers (all estimates together are ``W = replicas * windows * m`` walkers, one batch).
- Soft walls (default): a walker may step out of its window; outside it feels the window's edge bias, flat,
  plus a linear pull of ``pull`` nats per CV unit back in, and it neither deposits nor counts until it is back (the
  visits inside still sample ``exp(-bias)`` times the volume, so nothing is biased). A walker that starts outside
  its window comes in the same way. With hard walls (``walls="hard"``) a move that leaves the window is sent back;
  near a grid edge the bias's slope then pushed walkers into the wall, where every move was rejected while they
  kept depositing on one bin (overshoots of 10-30 nats that 1/t never repairs).
- Every ``exchange_every`` steps, walkers of neighbouring windows of the same replica swap windows with the WL
  exchange probability ``min(1, exp(S_a(x_a) + S_b(x_b) - S_a(x_b) - S_b(x_a)))``. The CVs are known, so an
  exchange costs no evaluation; the run then takes every walker's force from the window it now holds (1-D walks
  from the kept ``d x / d theta``, at no cost), so that the next leapfrog step uses one potential throughout.
- Forces follow the bias slope capped at ``2 * pull`` nats per CV unit. A single bin that a stuck walker filled
  faster than its neighbours would otherwise give a force so large that every step leaves the window, is sent
  back, and the walker stays stuck (a feedback the cap breaks). The integrator stays exact: a leapfrog step under
  any position-dependent force is reversible and volume-preserving, and the Metropolis test uses the true bias.
- Filling: each visit deposits ``ln f`` of its own estimate (the standard WL factor per visit, shared by the
  estimate's walkers, so more walkers fill an estimate faster). ``ln f`` halves whenever the estimate's
  histogram since the last halving is flat, and follows ``1/t`` (t in visits per reachable bin of the window,
  Belardinelli-Pereyra) once halving would undercut it; the error then falls as ``1/sqrt(t)``.
- Production: :meth:`Windows.freeze` stops all deposits; every visit then adds ``exp(u(x))`` (the frozen potential
  at the walker's exact position) to its bin, so ``ln`` of the sum is the window's S per bin (reweighting, as in
  metadynamics), which :mod:`lightning_entropy.core.combine` joins across windows on the overlaps.

All per-step work is tensor ops on the walkers' device (no host synchronisation); the schedule update, snapshots
and readouts synchronise and run between chunks. State is explicit and saved by :meth:`state_dict`; the grids are
updated in place (``deposit``, ``exchange``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from lightning_entropy.core import nonfinite
from lightning_entropy.core.landscape import Landscape
from lightning_entropy.core.placement import auto_windows, start_bounds, window_bounds

def _nearest_column_fill(grid: np.ndarray) -> np.ndarray:
    """``(nx, rest)`` with every NaN of a column-less x bin replaced by the nearest x column that has values (and
    NaNs left within a column replaced by that column's least value): a bias with no unknown bins."""
    out = grid.copy()
    has = np.isfinite(out).any(1)
    if not has.any():
        return np.zeros_like(out)
    for j in np.flatnonzero(has):
        column = out[j]
        column[~np.isfinite(column)] = np.nanmin(column)
    idx = np.flatnonzero(has)
    for j in np.flatnonzero(~has):
        out[j] = out[idx[np.argmin(np.abs(idx - j))]]
    return out


#: :meth:`Windows.refine` corrects an estimate whose histogram's fitted tilt spans at least this many nats (the
#: spiral's low-loss windows: 5-10; the 13-parameter toy, whose bias is already right: mostly below 1)
REFINE_MIN_TILT = 1.0
REFINE_MAX = 20.0  # nats: the largest correction of one bin in one round
#: visits at which a bin's own ln H weighs as much as the window's fitted shape in :meth:`Windows.refine`
REFINE_COUNTS = 100.0

__all__ = ["Windows", "auto_windows", "start_bounds", "window_bounds"]


class Windows:
    """The estimates of ``replicas x windows`` on the geometry of ``grid`` and the walkers' assignment to them.

    Args:
        grid: the landscape whose geometry (ranges, bins, kernel, soft walls) the estimates share. Its own bias is
            not touched here; :class:`~lightning_entropy.core.run.Run` publishes the combined S into it.
        walkers: total walkers ``W``, a multiple of ``replicas * windows``.
        replicas: independent replicas (own biases), >= 1.
        windows: windows per replica along x, >= 1.
        overlap: fraction of a window's width shared with each neighbour, in (0, 1).
        log_f0: initial WL factor, nats per visit.
        flatness: a stage ends (``ln f`` halves) when the 5th percentile of the stage histogram over the window's
            reachable bins is at least this fraction of its mean, with at least ``min_stage_visits`` per bin.
        exchange_every: sampler steps between exchange attempts (0: never).
        pull: slope (nats per CV unit) of the linear potential that brings a walker into its window; default (None)
            the parameter count ``P`` set by the run, twice the entropic slope ``P/2`` of ``ln L`` near a quadratic
            minimum, so that a walker above its window can descend into it.
        walls: ``"soft"`` (default) or ``"hard"`` window edges, see the module docstring.
        placement: ``"starts"`` (default): at :meth:`assign`, window edges halfway between the starting walkers'
            quantiles (an equal share of the starts per window) and even edges, so that every window holds starts
            and none grows much wider than the rest (even windows where the starts are too bunched, e.g. at the
            module's weights). ``"even"``: equal windows over the grid. Measured (one run each): toy 1-D, uniform
            starts, 15,000 steps: 0.042 nats RMS (pure quantiles 0.041-0.05, even 0.054); 48-parameter quadratic,
            Adam starts, 30,000 steps: 0.117 (pure quantiles 0.41, even 0.13).
        device: the walkers' device.
    """

    def __init__(self, grid: Landscape, walkers: int, *, replicas: int = 4, windows: int = 1, overlap: float = 0.5,
                 log_f0: float = 0.1, flatness: float = 0.2, min_stage_visits: float = 20.0,
                 exchange_every: int = 10, pull: float | None = None, placement: str = "starts",
                 walls: str = "soft", device=None) -> None:
        for name, value in (("replicas", replicas), ("windows", windows)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer.")
        if walkers % (replicas * windows):
            raise ValueError(
                f"walkers={walkers} cannot be split evenly over replicas={replicas} x windows={windows}; use a"
                f" multiple of {replicas * windows} walkers, or fewer replicas or windows."
            )
        if not 0 < overlap < 1:
            raise ValueError(f"overlap={overlap!r} is a fraction of a window's width in (0, 1), e.g. 0.5.")
        if not (log_f0 > 0 and 0 < flatness <= 1 and (pull is None or pull >= 0) and exchange_every >= 0):
            raise ValueError(f"Windows needs log_f0 > 0, 0 < flatness <= 1, pull >= 0 and exchange_every >= 0; got"
                             f" log_f0={log_f0}, flatness={flatness}, pull={pull}, exchange_every={exchange_every}.")
        self.grid = grid
        self.device = torch.device(device) if device is not None else grid.device
        self.replicas, self.windows, self.walkers = replicas, windows, walkers
        self.per_estimate = walkers // (replicas * windows)
        self.overlap, self.log_f0, self.flatness_target = float(overlap), float(log_f0), float(flatness)
        self.min_stage_visits, self.exchange_every = float(min_stage_visits), int(exchange_every)
        self.pull = None if pull is None else float(pull)
        e, shape, dev = replicas * windows, grid.shape, self.device
        self.size = math.prod(shape)
        if placement not in ("starts", "even"):
            raise ValueError(f"placement={placement!r}: use 'starts' (windows on the starting walkers' quantiles) or"
                             " 'even' (equal windows).")
        self.placement = placement
        if walls not in ("soft", "hard"):
            raise ValueError(f"walls={walls!r}: use 'soft' (a walker may step out of its window and is pulled back) or"
                             " 'hard' (a move out of the window is sent back).")
        self.walls = walls
        self._set_bounds(window_bounds(shape[0], windows, overlap))
        self.bias = torch.zeros((e, *shape), dtype=torch.float64, device=dev)
        self.visits = torch.zeros((e, *shape), dtype=torch.float64, device=dev)  # WL-phase visits
        self.stage = torch.zeros((e, *shape), dtype=torch.float64, device=dev)  # visits since the last halving
        self.production = torch.zeros((e, *shape), dtype=torch.float64, device=dev)  # visits with the bias frozen
        # production visits weighted by exp(u(x) - reference): u the exact potential at the walker (reweighting)
        self.reweighted = torch.zeros((e, *shape), dtype=torch.float64, device=dev)
        self.reference = torch.zeros(e, dtype=torch.float64, device=dev)
        self.log_f = torch.full((e,), self.log_f0, dtype=torch.float64, device=dev)
        self.one_over_t = torch.zeros(e, dtype=torch.bool, device=dev)
        self.reachable = torch.ones(e, dtype=torch.float64, device=dev)  # bins counted by 1/t
        self.deposits = torch.zeros(e, dtype=torch.float64, device=dev)  # visits per estimate (the 1/t clock)
        self.frozen = torch.zeros((), dtype=torch.bool, device=dev)
        self.is_frozen = False  # the same on the host, so the per-step deposit never synchronises to ask
        self.stages = torch.zeros(e, dtype=torch.int64, device=dev)
        self.slots = torch.arange(walkers, device=dev).reshape(e, self.per_estimate)  # (E, m) walker indices
        self.owner = torch.empty(walkers, dtype=torch.int64, device=dev)
        self._reassign()
        self.exchange_tried = torch.zeros(max(windows - 1, 1), dtype=torch.float64, device=dev)
        self.exchange_accepted = torch.zeros(max(windows - 1, 1), dtype=torch.float64, device=dev)
        self.exchanges = 0  # exchange attempts made (alternating even and odd pairs)
        self.last_bins: torch.Tensor | None = None  # (W,) each walker's grid bin at the last deposit (see deposit)
        self.relayouts = 0  # times relayout moved the windows

    # -- assignment ------------------------------------------------------------------------------------------------

    def _set_bounds(self, bounds: list[tuple[int, int]]) -> None:
        """Set every replica's window bounds (x bins ``[lo, hi)``, the same list for each replica)."""
        e, grid, k = self.replicas * self.windows, self.grid, self.windows
        lo = torch.zeros((e, grid.ndim), dtype=torch.int64, device=self.device)
        hi = torch.tensor(grid.shape, device=self.device).repeat(e, 1)
        for i, (a, b) in enumerate(bounds):
            lo[i::k, 0], hi[i::k, 0] = a, b
        self.bin_lo, self.bin_hi = lo, hi  # (E, d) bins [lo, hi) per estimate
        width0 = float(grid.width[0])
        self.x_lo = grid.lo[0] + lo[:, 0].to(torch.float64) * width0  # (E,) window edges in CV units
        self.x_hi = grid.lo[0] + hi[:, 0].to(torch.float64) * width0

    def _reassign(self) -> None:
        """Derive each walker's estimate (``owner``) and window bounds from ``slots``."""
        e = self.replicas * self.windows
        labels = torch.arange(e, device=self.device).repeat_interleave(self.per_estimate)
        self.owner.scatter_(0, self.slots.reshape(-1), labels)
        self.offset = self.owner * self.size
        self.lo, self.hi = self.bin_lo[self.owner], self.bin_hi[self.owner]
        # per walker, what the 1-D potential reads every step: its window's edges (CV units) and first and last
        # interpolation cells, gathered once per reassignment instead of on every call
        self._edge_lo, self._edge_hi = self.x_lo[self.owner], self.x_hi[self.owner]
        half = 0.5 * self.grid._width0  # the bias is flat beyond the outermost bin centres
        self._flat_lo, self._flat_hi = self._edge_lo + half, self._edge_hi - half
        self._cell_first = self.lo[:, 0].to(torch.float64)
        self._cell_last = (self.hi[:, 0] - 2).to(torch.float64)

    @property
    def replica_of(self) -> torch.Tensor:
        """``(W,)`` replica of each walker (fixed for the run)."""
        return self.owner // self.windows

    @property
    def window_of(self) -> torch.Tensor:
        """``(W,)`` current window of each walker (changes with exchanges)."""
        return self.owner % self.windows

    def assign(self, x: torch.Tensor) -> None:
        """Initial assignment: the walkers sorted by their starting ``x`` are dealt to the replicas in turn (so
        every replica gets the same spread of starts, whatever order the start phase produced them in), and within
        each replica they fill the windows from low to high, so that as many as possible start inside (or near)
        their window. With ``placement="starts"`` the window bounds are set here from the starts' quantiles."""
        r, k, m = self.replicas, self.windows, self.per_estimate
        if self.placement == "starts":
            finite = x[torch.isfinite(x)].to(torch.float64)
            bins = ((finite - self.grid.lo[0]) / float(self.grid.width[0])).cpu().numpy()
            bounds = start_bounds(self.grid.shape[0], k, self.overlap, bins) if len(bins) else None
            if bounds is not None:
                self._set_bounds(bounds)
        ranked = torch.argsort(x, stable=True)  # (W,) walkers from the lowest start to the highest
        walkers_of = ranked.reshape(k * m, r).T  # (R, k*m): replica i gets ranks i, i + R, i + 2R, ...
        self.slots = walkers_of.reshape(r * k, m).contiguous()
        self._reassign()

    def relayout(self, bounds: list[tuple[int, int]], entropy: np.ndarray, *, pull: float | None = None) -> None:
        """Move every replica's windows to ``bounds`` (x bins ``[lo, hi)``, one list for all replicas) during the
        Wang-Landau phase, in place.

        ``entropy`` ``(R, *shape)`` is each replica's S so far (NaN where unknown); each new window's bias starts
        from its own replica's S (unknown bins take the nearest known x column's value), so a replica stays
        independent of the others. The stages start anew at ``log_f0`` (visits, stage histograms, 1/t clocks): the
        new windows' biases are only a first guess, steepest where the windows are narrowest. Walker ``i`` then holds estimate ``i // per_estimate`` (replica-major): the caller
        arranges the walkers so (:meth:`~lightning_entropy.core.run.Run.place` copies into each window walkers of
        its replica that lie near it). ``pull``: a new pull into the windows (nats per CV unit)."""
        if self.is_frozen:
            raise RuntimeError("relayout moves windows during the Wang-Landau phase; the bias is already frozen.")
        if len(bounds) != self.windows:
            raise ValueError(f"relayout got {len(bounds)} windows' bounds for {self.windows} windows per replica.")
        r, k = self.replicas, self.windows
        grids = np.asarray(entropy, dtype=np.float64).reshape(r, self.grid.shape[0], -1)  # (R, nx, rest)
        filled = np.stack([_nearest_column_fill(g) for g in grids])
        self._set_bounds(bounds)
        bias = torch.from_numpy(filled.reshape(r, 1, *self.grid.shape)).to(self.bias)
        self.bias.copy_(bias.expand(r, k, *self.grid.shape).reshape(self.bias.shape))
        self.bias.mul_(self.window_masks().to(self.bias.dtype))  # zero outside each window, as a fresh estimate
        for name in ("visits", "stage", "deposits"):
            getattr(self, name).zero_()
        self.log_f.fill_(self.log_f0)
        self.one_over_t.zero_()
        self.reachable.fill_(1.0)
        if pull is not None:
            self.pull = float(pull)
        self.slots = torch.arange(self.walkers, device=self.device).reshape(r * k, self.per_estimate)
        self._reassign()
        self.relayouts += 1

    def nearest_walkers(self, x: torch.Tensor, bounds: list[tuple[int, int]]) -> torch.Tensor:
        """``(W,)`` for each slot of windows at ``bounds`` (replica-major, as after :meth:`relayout`) a walker of the
        same replica: the ``per_estimate`` walkers whose ``x`` lies nearest the window's middle (a walker may serve
        several windows)."""
        r, k, m = self.replicas, self.windows, self.per_estimate
        width = float(self.grid.width[0])
        middle = torch.tensor([self.grid.lo[0] + 0.5 * (a + b) * width for a, b in bounds], dtype=torch.float64,
                              device=self.device)  # (k,)
        members = self.slots.reshape(r, k * m)  # (R, k*m) walkers of each replica
        xs = torch.nan_to_num(x.to(torch.float64)[members], nan=float("inf"))  # (R, k*m)
        distance = (xs.unsqueeze(1) - middle.view(1, k, 1)).abs()  # (R, k, k*m)
        nearest = distance.argsort(dim=2, stable=True)[..., :m]  # (R, k, m)
        return torch.gather(members.unsqueeze(1).expand(r, k, k * m), 2, nearest).reshape(-1)

    # -- what the walkers feel ---------------------------------------------------------------------------------------

    def distance(self, cv: torch.Tensor) -> torch.Tensor:
        """``(W,)`` distance (CV units) of each walker's x from its window; 0 inside."""
        x = cv[:, 0].to(torch.float64)
        return (self._edge_lo - x).clamp(min=0) + (x - self._edge_hi).clamp(min=0)

    def potential(self, cv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each walker's own bias (plus the grid's soft walls and the pull into its window): ``(W,)``, ``(W, d)``."""
        cv = cv.to(torch.float64)
        if self.grid.ndim == 1 and self.walls == "soft" and not self.grid.wall_strength > 0:
            return self._potential_x(cv[:, 0])
        return self._potential_any(cv)

    def _potential_any(self, cv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`potential` on any grid and walls (``cv`` float64)."""
        value, slope = self.grid.interpolate(self.bias.reshape(-1), cv, self.offset, self.lo, self.hi)
        if self.walls == "soft":  # beyond the outermost bin centres the bias is flat: value and force agree there
            half = 0.5 * float(self.grid.width[0])
            x = cv[:, 0]
            flat = (x < self.x_lo[self.owner] + half) | (x > self.x_hi[self.owner] - half)
            slope = slope.clone()
            slope[:, 0] = torch.where(flat, torch.zeros_like(x), slope[:, 0])
        if self.pull:  # the force follows a capped slope; the Metropolis test uses the exact value (see class doc)
            slope = slope.clamp(-self.max_slope, self.max_slope)
        value, slope = self.grid.add_walls(cv, value, slope)
        if self.pull:
            x = cv[:, 0]
            below = (self.x_lo[self.owner] - x).clamp(min=0)
            above = (x - self.x_hi[self.owner]).clamp(min=0)
            value = value + self.pull * (below + above)
            slope = slope.clone()
            slope[:, 0] += self.pull * ((above > 0).to(slope.dtype) - (below > 0).to(slope.dtype))
        return value, slope

    def _potential_x(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`potential` of a 1-D walk with soft walls and no grid walls, from the per-walker bounds kept by
        :meth:`_reassign` (the same numbers in about half the operations, on the hot path)."""
        value, slope = self.grid.interpolate_x(self.bias.reshape(-1), x, self.offset, self._cell_first,
                                               self._cell_last)
        slope = slope.masked_fill((x < self._flat_lo) | (x > self._flat_hi), 0.0)
        if self.pull:
            slope = slope.clamp(-self.max_slope, self.max_slope)
            below = (self._edge_lo - x).clamp(min=0)
            above = (x - self._edge_hi).clamp(min=0)
            value = value + self.pull * (below + above)
            slope = slope + self.pull * ((above > 0).to(slope.dtype) - (below > 0).to(slope.dtype))
        return value, slope.unsqueeze(-1)

    @property
    def max_slope(self) -> float:
        """Cap of ``|dS/dcv|`` in the force (nats per CV unit): ``2 * pull``."""
        return 2.0 * float(self.pull or 0.0)

    def admissible(self, cv: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """``(W,)``: where a move may go. Soft walls (default): anywhere along x (outside its window a walker feels
        the flat bias plus the pull back, and neither deposits nor counts), inside the grid along the other axes.
        Hard walls: inside the grid, and inside the walker's window unless it was not inside before (a walker on
        its way in moves freely under the pull; once inside, the window's edges are hard walls)."""
        if self.walls == "soft":
            if self.grid.ndim == 1:
                return nonfinite.finite(cv).all(-1)
            rest = cv[:, 1:].to(torch.float64)
            return (nonfinite.finite(cv).all(-1) & (rest >= self.grid.lo[1:]).all(-1)
                    & (rest < self.grid.hi[1:]).all(-1))
        return self.grid.inside(cv) & ((self.distance(cv) == 0) | (self.distance(previous) > 0))

    def inside(self, cv: torch.Tensor) -> torch.Tensor:
        """``(W,)``: the walker is inside the grid and its window (only then does it deposit and count)."""
        return self.grid.inside(cv) & (self.distance(cv) == 0)

    def _log_f(self) -> torch.Tensor:
        """``(E,)`` each estimate's WL factor now: ``ln f``, or ``1/t`` (visits per reachable bin) once switched."""
        t_inverse = self.reachable / self.deposits.clamp(min=1.0)
        return torch.where(self.one_over_t, torch.minimum(t_inverse, self.log_f), self.log_f)

    def factor(self) -> torch.Tensor:
        """``(W,)`` nats each walker deposits at its next visit: its estimate's ``ln f`` (0 once frozen)."""
        log_f = self._log_f()
        return torch.where(self.frozen, torch.zeros_like(log_f), log_f)[self.owner]

    # -- in-place updates ----------------------------------------------------------------------------------------

    def deposit(self, cv: torch.Tensor, mask: torch.Tensor, value: torch.Tensor | None = None) -> torch.Tensor:
        """Each walker in ``mask`` inside its window deposits its factor into its estimate (or, frozen, counts a
        production visit, weighted by the potential at ``cv``: ``value`` ``(W,)`` where the caller has it, else
        evaluated here). Returns the ``(W,)`` float mask of walkers that counted; :attr:`last_bins` keeps each
        walker's flat bin of the whole grid (clamped to its window: the true bin of every walker that counted)."""
        m = (mask & self.inside(cv)).to(torch.float64)
        if self.is_frozen:  # production: count, weighted by exp(u) at the walker's exact position
            self.last_bins = self.grid.bin_within(cv, self.lo, self.hi)
            here = self.last_bins + self.offset
            u = self.potential(cv)[0] if value is None else value
            weight = torch.exp((u - self.reference[self.owner]).clamp(max=700.0)) * m
            self.production.view(-1).index_add_(0, here, m)
            self.reweighted.view(-1).index_add_(0, here, weight)
            return m
        self.last_bins, near = self.grid.spread(cv, self.lo, self.hi)
        here = self.last_bins + self.offset
        amount = self._log_f()[self.owner] * m
        weights = self.grid.kernel_weights
        self.bias.view(-1).index_add_(0, (near + self.offset.unsqueeze(1)).reshape(-1),
                                      (amount.unsqueeze(1) * weights.unsqueeze(0)).reshape(-1))
        self.visits.view(-1).index_add_(0, here, m)
        self.stage.view(-1).index_add_(0, here, m)
        self.deposits.index_add_(0, self.owner, m)
        return m

    def exchange(self, cv: torch.Tensor, generator: torch.Generator) -> None:
        """Propose swaps between neighbouring windows of every replica (even pairs, then odd pairs on the next call);
        accepted swaps exchange the two walkers' windows in place. No evaluation, no host synchronisation."""
        k, m = self.windows, self.per_estimate
        if k < 2:
            return
        parity = self.exchanges % 2
        self.exchanges += 1
        lower = torch.arange(parity, k - 1, 2, device=self.device)
        if lower.numel() == 0:
            return
        base = (torch.arange(self.replicas, device=self.device) * k).unsqueeze(1)
        ea = (base + lower).reshape(-1)  # (N,) estimates of the lower windows
        eb = ea + 1
        n = ea.numel()
        pa = torch.argsort(torch.rand((n, m), generator=generator, device=self.device), dim=1)
        pb = torch.argsort(torch.rand((n, m), generator=generator, device=self.device), dim=1)
        wa = torch.gather(self.slots[ea], 1, pa)  # (N, m) walkers paired column by column
        wb = torch.gather(self.slots[eb], 1, pb)
        xa, xb = cv[wa.reshape(-1)], cv[wb.reshape(-1)]
        ea_, eb_ = ea.repeat_interleave(m), eb.repeat_interleave(m)

        def s(e, x):
            return self.grid.interpolate(self.bias.reshape(-1), x, e * self.size, self.bin_lo[e], self.bin_hi[e])[0]

        def within(e, x):
            xx = x[:, 0].to(torch.float64)
            return (xx >= self.x_lo[e]) & (xx < self.x_hi[e]) & self.grid.inside(x)

        log_ratio = s(ea_, xa) + s(eb_, xb) - s(ea_, xb) - s(eb_, xa)
        log_u = torch.log(torch.rand(n * m, generator=generator, device=self.device, dtype=torch.float64))
        ok = within(ea_, xb) & within(eb_, xa) & within(ea_, xa) & within(eb_, xb) & (log_u < log_ratio)
        ok = ok.reshape(n, m)
        new_a, new_b = torch.where(ok, wb, wa), torch.where(ok, wa, wb)
        slots = self.slots.clone()
        slots[ea] = slots[ea].scatter(1, pa, new_a)
        slots[eb] = slots[eb].scatter(1, pb, new_b)
        self.slots = slots
        self._reassign()
        pair = lower.repeat(self.replicas)
        self.exchange_tried.index_add_(0, pair, torch.full((n,), float(m), dtype=torch.float64, device=self.device))
        self.exchange_accepted.index_add_(0, pair, ok.sum(1).to(torch.float64))

    def freeze(self) -> None:
        """Stop all deposits: from now on visits go into the production histograms (the bias is fixed), each also
        weighted by ``exp(u(x) - reference)`` at the walker's exact position, the reference being the estimate's
        largest bias inside its window (so the weights stay finite)."""
        self._set_reference()
        self.frozen.fill_(True)
        self.is_frozen = True

    def _set_reference(self) -> None:
        masks = self.window_masks()
        self.reference.copy_(torch.where(masks, self.bias, torch.full_like(self.bias, -math.inf))
                             .reshape(self.bias.shape[0], -1).amax(1))

    def refine(self, min_tilt: float = REFINE_MIN_TILT) -> np.ndarray:
        """Take the tilt out of each estimate's frozen bias, as its production histogram so far shows it, then clear
        the production histograms; returns ``(E,)`` each estimate's tilt (nats, see below).

        A bias that is off by a smooth ``delta(x)`` makes the walkers sample ``exp(delta)``: they pile up at one end
        of the window, and crossing it means climbing ``delta``. On the spiral, after the Wang-Landau phase, ``ln H``
        fell by 8-10 nats across each low-loss window (1/t had frozen the bias before the walkers had crossed), and
        walkers crossed those windows 0.3-2.7 times in production whatever the time step, masses or friction. With
        the bias frozen the walkers sample ``exp(S - bias)`` exactly, so ``ln H`` estimates ``delta``. The
        correction is the quadratic fit of ``ln H`` over the bins of the window it reached (weights: the counts'
        square roots, capped at their median), blended bin by bin with that bin's own ``ln H`` at weight
        ``h / (h + REFINE_COUNTS)``: the fit where ``ln H`` bin by bin is noise (the thinly visited edges, the bins
        not reached), the bin's own count where it is well measured, so that a trap narrower than the window is
        taken out too. The tilt is the correction's range over the window; estimates whose tilt is at least
        ``min_tilt`` get ``bias += correction`` (the multicanonical recursion). The others keep their bias. In
        place; call between chunks, only while frozen. The reported S never depends on this: it comes from the
        production that follows."""
        if not self.is_frozen:
            raise RuntimeError("Windows.refine corrects a frozen bias: call freeze() first.")
        e, nx = self.production.shape[0], self.grid.shape[0]
        hist = self.production.reshape(e, nx, -1).sum(-1).cpu().numpy()
        lo, hi = self.bin_lo[:, 0].cpu().numpy(), self.bin_hi[:, 0].cpu().numpy()
        correction = np.zeros((e, nx))
        tilt = np.zeros(e)
        for k in range(e):
            h = hist[k, lo[k]:hi[k]]
            seen = np.flatnonzero(h > 0)
            if seen.size < 2:
                continue
            u = np.linspace(-1.0, 1.0, h.size)  # the window's bins on [-1, 1]: a well-conditioned fit
            # weights sqrt(h), capped at their median so that one trapped bin does not bend the window's shape
            weight = np.sqrt(h[seen])
            weight = np.minimum(weight, np.median(weight))
            fit = np.polynomial.Polynomial.fit(u[seen], np.log(h[seen]), min(2, seen.size - 1), w=weight,
                                               domain=[-1, 1], window=[-1, 1])
            # the fit is carried over the bins the round did not reach: walkers miss a window's end because its
            # bias repels them, and the fit's continuation corrects that (holding the edge value instead was worse
            # on the 96-parameter quadratic: 0.12-0.26 against 0.08-0.10 nats RMS; docs/PERFORMANCE.md)
            values = fit(u)
            # a bin visited often carries its own ln H: a trap or hump narrower than the window, which no quadratic
            # follows (the spiral's knee, where S stops rising at the chance-level loss, left ln H spanning 4-9
            # nats in one window under a fitted tilt below 1); thin bins keep the fit
            trust = h / (h + REFINE_COUNTS)
            values = trust * np.log(np.maximum(h, 1.0)) + (1.0 - trust) * values
            tilt[k] = float(values.max() - values.min())
            if tilt[k] >= min_tilt:
                correction[k, lo[k]:hi[k]] = np.clip(values - values.mean(), -REFINE_MAX, REFINE_MAX)
        shape = (e, nx) + (1,) * (self.bias.dim() - 2)
        self.bias += torch.from_numpy(correction).to(self.bias).reshape(shape)
        self.production.zero_()
        self.reweighted.zero_()
        self._set_reference()
        return tilt

    # -- between chunks (synchronises) ------------------------------------------------------------------------------

    def window_masks(self) -> torch.Tensor:
        """``(E, *shape)`` bool: the bins of each estimate's window."""
        x_bins = torch.arange(self.grid.shape[0], device=self.device)
        inside = (x_bins >= self.bin_lo[:, :1]) & (x_bins < self.bin_hi[:, :1])  # (E, nx)
        return inside.reshape(inside.shape + (1,) * (self.grid.ndim - 1)).expand(-1, *self.grid.shape)

    def update_schedule(self) -> None:
        """End the stages whose histogram is flat (halve ``ln f``) and switch estimates to 1/t where halving would
        undercut it. Reads the histograms: call between chunks."""
        if self.is_frozen:
            return
        masks = self.window_masks()
        for e in range(self.replicas * self.windows):
            if bool(self.one_over_t[e]):
                continue
            reach = (self.visits[e] > 0) & masks[e]
            h = self.stage[e][reach]
            if h.numel() < 2 or float(h.mean()) < self.min_stage_visits:
                continue
            if float(torch.quantile(h, 0.05) / h.mean()) >= self.flatness_target:
                self.log_f[e] /= 2
                self.stages[e] += 1
                self.stage[e].zero_()
                self.reachable[e] = float(reach.sum())
                if float(self.log_f[e]) <= float(self.reachable[e] / self.deposits[e].clamp(min=1.0)):
                    self.one_over_t[e] = True

    def current_log_f(self) -> np.ndarray:
        """``(E,)`` the WL factor each estimate deposits now (nats per visit)."""
        return self._log_f().cpu().numpy()

    def flatness(self, production: bool | None = None) -> float:
        """The least flat estimate's histogram (5th percentile over mean) over the bins its window reached: the
        production histograms once frozen, else the current stage."""
        production = self.is_frozen if production is None else production
        hist = self.production if production else self.stage
        masks = self.window_masks()
        worst = 1.0
        for e in range(self.replicas * self.windows):
            reach = (self.visits[e] > 0) & masks[e]
            h = hist[e][reach]
            if h.numel() == 0 or float(h.mean()) == 0:
                return 0.0
            worst = min(worst, float(torch.quantile(h, 0.05) / h.mean()))
        return worst

    # -- persistence ---------------------------------------------------------------------------------------------

    _TENSORS = ("bias", "visits", "stage", "production", "reweighted", "reference", "log_f", "one_over_t", "reachable",
                "deposits", "frozen",
                "stages", "slots", "exchange_tried", "exchange_accepted")

    def config(self) -> dict[str, Any]:
        return {"replicas": self.replicas, "windows": self.windows, "walkers": self.walkers, "overlap": self.overlap,
                "log_f0": self.log_f0, "flatness": self.flatness_target, "min_stage_visits": self.min_stage_visits,
                "exchange_every": self.exchange_every, "pull": self.pull, "placement": self.placement,
                "walls": self.walls,
                "bounds": [[int(a), int(b)] for a, b in
                           zip(self.bin_lo[: self.windows, 0], self.bin_hi[: self.windows, 0])]}

    def state_dict(self) -> dict[str, Any]:
        return {"config": self.config(), "exchanges": self.exchanges, "relayouts": self.relayouts,
                **{k: getattr(self, k).clone() for k in self._TENSORS}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        theirs = {"walls": "hard", **state["config"]}  # checkpoints from before soft walls had hard ones
        self.walls = theirs["walls"]  # a resumed run goes on as it started (the walls are not a user setting)
        if self.placement == "starts" and theirs.get("placement") == "starts" and "bounds" in theirs:
            # the bounds came from the run's starting walkers: they are the checkpoint's state, not a setting
            self._set_bounds([tuple(b) for b in theirs["bounds"]])
        if state.get("relayouts", 0):  # moved windows (and their pull) are the checkpoint's state, not settings
            self._set_bounds([tuple(b) for b in theirs["bounds"]])
            self.pull = theirs["pull"]
        mine = self.config()
        if mine != theirs:
            diff = {k: (theirs.get(k), mine[k]) for k in mine if theirs.get(k) != mine[k]}
            raise ValueError(f"The checkpoint's windows differ from this run's (checkpoint, run): {diff}. Resume with"
                             " the same walkers, replicas, windows and grid.")
        for k in self._TENSORS:
            getattr(self, k).copy_(state[k].to(self.device))
        self.exchanges = int(state["exchanges"])
        self.relayouts = int(state.get("relayouts", 0))
        self.is_frozen = bool(self.frozen)
        self._reassign()
