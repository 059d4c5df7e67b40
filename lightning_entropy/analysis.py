"""The high-entropy advantage as a result: readouts of a landscape per train-loss bin with uncertainties, the
advantage against a baseline, and convergence figures. Pure numpy on a :class:`~lightning_entropy.Landscape`.

Readouts, per ``ln L_train`` bin (x):

- ``max_s`` (2-D): the test-axis position of max S inside a window that excludes the walls' pile-up (``exclude``
  rows at each end of the test axis and anything outside the soft-wall window): the paper's "magenta line".
- ``mean_curve`` (2-D): Eq. (1), the exp(S)-weighted mean of the test axis.
- ``label_free``: the average held-out metric recorded without bias per x bin. From a 1-D walk on ln L_train this
  estimates Eq. (1) without held-out labels in the dynamics; from a 2-D walk it is the plain visit-weighted
  average, which is biased by the walk and is not reported.

Uncertainties come from independent replicas where the run had them (``fill="visit"``: own walkers, own biases,
own random numbers; ``landscape.replica_entropy`` holds each replica's S): each readout is taken on every replica's
S, and the standard error across replicas is its uncertainty, which also sees a wrong bias. Without replicas they
come from walker groups (walker ``w`` is in group ``w % groups``). Each group keeps its own visit
histogram over the last one or two snapshot intervals, so each group has its own estimate
``S_g = S + ln((h_g + 1) / (h̄ + 1))`` (the residual non-flatness of its recent visits corrects the shared bias);
the readouts of the groups scatter, and their standard error (``std / sqrt(groups)``) is the statistical
uncertainty. The label-free readout uses the groups' own per-bin averages. What this does not capture is a bias
that has not converged: the ``drift`` of each readout (its change since the previous snapshot) and the
convergence figures (:func:`convergence`) say that.

A bin is flagged ``undersampled`` when fewer than half of the groups visited its column recently, or its recent
visits fall below ``min_fraction`` of the median column; such bins are left out of the advantage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from lightning_entropy.core.combine import rhat, rhat_allowed, rhat_null_rate
from lightning_entropy.sweeps import width_table  # noqa: F401 - part of this module's public API

READOUTS = ("max_s", "mean_curve", "label_free")


@dataclass
class Readout:
    """One readout per x bin: arrays of length ``bins`` (NaN where there is no value)."""

    name: str
    x: np.ndarray
    value: np.ndarray
    error: np.ndarray  # standard error across walker groups (NaN with fewer than two groups)
    drift: np.ndarray  # value now minus value at the previous snapshot (NaN without one)
    undersampled: np.ndarray  # bool
    per_replica: np.ndarray | None = None  # (replicas, bins) the readout of each independent replica
    per_block: np.ndarray | None = None  # (replicas, draws, bins) the same per group of production blocks (R-hat)

    def usable(self, in_window: np.ndarray | None = None) -> np.ndarray:
        ok = np.isfinite(self.value) & ~self.undersampled
        return ok if in_window is None else ok & in_window

    @property
    def r_hat(self) -> np.ndarray | None:
        """``(bins,)`` rank-normalized split R-hat of the readout across replicas per x bin (groups of production
        blocks as draws; NaN where a replica has no value in some draw); None without per-block values."""
        if self.per_block is None:
            return None
        return rhat(np.transpose(self.per_block, (2, 0, 1)))


# -- the test-axis readouts of one S grid ------------------------------------------------------------------------------


def _max_s(s: np.ndarray, y: np.ndarray, keep: np.ndarray) -> np.ndarray:
    s = np.where(keep & np.isfinite(s), s, -np.inf)
    out = y[np.argmax(s, axis=-1)]
    return np.where(np.isfinite(s).any(axis=-1), out, np.nan)


def _mean(s: np.ndarray, y: np.ndarray, keep: np.ndarray) -> np.ndarray:
    s = np.where(keep & np.isfinite(s), s, -np.inf)
    top = s.max(axis=-1, keepdims=True)
    w = np.exp(s - np.where(np.isfinite(top), top, 0.0))
    total = w.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (w * y).sum(axis=-1) / total, np.nan)


def _test_axis_keep(landscape, exclude: int) -> np.ndarray:
    """Rows of the test axis the readouts may use: not the outer ``exclude`` rows, not outside the window."""
    y = landscape.centers[1]
    keep = np.ones(y.size, dtype=bool)
    if exclude:
        keep[:exclude] = False
        keep[y.size - exclude:] = False
    lo, hi = (float(v) for v in landscape.window[1])
    return keep & (y >= lo) & (y <= hi)


def _spread(per_group: np.ndarray) -> np.ndarray:
    """Standard error across the first axis (groups), NaN with fewer than two finite values."""
    n = np.isfinite(per_group).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nanmean(np.where(n > 0, per_group, 0.0), axis=0)
        var = np.nansum((per_group - mean) ** 2, axis=0) / np.maximum(n - 1, 1)
    return np.where(n > 1, np.sqrt(var / np.maximum(n, 1)), np.nan)


def readouts(landscape, *, exclude: int = 1, min_fraction: float = 0.05) -> dict[str, Readout]:
    """The readouts of ``landscape`` per x bin (see the module docstring); keys from :data:`READOUTS`.

    Args:
        exclude: test-axis rows ignored at each end by ``max_s`` and ``mean_curve`` (walls pile volume up there).
        min_fraction: a column with fewer recent visits than this fraction of the median visited column (inside
            the window) is flagged under-sampled.
    """
    x = landscape.centers[0]
    nb = x.size
    recent = landscape.recent_visits.sum(0).cpu().numpy()  # (groups, *shape): the last one or two intervals
    groups = recent.shape[0]
    visits = landscape.visits.cpu().numpy()
    column_recent = recent.sum(axis=tuple(range(2, recent.ndim))) if recent.ndim > 2 else recent  # (groups, nb)
    in_window = inside_window(landscape)
    total_recent = column_recent.sum(0)
    reference = np.median(total_recent[in_window & (total_recent > 0)]) if (in_window & (total_recent > 0)).any() else 0
    groups_seen = (column_recent > 0).sum(0)
    sparse = (total_recent < min_fraction * reference) | (groups_seen < max(1, math.ceil(groups / 2)))
    out: dict[str, Readout] = {}

    if landscape.ndim == 2:
        y = landscape.centers[1]
        keep = _test_axis_keep(landscape, exclude)
        bias = landscape.bias.cpu().numpy()
        s_now = np.where((visits > 0) & landscape.known.cpu().numpy(), bias, np.nan)
        # the previous snapshot: the last one, or the one before it when the last was taken at this very state
        last = landscape.history[-1] if landscape.history else None
        at_last = last is not None and last.get("walker_steps") == landscape.walker_steps
        bias_old, visits_old = ((landscape.prior_bias, landscape.prior_visits) if at_last else
                                (landscape.snapshot_bias, landscape.snapshot_visits))
        s_old = np.where(visits_old.cpu().numpy() > 0, bias_old.cpu().numpy(), np.nan)
        have_old = len(landscape.history) >= (2 if at_last else 1)
        mean_h = recent.mean(0)
        replicas = _replicas(landscape)
        per_group = (replicas if replicas is not None else
                     s_now[None] + np.log((recent + 1.0) / (mean_h[None] + 1.0)))
        for name, fn in (("max_s", _max_s), ("mean_curve", _mean)):
            value = fn(s_now, y, keep)
            groups_value = (np.stack([fn(s, y, keep) for s in per_group]) if per_group.shape[0] > 1 else
                            np.full((1, nb), np.nan))
            drift = value - fn(s_old, y, keep) if have_old else np.full(nb, np.nan)
            out[name] = Readout(name, x, value, _spread(groups_value), drift, sparse | ~np.isfinite(value),
                                groups_value if replicas is not None else None,
                                _per_block_grid(landscape, fn, y, keep))

    if landscape.observable_names and landscape.ndim == 1:
        s = landscape.group_obs_sum[0].cpu().numpy()  # (groups, *shape)
        c = landscape.group_obs_count.cpu().numpy()
        total_s = landscape.obs_sum[0].cpu().numpy()
        total_c = landscape.obs_count.cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            value = np.where(total_c > 0, total_s / total_c, np.nan)
            per_group = np.where(c > 0, s / c, np.nan)
        error = _spread(per_group) if groups > 1 else np.full(nb, np.nan)
        few = (total_c < 10 * max(groups, 1)) | ((c > 0).sum(0) < max(1, math.ceil(groups / 2)))
        out["label_free"] = Readout("label_free", x, value, error, np.full(nb, np.nan), few | ~np.isfinite(value),
                                    per_group if _replicas(landscape) is not None else None,
                                    _per_block(landscape))
    return out


# Production blocks are merged into at most this many draws per replica for the readouts' R-hat. With 4 replicas and
# n draws (split chains of n / 2), R-hat of a perfectly mixed readout exceeds 1.05 by chance with probability about
# P(F(7, 4 (n - 2)) > (1.1025 - 1 + 2 / n) n / 2): 25 % at 8 draws (the main job's label-free advantage read 1.21
# with 8 draws and 1.13 with 32 from the same blocks), 1.5 % at 32.
BLOCK_DRAWS = 32


def _draws(landscape, name: str) -> np.ndarray | None:
    """The landscape's per-block array ``name`` summed over consecutive groups of blocks: at most
    :data:`BLOCK_DRAWS` draws (the most recent blocks), None without at least four blocks or two replicas."""
    blocks = getattr(landscape, name, None)
    if blocks is None or _replicas(landscape) is None or blocks.shape[0] < 4:
        return None
    n = min(BLOCK_DRAWS, blocks.shape[0])
    size = blocks.shape[0] // n
    return blocks[blocks.shape[0] - n * size:].reshape(n, size, *blocks.shape[1:]).sum(1)


def _per_block(landscape) -> np.ndarray | None:
    """``(R, draws, nx)``: the label-free readout of each replica over consecutive groups of its production blocks
    (``landscape.replica_blocks``), at most :data:`BLOCK_DRAWS` draws and at least four; None without them."""
    grouped = _draws(landscape, "replica_blocks")  # (n, 2, R, nx)
    if grouped is None:
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(grouped[:, 1] > 0, grouped[:, 0] / grouped[:, 1], np.nan)  # (n, R, nx)
    return np.transpose(value, (1, 0, 2))


def _per_block_grid(landscape, fn, y: np.ndarray, keep: np.ndarray) -> np.ndarray | None:
    """``(R, draws, nx)``: a 2-D readout (``fn``: the max-S line or Eq. (1), both functions of each column's
    p(y | x) alone, so no constant per window or column matters) of each replica's production mass over consecutive
    groups of blocks (``landscape.replica_grid_blocks``), as :func:`_per_block`; None without them."""
    grouped = _draws(landscape, "replica_grid_blocks")  # (n, R, nx, ny)
    if grouped is None:
        return None
    with np.errstate(divide="ignore"):
        log_mass = np.where(grouped > 0, np.log(np.where(grouped > 0, grouped, 1.0)), np.nan)
    return np.transpose(fn(log_mass, y, keep), (1, 0, 2))


def _replicas(landscape) -> np.ndarray | None:
    """The replicas' S grids ``(R, *shape)`` when the run had at least two independent replicas (the landscape's
    walker groups are then the replicas), else None."""
    grids = getattr(landscape, "replica_entropy", None)
    if grids is None or grids.shape[0] < 2 or grids.shape[0] != landscape.groups:
        return None
    return grids


def inside_window(landscape) -> np.ndarray:
    """Per x bin: is the bin centre inside the soft-wall window? (All true without a soft wall.)

    Outside the window the walkers also felt the wall, and the wall is not part of S, so S is underestimated there
    by the wall's height; readouts and figures use only the window.
    """
    x = landscape.centers[0]
    window = getattr(landscape, "window", None)
    if not getattr(landscape, "wall_strength", 0.0) or window is None:
        return np.ones(x.size, dtype=bool)
    lo, hi = (float(v) for v in window[0])
    return (x >= lo) & (x <= hi)


# -- the advantage -----------------------------------------------------------------------------------------------------


@dataclass
class Advantage:
    """Readout minus baseline per x bin, signed so that positive means the high-entropy states generalize better."""

    readout: str
    metric: str
    higher_is_better: bool
    x: np.ndarray
    per_bin: np.ndarray  # NaN outside the bins both cover
    error: np.ndarray
    used: np.ndarray  # bool: bins that enter the mean
    mean_advantage: float | None
    mean_advantage_error: float | None
    mean_advantage_drift: float | None = None  # how much the mean moved since the previous snapshot
    notes: list[str] = field(default_factory=list)
    # rank-normalized split R-hat of the mean across replicas (chains) and groups of production blocks (draws)
    mean_advantage_r_hat: float | None = None
    x_range: tuple[float | None, float | None] | None = None  # the x interval asked for (None: every bin covered)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the mean, its error, the bins used and the per-bin values on them."""
        u = self.used
        return {
            "readout": self.readout,
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "mean_advantage": self.mean_advantage,
            "mean_advantage_error": self.mean_advantage_error,
            "mean_advantage_drift": self.mean_advantage_drift,
            "mean_advantage_r_hat": self.mean_advantage_r_hat,
            "bins": int(u.sum()),
            "ln_train_loss": [float(v) for v in self.x[u]],
            "per_bin": [float(v) for v in self.per_bin[u]],
            "per_bin_error": [None if not np.isfinite(v) else float(v) for v in self.error[u]],
            "ln_train_loss_range": [float(self.x[u].min()), float(self.x[u].max())] if u.any() else None,
            "x_range": None if self.x_range is None else list(self.x_range),
            "notes": list(self.notes),
        }


def advantage(readout: Readout, baseline, *, higher_is_better: bool, in_window: np.ndarray | None = None,
              min_seeds: int = 1, x_range: Sequence[float | None] | None = None) -> Advantage:
    """The advantage of ``readout`` over a pooled baseline (:class:`~lightning_entropy.baseline.BaselineCurve` on the
    same x bins): per bin ``±(readout - baseline mean)``, and its mean over the bins both cover.

    ``x_range`` ``(lo, hi)`` (either may be ``None``: open) keeps the mean to the bins whose centres lie in it. The
    advantage changes along x (on the spiral it falls from about +0.1 at the lowest train losses to below zero near
    the plateau), so a mean over "the bins both cover" moves with the grid's lower end, which the starting walkers
    set and the seed moves: two runs compare by their means only over the same bins, which a fixed range gives.
    Bins of the range that the landscape or the baseline do not cover are named in ``notes``.

    Bins enter the mean when the readout is finite and not under-sampled, inside ``in_window``, and the baseline has
    records from at least ``min_seeds`` seeds. Per-bin errors add the readout's group error and the baseline's
    standard error across seeds in quadrature (a missing error counts as zero and is noted). With independent
    replicas the mean's error is the spread of the replicas' own means over the same bins (which keeps the
    correlation of neighbouring bins) with the baseline's error added; without them it treats bins as independent,
    which neighbouring bins of one landscape are not: read it then as a lower bound.
    ``mean_advantage_drift`` is how far the mean moved since the previous snapshot (the readouts' ``drift``): a
    systematic uncertainty of a run that is still converging, which the statistical error does not contain.
    """
    if baseline.mean.shape != readout.value.shape:
        raise ValueError(
            f"The baseline has {baseline.mean.size} bins and the readout {readout.value.size}: pool the baseline"
            " on the landscape's x edges (baseline.pool(records, edges=landscape.edges[0]))."
        )
    sign = 1.0 if higher_is_better else -1.0
    seeds = baseline.seeds if baseline.seeds is not None and baseline.seeds.any() else (baseline.count > 0).astype(int)
    used = readout.usable(in_window) & np.isfinite(baseline.mean) & (seeds >= min_seeds)
    notes = []
    if x_range is not None:
        if len(x_range) != 2:
            raise ValueError(f"x_range={list(x_range)!r}: give [lo, hi] (either may be None).")
        lo, hi = (None if v is None else float(v) for v in x_range)
        if lo is not None and hi is not None and not lo < hi:
            raise ValueError(f"x_range={list(x_range)!r}: lo must be below hi.")
        x_range = (lo, hi)
        x = readout.x
        asked = np.ones_like(used) if lo is None else x >= lo
        asked &= True if hi is None else x <= hi
        half = 0.5 * _step(x)
        slack = 1e-6 * half  # bin centres are sums of floats: a range from a bin's edge is not a bin short of it
        if used.any():
            first, last = x[used].min(), x[used].max()
            if lo is not None and lo < first - half - slack:
                notes.append(f"x_range starts at {lo:g} but the bins the landscape and the baseline both cover start"
                             f" at {first:.2f}: the mean covers less than asked; compare it only with runs over the"
                             " same bins")
            if hi is not None and hi > last + half + slack:
                notes.append(f"x_range ends at {hi:g} but the bins both cover end at {last:.2f}: the mean covers"
                             " less than asked; compare it only with runs over the same bins")
            gaps = asked & ~used & (x >= first) & (x <= last)
            if gaps.any():
                notes.append(f"{int(gaps.sum())} bins inside x_range are not covered by both (x = "
                             f"{', '.join(f'{v:.2f}' for v in x[gaps])}): the mean leaves them out")
        used &= asked
    per_bin = np.where(used, sign * (readout.value - baseline.mean), np.nan)
    sem = baseline.sem if baseline.sem is not None else np.full_like(baseline.mean, np.nan)
    if used.any() and not np.isfinite(readout.error[used]).all():
        notes.append("readout error missing in some bins (fewer than two walker groups): counted as 0")
    if used.any() and not np.isfinite(sem[used]).all():
        notes.append("baseline error missing in some bins (fewer than two seeds): counted as 0")
    error = np.sqrt(np.nan_to_num(readout.error) ** 2 + np.nan_to_num(sem) ** 2)
    error = np.where(used, error, np.nan)
    mean = err = drift = r_hat = None
    if used.any():
        mean = float(per_bin[used].mean())
        err = float(np.sqrt((error[used] ** 2).sum()) / used.sum())
        if readout.per_replica is not None:  # the mean over the bins, replica by replica: correlations included
            with np.errstate(invalid="ignore"):
                means = np.nanmean(sign * (readout.per_replica[:, used] - baseline.mean[used]), axis=1)
            means = means[np.isfinite(means)]
            if means.size > 1:
                base = float(np.sqrt((np.nan_to_num(sem[used]) ** 2).sum()) / used.sum())
                err = float(np.sqrt(means.var(ddof=1) / means.size + base**2))
        moved = readout.drift[used]
        if np.isfinite(moved).all():
            drift = float(sign * moved.mean())
        if readout.per_block is not None:  # each replica's mean over the used bins, per group of blocks
            with np.errstate(invalid="ignore"):
                draws = np.nanmean(sign * (readout.per_block[:, :, used] - baseline.mean[used]), axis=-1)
            value = rhat(draws[None])[0]
            r_hat = float(value) if np.isfinite(value) else None
    else:
        notes.append("no bin is covered by both the landscape and the baseline")
    return Advantage(readout.name, baseline.metric, higher_is_better, readout.x, per_bin, error, used, mean, err,
                     drift, notes, r_hat, x_range)


def _step(x: np.ndarray) -> float:
    """The spacing of bin centres ``x`` (0 for fewer than two)."""
    return float(x[1] - x[0]) if x.size > 1 else 0.0


# -- convergence -------------------------------------------------------------------------------------------------------


@dataclass
class Convergence:
    """Convergence figures of a run and the verdict they support.

    ``agreement`` is the longest run of consecutive x bins over which the replicas agree (:func:`agreement`) as the
    ``[lo, hi]`` of their edges, with ``agreement_bins`` bins of the ``rhat_bins`` that have an R-hat of S; None
    where no R-hat is known (no replicas or no production). A run that is not converged as a whole can still be
    read over that range."""

    flatness: float  # 5th percentile / mean of the histogram over the visited bins inside the window
    s_change: float | None  # RMS change of S (nats) between the last two snapshots
    round_trips: float | None  # completed round trips across the x range, all walkers
    walkers_with_round_trip: float | None
    walkers: int | None
    snapshots: int
    converged: bool
    reasons: list[str]
    tags: list[str]  # the reasons in a few words, for figures
    thresholds: dict[str, float]
    history: list[dict[str, float]]
    agreement: list[float] | None = None
    agreement_bins: int = 0
    rhat_bins: int = 0

    def summary(self) -> dict[str, Any]:
        return asdict(self)


THRESHOLDS = {"s_change": 0.1, "flatness": 0.2, "round_trip_fraction": 0.5, "r_hat": 1.05, "r_hat_share": 0.05,
              "r_hat_max": 1.1, "r_hat_false_alarm": 0.005, "production_blocks": 4, "window_crossings": 5.0,
              "overlap_misfit": 0.3}


@dataclass
class BinTest:
    """The per-bin R-hat test of S or of a readout across replicas (:func:`bin_test`)."""

    passed: bool
    bins: int  # bins with an R-hat (0: unknown, only the share was recorded)
    share: float  # of them at or above ``r_hat``
    allowed: int  # how many may be
    worst: float
    worst_allowed: int  # how many may reach ``r_hat_max``
    too_few_draws: bool  # a perfectly mixed bin would reach ``r_hat_max`` too often to judge
    longer: float = 1.0  # the least factor of production that could pass (see :func:`bin_test`); 1: unknown or none

    def describe(self, th: dict[str, float], draws: int | None) -> str:
        """The reason a failed test gives, naming the counts and what was allowed."""
        if self.too_few_draws:
            return (f"{draws} production draws per replica are too few to judge R-hat bin by bin (a perfectly mixed bin"
                    f" reaches {th['r_hat_max']:g} more than {th['r_hat_share']:.0%} of the time); give the run more"
                    " steps or a larger `production`")
        worst = (f"worst {self.worst:.3f} (< {th['r_hat_max']:g} required)" if self.worst_allowed == 0 else
                 f"worst {self.worst:.3f} ({self.worst_allowed} bin{'s' if self.worst_allowed > 1 else ''} at or"
                 f" above {th['r_hat_max']:g} allowed)")
        if not self.bins:
            return (f"R-hat >= {th['r_hat']:g} in {self.share:.0%} of the bins (> {th['r_hat_share']:.0%} allowed),"
                    f" {worst}")
        allowed = (f"{self.allowed} allowed" if draws is None else
                   f"{self.allowed} allowed: {th['r_hat_share']:.0%}, or what mixed bins reach by chance with {draws}"
                   " draws")
        return f"R-hat >= {th['r_hat']:g} in {self.share:.0%} of {self.bins} bins ({allowed}), {worst}{self._more()}"

    def _more(self) -> str:
        if self.passed or self.longer <= 1.0:
            return ""
        return (f"; R-hat - 1 falls about as 1 / length once the replicas mix, and more slowly before, so at least"
                f" {self.longer:.2g}x this production (more steps, or a larger `production`) is needed to pass")


def longer_production(r_hat: float, level: float) -> float:
    """The least factor of production that brings ``r_hat`` below ``level`` if ``R-hat - 1`` falls as ``1 / length``
    (a lower bound: slowly mixing replicas fall more slowly, see :func:`bin_test`); 1 where it is below already."""
    return (r_hat - 1.0) / (level - 1.0) if r_hat >= level else 1.0


def bin_test(r_hat: np.ndarray, chains: int, draws: int | None, th: dict[str, float]) -> BinTest:
    """Do the replicas agree bin by bin? ``r_hat`` per bin (NaN: no R-hat), from ``chains`` replicas and ``draws``
    draws each (None: as many as make chance negligible). At most ``r_hat_share`` of the bins may reach ``r_hat``,
    none ``r_hat_max``, and where chance alone does more (few draws, few replicas), as many as perfectly mixed bins
    reach with probability above ``r_hat_false_alarm`` (:func:`~lightning_entropy.core.combine.rhat_allowed`): a
    converged landscape then fails each count with at most that chance. With 4 replicas and 32 draws a fixed 5 %
    share failed 19 % of simulated perfectly mixed 52-bin readouts (docs/PERFORMANCE.md, nineteenth session). Where a
    mixed bin would reach ``r_hat_max`` more often than ``r_hat_share``, the draws are too few to judge and the test
    fails saying so.

    A failed test also says how much longer production would have to be, at least (:attr:`BinTest.longer`): the
    factor that would bring the bins that must fall below ``r_hat`` (and ``r_hat_max``) there if ``R-hat - 1`` fell
    as ``1 / length``. Simulated slowly mixing replicas (AR(1) chains, 32 block draws) fall more slowly than that,
    about as ``length^-0.8`` (docs/PERFORMANCE.md, twenty-fifth session), so the factor is a lower bound."""
    known = np.asarray(r_hat, dtype=float)
    known = known[np.isfinite(known)]
    n = int(known.size)
    above = int((known >= th["r_hat"]).sum())
    over = int((known >= th["r_hat_max"]).sum())
    worst = float(known.max()) if n else float("nan")
    if draws is None:
        allowed, worst_allowed, few = int(np.floor(th["r_hat_share"] * n + 1e-9)), 0, False
    else:
        few = rhat_null_rate(th["r_hat_max"], chains, draws) > th["r_hat_share"]
        allowed = rhat_allowed(n, th["r_hat"], chains, draws, th["r_hat_share"], th["r_hat_false_alarm"])
        worst_allowed = rhat_allowed(n, th["r_hat_max"], chains, draws, 0.0, th["r_hat_false_alarm"])
    desc = np.sort(known)[::-1]

    def need(count: int, level: float) -> float:  # production factor that brings the (count+1)-th worst below level
        return longer_production(float(desc[count]), level) if n > count else 1.0

    longer = max(need(allowed, th["r_hat"]), need(worst_allowed, th["r_hat_max"]))
    return BinTest(not few and above <= allowed and over <= worst_allowed, n, above / max(n, 1), allowed, worst,
                   worst_allowed, few, longer)


# the verdict's tags that :func:`agreement` answers bin by bin: a run that fails only these can be read where the
# replicas agree; any other failed test (S still moving, histogram not flat, slow diffusion, ...) is about the whole run
RANGE_TAGS = ("replicas disagree", "readout not mixed")

READOUT_NAMES = {"max_s": "max-S line", "mean_curve": "Eq. (1) mean", "label_free": "label-free Eq. (1)"}


def with_readouts(conv: Convergence, advantages: dict[str, Advantage],
                  readouts: dict[str, Readout] | None = None) -> Convergence:
    """``conv`` with the readouts' own tests added to the verdict: every advantage with an R-hat across replicas
    (:attr:`Advantage.mean_advantage_r_hat`) must have it below ``thresholds["r_hat"]``, and every readout in
    ``readouts`` with per-bin R-hats (:attr:`Readout.r_hat`) must pass, over its sampled bins, the test S passes per
    bin (:func:`bin_test`: below ``r_hat_max`` in every bin, at or above ``r_hat`` in at most ``r_hat_share`` of them,
    or as many as chance reaches with its draws). A landscape
    whose S has converged can still carry a readout whose replicas have not mixed (on the spiral's label-free walk
    the held-out accuracy moves slowly within each train-loss level while S along it has converged); the result it
    reports is then not settled, and the verdict says so. The per-bin test is what the curve a run reports needs;
    the mean over bins alone once passed by chance (R-hat 1.001 over a whole production, 1.15 over its last half,
    with 36 % of the bins at 1.05 or more: docs/PERFORMANCE.md, eighteenth session)."""
    th = conv.thresholds
    limit = th["r_hat"]
    reasons, tags = list(conv.reasons), list(conv.tags)

    def flag(reason: str) -> None:
        reasons.append(reason)
        if "readout not mixed" not in tags:
            tags.append("readout not mixed")

    for name, adv in advantages.items():
        r_hat = adv.mean_advantage_r_hat
        if r_hat is not None and math.isfinite(r_hat) and r_hat >= limit:
            flag(f"the {READOUT_NAMES.get(name, name)}'s mean advantage has R-hat {r_hat:.3f} across replicas (>="
                 f" {limit:g}): the replicas' readouts have not mixed; run longer (at least"
                 f" {longer_production(r_hat, limit):.2g}x this production, see `analysis.bin_test`), and read its error (the"
                 " replicas' spread) as a lower bound until then")
    for name, readout in (readouts or {}).items():
        per_bin = readout.r_hat
        if per_bin is None:
            continue
        known = per_bin[np.isfinite(per_bin) & ~readout.undersampled]
        if known.size == 0:
            continue
        chains, draws = readout.per_block.shape[:2]
        test = bin_test(known, chains, draws, th)
        label, why = READOUT_NAMES.get(name, name), test.describe(th, draws)
        if test.too_few_draws:
            flag(f"the {label}'s agreement across replicas is unknown: {why}")
        elif not test.passed:
            flag(f"the {label} disagrees across replicas bin by bin: {why}")
    return replace(conv, converged=not reasons, reasons=reasons, tags=tags)


def agreement(landscape, readouts: dict[str, Readout] | None = None, *, thresholds: dict[str, float] | None = None,
              draws: int | None = None) -> tuple[tuple[int, int] | None, int]:
    """Where the replicas agree: the longest run of consecutive x bins ``[i, j)`` in which every bin has an R-hat of
    S across replicas (``landscape.entropy_r_hat``), no bin's R-hat (of S, or of any readout where it has one;
    :attr:`Readout.r_hat`) reaches ``r_hat_max``, and at most ``r_hat_share`` of the bins reach ``r_hat``, the same
    test the verdict applies to the whole grid. Returns ``((i, j) or None, bins with an R-hat of S)``; ties go to
    the run at higher x; with ``draws`` (the fewest draws of any R-hat there), a run of ``n`` bins may hold as many
    bins at ``r_hat`` as :func:`bin_test` allows ``n`` bins. On the spiral's main job the label-free readout's
    replicas agree above ln L_train of about -1.1 and disagree below, where each configuration keeps its held-out
    accuracy for longer than production lasts;
    S's R-hat reaches 1.1-1.2 at some window edges, so the range was the random-network end (docs/PERFORMANCE.md)."""
    th = {**THRESHOLDS, **(thresholds or {})}
    s_hat = getattr(landscape, "entropy_r_hat", None)
    if s_hat is None:
        return None, 0
    worst = np.asarray(s_hat, dtype=np.float64).copy()
    known = np.isfinite(worst)
    for r in (readouts or {}).values():
        extra = r.r_hat
        if extra is not None and extra.shape == worst.shape:
            worst = np.where(known & np.isfinite(extra), np.fmax(worst, extra), worst)
    best, n = None, worst.size
    above = np.concatenate([[0], np.cumsum(known & (worst >= th["r_hat"]))])
    if draws is None:
        allowed = [th["r_hat_share"] * m for m in range(n + 1)]
    else:
        chains = _chains(landscape)
        allowed = [rhat_allowed(m, th["r_hat"], chains, draws, th["r_hat_share"], th["r_hat_false_alarm"])
                   for m in range(n + 1)]
    for i in range(n):
        if not known[i]:
            continue
        j = i
        while j < n and known[j] and worst[j] < th["r_hat_max"]:
            j += 1
        # the longest [i, k) inside [i, j) whose share of bins at or above r_hat is allowed
        for k in range(j, i, -1):
            if above[k] - above[i] <= allowed[k - i]:
                if best is None or k - i >= best[1] - best[0]:
                    best = (i, k)
                break
    return best, int(known.sum())


def _chains(landscape) -> int:
    """The independent replicas (the R-hats' chains): rows of ``replica_entropy``, else the walker groups."""
    grids = getattr(landscape, "replica_entropy", None)
    return int(grids.shape[0]) if grids is not None else max(int(getattr(landscape, "groups", 2)), 2)


def _entropy_bin_test(landscape, last: dict[str, float], th: dict[str, float]) -> tuple[BinTest, int | None]:
    """:func:`bin_test` of S's per-bin R-hat (``landscape.entropy_r_hat``, else the last snapshot's worst and share);
    the draws are the fewest any window used (a snapshot from before they were recorded: the fixed share alone)."""
    draws = int(last["r_hat_draws"]) if last.get("r_hat_draws") else None
    r_hat = getattr(landscape, "entropy_r_hat", None)
    chains = _chains(landscape)
    if r_hat is not None and np.isfinite(r_hat).any():
        return bin_test(np.asarray(r_hat, dtype=float), chains, draws, th), draws
    # only the summary numbers: the share and the worst as recorded
    share, worst = float(last.get("r_hat_above") or 0.0), float(last["r_hat"])
    return BinTest(share <= th["r_hat_share"] and worst < th["r_hat_max"], 0, share, 0, worst, 0, False), None


def convergence(landscape, *, walkers: int | None = None, thresholds: dict[str, float] | None = None,
                readouts: dict[str, Readout] | None = None) -> Convergence:
    """Judge a run by its snapshots (``landscape.history``): converged when S moved less than ``s_change`` nats RMS
    over the last snapshot interval, the window's histogram is at least ``flatness`` flat, and at least
    ``round_trip_fraction`` of the walkers crossed the x range and back. Every failed test is a reason.

    A run with windows and replicas (``fill="visit"``) is judged on what its snapshots record: the worst window's
    histogram flatness over the bins it reaches (the production histogram once the bias is frozen), round trips
    within each walker's window, and, in addition, a production phase of at least ``production_blocks`` blocks and
    the rank-normalized split R-hat of S across replicas (per x bin, production blocks as draws) below ``r_hat`` in
    all but ``r_hat_share`` of the bins all replicas reached, and below ``r_hat_max`` in every one, and walkers
    that crossed even the slowest window at least ``window_crossings`` times during production (estimated from
    their diffusion in x; the reason then says how much longer production would need to be), and neighbouring
    windows whose S agree in shape on their overlap within ``overlap_misfit`` nats RMS
    (:func:`~lightning_entropy.core.combine.overlap_misfit`: a window caught in a trap of its frozen bias puts its
    replica's S off beyond the overlap, and too few blocks may leave R-hat unable to see it). (R-hat of a
    single converged quantity scatters around 1 by about ``1/(2 n)`` with ``n`` draws per split chain; the worst of
    ~50 bins then exceeds 1.05 by chance in short runs, hence the share, widened by :func:`bin_test` to what chance
    reaches with the fewest draws a window used.) With ``readouts``, their per-bin R-hat
    joins that of S in :func:`agreement`, the range the verdict reports as read-able where the whole is not.
    """
    th = {**THRESHOLDS, **(thresholds or {})}
    history = [dict(h) for h in landscape.history]
    last = history[-1] if history else {}
    windowed = "r_hat" in last
    flat = float(last["flatness"]) if windowed else float(landscape.flatness(window_only=True))
    change = last.get("s_change")
    change = None if change is None or not math.isfinite(change) else float(change)
    trips = last.get("round_trips")
    with_trip = last.get("walkers_with_round_trip")
    reasons, tags = [], []
    if len(history) < 2:
        reasons.append("fewer than two snapshots: the change of S between snapshots is unknown")
        tags.append("too few snapshots")
    elif change is None:
        reasons.append("no bin inside the window was visited at the last two snapshots: the change of S is unknown")
        tags.append("window not reached")
    elif change > th["s_change"]:
        reasons.append(f"S still moves: {change:.3g} nats RMS over the last snapshot interval (> {th['s_change']:g})")
        tags.append("S still moving")
    if flat < th["flatness"]:
        where = "in the least flat window" if windowed else "inside the window"
        reasons.append(f"histogram not flat {where}: flatness {flat:.3g} (< {th['flatness']:g})")
        tags.append("histogram not flat")
    if walkers and with_trip is not None and with_trip < th["round_trip_fraction"] * walkers:
        where = "within its window" if windowed else "across the train-loss range"
        reasons.append(f"{int(with_trip)} of {walkers} walkers made a round trip {where}"
                       f" (< {th['round_trip_fraction']:.0%})")
        tags.append("few round trips")
    if windowed and last.get("empty_windows"):
        reasons.append(f"{int(last['empty_windows'])} windows (replica x window) were never reached by a walker: their"
                       " part of S is unknown; narrow the x range (`ranges`) or start walkers lower (`start`)")
        tags.append("windows not reached")
    if windowed:
        blocks = int(last.get("production_blocks") or 0)
        r_hat = last.get("r_hat")
        if not last.get("production") or blocks < th["production_blocks"]:
            reasons.append(f"production phase too short: {blocks} blocks with the bias frozen"
                           f" (< {th['production_blocks']:g}); give the run more steps or a larger `production`")
            tags.append("no production")
        elif r_hat is None or not math.isfinite(r_hat):
            reasons.append("R-hat across replicas is unknown: fewer than two replicas, or no x bin that every replica"
                           " reached in every production block")
            tags.append("R-hat unknown")
        else:
            test, draws = _entropy_bin_test(landscape, last, th)
            if test.too_few_draws:
                reasons.append(f"R-hat of S across replicas cannot be judged: {test.describe(th, draws)}")
                tags.append("R-hat unknown")
            elif not test.passed:
                reasons.append(f"replicas disagree: {test.describe(th, draws)}")
                tags.append("replicas disagree")
        misfit = last.get("overlap_misfit")
        if misfit is not None and math.isfinite(misfit) and misfit > th["overlap_misfit"]:
            lo, hi = last.get("misfit_lo", math.nan), last.get("misfit_hi", math.nan)
            reasons.append(f"windows disagree on their overlap: in one replica two neighbouring windows' S differ in"
                           f" shape by {misfit:.2g} nats RMS over ln L_train {lo:.2f} to {hi:.2f} (> "
                           f"{th['overlap_misfit']:g}): a window's walkers did not reach the equilibrium of its"
                           " frozen bias (a trap it left), and that replica's S is off beyond the overlap; run longer")
            tags.append("windows disagree")
        crossings = last.get("window_crossings")
        if crossings is not None and math.isfinite(crossings) and crossings < th["window_crossings"]:
            lo, hi = last.get("slowest_window_lo", math.nan), last.get("slowest_window_hi", math.nan)
            more = th["window_crossings"] / max(crossings, 1e-3)
            reasons.append(f"walkers diffuse too slowly for this production: in the slowest window ({lo:.2f} to"
                           f" {hi:.2f} in x) a walker crossed it about {crossings:.2g} times (< "
                           f"{th['window_crossings']:g}); a production about {more:.2g}x longer (more steps, or a"
                           " larger `production`) would be needed")
            tags.append("slow diffusion")
    draws = [int(last["r_hat_draws"])] if last.get("r_hat_draws") else []
    draws += [r.per_block.shape[1] for r in (readouts or {}).values() if r.per_block is not None]
    span, known = agreement(landscape, readouts, thresholds=th, draws=min(draws) if draws else None)
    edges = landscape.edges[0]
    return Convergence(flat, change, trips, with_trip, walkers, len(history), not reasons, reasons, tags, th,
                       history, None if span is None else [float(edges[span[0]]), float(edges[span[1]])],
                       0 if span is None else span[1] - span[0], known)
