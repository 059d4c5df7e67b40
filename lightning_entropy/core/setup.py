"""Setting up a Wang-Landau run before its first step: the sampler kinds, the grid (ranges found from the starts and
random box points, bin widths, a resumed checkpoint's grid), the walkers' admission into it, and the landscape's
metadata. Lightning-free: the strategies call these once, at the start of a fit, and so can a script that drives
:class:`~lightning_entropy.core.run.Run` or :class:`~lightning_entropy.core.step_run.StepRun` itself.

Units: ranges and bin widths are in CV units (nats for ``ln_*`` axes, accuracy for accuracy axes, logits on a logit
axis); times in seconds.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata as package_metadata
from typing import Any

import numpy as np
import torch

from lightning_entropy.core import fingerprint
from lightning_entropy.core import schedule as schedules
from lightning_entropy.core.box import uniform
from lightning_entropy.core.samplers import wlmc, wlmd

#: Random box points evaluated to find the grid ranges (with the starting walkers), and, under a time cap, the least
#: of them and the largest share of the time left they may take.
RANGE_PROBE, RANGE_PROBE_MIN, RANGE_PROBE_SHARE = 256, 8, 0.05
#: Most bins a landscape may have (all axes together): 10**7 bins are ~0.5 GB of float64 arrays (S, H, slopes...).
MAX_TOTAL_BINS = 10_000_000


def package_version() -> str:
    """The installed version of lightning-entropy (package metadata; ``"unknown"`` from an uninstalled checkout)."""
    try:
        return package_metadata.version("lightning-entropy")
    except package_metadata.PackageNotFoundError:
        return "unknown"


# -- the sampler kinds --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplerKind:
    """What differs between the Wang-Landau samplers, asked of the kind instead of branching on its name.

    Attributes:
        name: ``"md"`` or ``"mc"`` (the strategies' ``sampler`` argument).
        state_type: the walker state class (restores a checkpoint's state).
        build: ``build(evaluate, landscape, bound, config)`` the sampler.
        kernel_sigma: the default deposit width in bins.
        f0: the default schedule's initial factor (nats per sampler step).
        monte_carlo: hard accuracies (a CV without gradient) instead of smoothed ones.
        fills: the fills the kind supports (the first is its default without an explicit schedule).
        integrator: the config fields recorded in the landscape's metadata.
    """

    name: str
    state_type: type
    build: Callable[..., Any]
    kernel_sigma: float
    f0: float
    monte_carlo: bool
    fills: tuple[str, ...]
    integrator: tuple[str, ...]

    def default_schedule(self):
        return schedules.FlatnessOneOverT(f0=self.f0)

    def describe_integrator(self, config) -> dict[str, Any]:
        return {name: getattr(config, name) for name in self.integrator}


SAMPLERS = {
    "md": SamplerKind("md", wlmd.MDState, wlmd.WLMD, kernel_sigma=0.5, f0=0.1, monte_carlo=False,
                      fills=("visit", "step"), integrator=("dt", "friction", "metropolis", "mass")),
    "mc": SamplerKind("mc", wlmc.MCState, wlmc.WLMC, kernel_sigma=0.0, f0=1.0, monte_carlo=True, fills=("step",),
                      integrator=("step_size", "adapt_steps")),
}


def sampler_kind(name: str) -> SamplerKind:
    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r}: use 'md' (Wang-Landau MD) or 'mc' (Wang-Landau Monte Carlo).")
    return SAMPLERS[name]


def visit_replicas(walkers: int, replicas: int | str, windows: int | str, *, production: float, log_f0: float,
                   exchange_every: int) -> int:
    """Check the replica-exchange settings of ``fill="visit"``; returns the number of replicas (``"auto"``: the
    largest of 4, 3, 2, 1 that divides ``walkers``)."""
    windows_ok = windows == "auto" or (isinstance(windows, int) and not isinstance(windows, bool) and windows >= 1)
    if not windows_ok:
        raise ValueError(f"windows={windows!r}: give a positive integer or 'auto'.")
    if replicas == "auto":
        positive = isinstance(walkers, int) and walkers > 0
        replicas = max(r for r in (4, 3, 2, 1) if walkers % r == 0) if positive else 1
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
        raise ValueError(f"replicas={replicas!r} must be a positive integer (independent replicas).")
    per = replicas * (windows if isinstance(windows, int) else 1)
    if walkers % per:
        raise ValueError(
            f"walkers={walkers} cannot be split over replicas={replicas} x windows={windows}: use a multiple of"
            f" {per} walkers (e.g. walkers={per * max(1, round(walkers / per))}), or replicas=1."
        )
    if production is not None and not 0 <= production < 1:
        raise ValueError(f"production={production!r} is a fraction of the run in [0, 1), e.g. 0.3.")
    if not (math.isfinite(log_f0) and log_f0 > 0):
        raise ValueError(f"log_f0={log_f0!r}: the initial WL factor must be a positive number of nats, e.g. 0.1.")
    if not isinstance(exchange_every, int) or exchange_every < 0:
        raise ValueError(f"exchange_every={exchange_every!r} must be a non-negative integer of sampler steps.")
    return replicas


def unit_slope(cv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A bias equal to the first CV: its gradient is the gradient of ln L_train (the optimiser starts' force)."""
    return cv[:, 0], torch.nn.functional.one_hot(torch.zeros(len(cv), dtype=torch.long), cv.shape[1]).to(cv)


# -- the grid -----------------------------------------------------------------------------------------------------


def auto_ranges(variables, evaluate, theta0: torch.Tensor, bound: torch.Tensor, gen: torch.Generator, *,
                range_margin: float, start_values: torch.Tensor | None = None, per_point: float | None = None,
                time_left: float | None = None) -> list[tuple[float, float]]:
    """Grid ranges from the starting walkers ``theta0`` and :data:`RANGE_PROBE` random box points.

    ``range_margin``: CV units below the lowest ln loss seen (and around a test loss). With a time cap
    (``time_left`` seconds, ``per_point`` seconds per evaluated point, ``start_values`` the starts' CVs), a probe
    that would take more than :data:`RANGE_PROBE_SHARE` of the time left uses fewer points (at least
    :data:`RANGE_PROBE_MIN`), with a warning.
    """
    points = RANGE_PROBE
    if time_left is not None and per_point and start_values is not None:
        affordable = int(RANGE_PROBE_SHARE * max(0.0, time_left) / per_point)
        points = max(RANGE_PROBE_MIN, min(RANGE_PROBE, affordable))
    with torch.no_grad():
        if points == RANGE_PROBE:  # the usual probe, evaluated exactly as always
            probe = torch.cat([theta0, uniform(RANGE_PROBE, bound, gen)])
            values = torch.cat([evaluate(probe[i : i + 64]).values for i in range(0, len(probe), 64)])
        else:
            warnings.warn(
                f"The grid's ranges come from {points} random box points instead of {RANGE_PROBE}: evaluating"
                f" {RANGE_PROBE} would take about {RANGE_PROBE * per_point:.0f} s of the {time_left:.0f} s left of"
                " max_time. Give `ranges` (sampler.ranges) to skip the probe.", stacklevel=3)
            probe = uniform(points, bound, gen)
            values = torch.cat([start_values] + [evaluate(probe[i : i + 8]).values for i in range(0, len(probe), 8)])
    ranges = []
    for k, cv in enumerate(variables):
        col = values[:, k][torch.isfinite(values[:, k])]
        if col.numel() == 0:
            raise ValueError(
                f"Collective variable {cv.name!r} is not finite at any starting walker or random box point; check"
                " the loss and the data (NaN inputs?), or pass `ranges` explicitly."
            )
        lo, hi = float(col.min()), float(col.max())
        if "accuracy" in cv.name and "logit" not in cv.label:
            half = 0.5 / 40
            ranges.append((-half, 1 + half))
        elif "accuracy" in cv.name:
            ranges.append((-9.5, 9.5))
        elif cv.name == "ln_train_loss":
            ranges.append((lo - range_margin, hi + 0.5))
        elif cv.name == "ln_test_loss":
            ranges.append((lo - range_margin, hi + range_margin))
        else:
            pad = 0.5 * (hi - lo) + 1e-3
            ranges.append((lo - pad, hi + pad))
    return ranges


def bin_widths(variables, ranges, bin_width: Sequence[float] | float | None) -> list[float]:
    """Bin width per axis: ``bin_width`` (one for all axes, or one per axis), else 0.1 for ln-loss axes, 1/40 for
    accuracies, 0.25 on a logit axis, 1/50 of the range otherwise."""
    if bin_width is not None:
        widths = [bin_width] * len(variables) if np.isscalar(bin_width) else list(bin_width)
        if len(widths) != len(variables) or not all(w > 0 for w in widths):
            raise ValueError(f"bin_width={bin_width!r}: give one positive width per axis ({len(variables)}).")
        return [float(w) for w in widths]
    out = []
    for cv, (lo, hi) in zip(variables, ranges):
        if cv.name.startswith("ln_"):
            out.append(0.1)
        elif "accuracy" in cv.name:
            out.append(0.25 if "logit" in cv.label else 1 / 40)
        else:
            out.append((hi - lo) / 50)
    return out


def check_grid(ranges: Sequence[tuple[float, float]], widths: Sequence[float]) -> None:
    """Refuse a grid whose total bin count exceeds :data:`MAX_TOTAL_BINS` before it is allocated (``widths``: bin
    width per axis in CV units)."""
    counts = []
    for (lo, hi), w in zip(ranges, widths):
        w = float(w)
        if not (math.isfinite(w) and w > 0):
            raise ValueError(f"bin_width={list(widths)!r}: every width must be a positive finite number.")
        counts.append(max(2, math.ceil((hi - lo) / w - 1e-9)))
    total = math.prod(counts)
    if total > MAX_TOTAL_BINS:
        suggested = [float((hi - lo) / max(2, int(MAX_TOTAL_BINS ** (1 / len(counts))))) for lo, hi in ranges]
        raise ValueError(
            f"bin_width={list(widths)!r} over ranges {list(ranges)!r} gives {counts} bins ({total:.3g} in all), more "
            f"than the cap of {MAX_TOTAL_BINS:.0e}: the landscape would not fit in memory. Use a coarser bin_width, "
            f"e.g. at least {[round(s, 6) for s in suggested]}."
        )


def grid(variables, ranges, bin_width) -> tuple[list[tuple[float, float]], list[int]]:
    """Checked ranges and bins of the grid: whole bins of the bin width from each range's low end."""
    if len(ranges) != len(variables):
        raise ValueError(f"ranges={ranges!r} gives {len(ranges)} axes for the variables"
                         f" {[v.name for v in variables]}.")
    widths = bin_widths(variables, ranges, bin_width)
    check_grid(ranges, widths)
    bins = [max(2, int(math.ceil((hi - lo) / w - 1e-9))) for (lo, hi), w in zip(ranges, widths)]
    return [(lo, lo + n * w) for (lo, _), n, w in zip(ranges, bins, widths)], bins


def aligned(variables, ranges, bin_width) -> list[tuple[float, float]]:
    """Automatic ``ranges`` with the low end of every ln-loss axis moved down to a whole multiple of its bin width,
    so that runs whose starts differ (another seed, another machine) share bin edges and their per-bin readouts and
    advantages compare bin for bin. Other axes keep their ranges (accuracy bins are centred on multiples of 1/40)."""
    widths = bin_widths(variables, ranges, bin_width)
    out = []
    for cv, (lo, hi), w in zip(variables, ranges, widths):
        if cv.name.startswith("ln_") and math.isfinite(lo):
            lo = math.floor(lo / w + 1e-9) * w
        out.append((lo, hi))
    return out


def partial(ranges) -> bool:
    """Whether ``ranges`` leaves any end to be found (``None``), or all of them."""
    return ranges is None or any(end is None for axis in ranges for end in axis)


def fill_ranges(variables, given, found) -> list[tuple[float, float]]:
    """The grid ranges from the ends the user gave (``given``: one ``(lo, hi)`` per axis, ``None`` where the end is
    to be found, or ``None`` for all) and those found (``found``: automatic ranges, or a checkpoint's): a given end
    wins. A given end beyond the found far end is an error that names both."""
    if given is None:
        return [tuple(r) for r in found]
    if len(given) != len(variables):
        raise ValueError(f"ranges={given!r} gives {len(given)} axes for the variables"
                         f" {[v.name for v in variables]}: give one (lo, hi) per variable.")
    out = []
    for cv, (lo, hi), (found_lo, found_hi) in zip(variables, given, found):
        lo_, hi_ = (found_lo if lo is None else lo), (found_hi if hi is None else hi)
        if not lo_ < hi_:
            raise ValueError(
                f"ranges={given!r}: on the {cv.name} axis the given end meets the end found from the starting"
                f" walkers ({lo_:g} >= {hi_:g}): the walkers do not reach the given range. Give both ends of"
                f" the {cv.name} axis, or move the given end.")
        out.append((float(lo_), float(hi_)))
    return out


def resumed_grid(saved: Mapping[str, Any] | None, resume: Mapping[str, Any], variables, *, ranges, bin_width
                 ) -> tuple[list[tuple[float, float]], list[int]]:
    """The checkpoint's grid (never found again from the restored weights, which are walker 0's); explicit
    ``variables``, ``ranges`` or ``bin_width`` that ask for another grid are refused
    (:class:`~lightning_entropy.core.fingerprint.ResumeMismatch`)."""
    saved_grid = (saved or {}).get("grid")
    if saved_grid is None:  # a checkpoint from before setup records: its landscape's geometry
        land = resume["run"]["landscape"] if "run" in resume else resume["landscape"]
        cfg = land["config"]
        saved_grid = {"names": list(cfg["names"]), "ranges": [list(r) for r in cfg["ranges"]],
                      "bins": list(cfg["bins"]), "widths": [(hi - lo) / n for (lo, hi), n in zip(cfg["ranges"],
                                                                                               cfg["bins"])]}
    names = [v.name for v in variables]
    mismatch = fingerprint.ResumeMismatch
    if list(saved_grid["names"]) != names:
        raise mismatch(f"The checkpoint's grid has the axes {list(saved_grid['names'])}; this run samples {names}:"
                       f" resume with the same variables and grid, {fingerprint.NEW_RUN}.")
    found = [(float(lo), float(hi)) for lo, hi in saved_grid["ranges"]]
    if ranges is not None:  # the ends left open are the checkpoint's
        ranges = fill_ranges(variables, ranges, found)
        asked, bins = grid(variables, ranges, bin_width)
        mine = {"names": names, "ranges": asked, "bins": bins, "widths": bin_widths(variables, asked, bin_width)}
        if not fingerprint.same_grid(saved_grid, mine):
            raise mismatch(f"The checkpoint's grid is {fingerprint.grid_text(saved_grid)}; this run asks for"
                           f" ranges={ranges} ({fingerprint.grid_text(mine)}). Resume without `ranges` (the"
                           " checkpoint's grid is reused) or with the checkpoint's ranges, or start a new run.")
    elif bin_width is not None:
        widths = bin_widths(variables, found, bin_width)
        if not all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(widths, saved_grid["widths"])):
            raise mismatch(f"The checkpoint's grid is {fingerprint.grid_text(saved_grid)}; this run asks for"
                           f" bin_width={bin_width}. Resume without `bin_width` or with the checkpoint's"
                           " widths, or start a new run.")
    return found, [int(n) for n in saved_grid["bins"]]


def resumed_walkers(state: Mapping[str, Any]) -> torch.Tensor:
    """A checkpoint's walkers ``(W, P)`` (either fill): a resume starts from them (no start phase runs again)."""
    return (state["run"]["state"] if "run" in state else state["state"])["theta"]


def round_trip_range(landscape, ranges) -> tuple[float, float]:
    """The x range round trips are counted across: the soft-wall window inside the grid, else the whole grid."""
    x_lo, x_hi = (float(v) for v in landscape.window[0])
    x_range = (max(x_lo, ranges[0][0]), min(x_hi, ranges[0][1]))
    if not x_range[1] > x_range[0]:  # the window misses the grid: round trips across the grid instead
        x_range = tuple(ranges[0])
    return x_range


# -- the walkers and the record --------------------------------------------------------------------------------------


def admit(landscape, theta0: torch.Tensor, cv: torch.Tensor, ranges) -> torch.Tensor:
    """Replace walkers that start outside the grid (or at a NaN/inf loss) by copies of walkers inside it (``cv``:
    their CVs); an error when none is inside."""
    walkers = len(theta0)
    inside = landscape.inside(cv)
    if bool(inside.all()):
        return theta0
    if not bool(inside.any()):
        raise ValueError(
            f"All {walkers} walkers start outside the grid ranges {ranges} or at a non-finite loss (CVs:"
            f" {cv[:4].tolist()}...). Widen `ranges` (or leave it unset), or choose another `start`."
        )
    good = torch.nonzero(inside).squeeze(1)
    bad = torch.nonzero(~inside).squeeze(1)
    warnings.warn(
        f"{len(bad)} of {walkers} walkers started outside the grid or at a non-finite loss; they start as"
        " copies of walkers inside it (their velocities and moves still differ).",
        stacklevel=3,
    )
    theta0 = theta0.clone()
    theta0[bad] = theta0[good[torch.arange(len(bad), device=good.device) % len(good)]]
    return theta0


def metadata(*, model: str, parameters: int, box, kind: SamplerKind, config, fill: str, schedule, log_f0: float,
             replicas: int, production: float, walkers: int, seed: int, start: str, variables, vectorized: bool,
             lightning_version: str) -> dict[str, Any]:
    """The landscape's record of how it was sampled (saved with it; see :meth:`Landscape.save`)."""
    visit = fill == "visit"
    return {
        "model": model,
        "parameters": parameters,
        "box": box.describe(),
        "sampler": kind.name,
        "integrator": kind.describe_integrator(config),
        "schedule": ({"name": "per_visit_halving_one_over_t", "log_f0": log_f0} if visit else schedule.describe()),
        "fill": fill,
        "replicas": replicas if visit else 1,
        "production": production if visit else 0.0,
        "walkers": walkers,
        "seed": seed,
        "start": start,
        "variables": [v.name for v in variables],
        "test_labels_in_dynamics": any(v.split == "test" for v in variables),
        "vectorized": vectorized,
        "versions": {"lightning_entropy": package_version(), "torch": str(torch.__version__),
                     "lightning": lightning_version},
    }


__all__ = [
    "MAX_TOTAL_BINS", "RANGE_PROBE", "SAMPLERS", "SamplerKind", "admit", "aligned", "auto_ranges", "bin_widths",
    "check_grid", "grid", "metadata", "package_version", "resumed_grid", "resumed_walkers", "round_trip_range",
    "sampler_kind", "unit_slope", "visit_replicas",
]
