"""Wang-Landau factor schedules: how many nats one sampler step deposits into the landscape.

The factor ``f_t`` is the total deposit of one sampler step, shared by the walkers (each deposits ``f_t / W``),
which matches the reference study's walkers that each kept a grid and averaged them. ``t`` counts sampler steps
(per walker), starting at 1.

A schedule has explicit state (a dict of tensors) and three pure functions, in the style of ``init``/``step``:

- ``init(device) -> state``
- ``factor(state, t) -> f_t`` (tensor ops only: called on the hot path, never synchronises),
- ``update(state, landscape, t) -> state`` (called between chunks of steps; may read the histogram).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lightning_entropy.core.landscape import Landscape


@dataclass(frozen=True)
class Constant:
    """``f_t = f`` nats per step, forever (no convergence; useful for tests and exploration)."""

    f: float = 0.01

    def init(self, device=None) -> dict[str, torch.Tensor]:
        return {}

    def factor(self, state: dict[str, torch.Tensor], t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(t, self.f, dtype=torch.float64)

    def update(self, state, landscape: Landscape, t: int) -> dict[str, torch.Tensor]:
        return state

    def describe(self) -> dict[str, Any]:
        return {"name": "constant", **asdict(self)}


@dataclass(frozen=True)
class RampPlateauDecay:
    """The reference study's schedule: linear ramp ``0 -> f_max`` over ``t_rise`` steps, plateau until ``t_drop``,
    then ``f_max (t_drop - t_off) / (t - t_off)`` (a 1/t decay). ``t_drop=None`` keeps the plateau forever.

    Units: ``f_max`` nats per sampler step; ``t_*`` sampler steps.
    """

    f_max: float = 5.0
    t_rise: int = 200_000
    t_drop: int | None = 10_000_000
    t_off: int = 8_000_000

    def __post_init__(self) -> None:
        if self.f_max <= 0 or self.t_rise < 0:
            raise ValueError(f"RampPlateauDecay needs f_max > 0 and t_rise >= 0, got {self.f_max}, {self.t_rise}.")
        if self.t_drop is not None and not self.t_off < self.t_drop:
            raise ValueError(f"RampPlateauDecay needs t_off < t_drop, got t_off={self.t_off}, t_drop={self.t_drop}.")

    def init(self, device=None) -> dict[str, torch.Tensor]:
        return {}

    def factor(self, state, t: torch.Tensor) -> torch.Tensor:
        t = t.to(torch.float64)
        ramp = self.f_max * torch.clamp(t / max(self.t_rise, 1), max=1.0)
        if self.t_drop is None:
            return ramp
        decay = self.f_max * (self.t_drop - self.t_off) / (t - self.t_off).clamp(min=1.0)
        return torch.where(t > self.t_drop, decay, ramp)

    def update(self, state, landscape: Landscape, t: int):
        return state

    def describe(self) -> dict[str, Any]:
        return {"name": "ramp_plateau_decay", **asdict(self)}


@dataclass(frozen=True)
class FlatnessOneOverT:
    """Classic Wang-Landau halving on a flat histogram, switching to ``f_t = N / t`` (Belardinelli-Pereyra 1/t).

    Start at ``f0`` nats per step; whenever the histogram collected since the last halving is flat
    (:meth:`Landscape.flatness` of it ``>= flatness``, with at least ``min_visits`` visits per visited bin on
    average), halve ``f``. When a halving would bring ``f`` below ``N / t`` (``N`` visited bins, ``t`` the step),
    the factor follows ``N / t`` for the rest of the run, which removes the saturation error of plain halving.
    Checked between chunks only, never inside the sampler loop.
    """

    f0: float = 1.0
    flatness: float = 0.8
    min_visits: int = 20

    def __post_init__(self) -> None:
        if self.f0 <= 0 or not 0 < self.flatness <= 1:
            raise ValueError(f"FlatnessOneOverT needs f0 > 0 and 0 < flatness <= 1, got {self.f0}, {self.flatness}.")

    def init(self, device=None) -> dict[str, torch.Tensor]:
        return {
            "f": torch.tensor(self.f0, dtype=torch.float64, device=device),
            "one_over_t": torch.tensor(False, device=device),
            "n_bins": torch.tensor(1.0, dtype=torch.float64, device=device),
            "snapshot": torch.zeros(0, dtype=torch.float64, device=device),
        }

    def factor(self, state, t: torch.Tensor) -> torch.Tensor:
        t = t.to(torch.float64)
        return torch.where(state["one_over_t"], state["n_bins"] / t.clamp(min=1.0), state["f"])

    def update(self, state, landscape: Landscape, t: int):
        if bool(state["one_over_t"]):
            return state
        state = dict(state)
        visits = landscape.visits.reshape(-1)
        snapshot = state["snapshot"] if state["snapshot"].numel() == visits.numel() else torch.zeros_like(visits)
        stage = visits - snapshot
        visited = visits > 0
        if visited.any() and float(stage[visited].min()) >= 0 and float(stage[visited].mean()) >= self.min_visits:
            if landscape.flatness(stage) >= self.flatness:
                state["f"] = state["f"] / 2
                snapshot = visits.clone()
                n_bins = float(visited.sum())
                if float(state["f"]) <= n_bins / max(t, 1):  # halving would undercut N/t: follow 1/t from now on
                    state["one_over_t"] = torch.tensor(True, device=visits.device)
                    state["n_bins"] = torch.tensor(n_bins, dtype=torch.float64, device=visits.device)
        state["snapshot"] = snapshot
        return state

    def describe(self) -> dict[str, Any]:
        return {"name": "flatness_one_over_t", **asdict(self)}


SCHEDULES = {"constant": Constant, "ramp_plateau_decay": RampPlateauDecay, "flatness_one_over_t": FlatnessOneOverT}


def parse(spec: Any) -> Constant | RampPlateauDecay | FlatnessOneOverT:
    """A schedule from an instance, a name, or a mapping ``{"name": ..., **constants}`` (Hydra)."""
    if isinstance(spec, (Constant, RampPlateauDecay, FlatnessOneOverT)):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if isinstance(spec, Mapping):
        spec = dict(spec)
        name = spec.pop("name", None)
        if name not in SCHEDULES:
            raise ValueError(f"Unknown schedule {name!r}; use one of {sorted(SCHEDULES)}.")
        try:
            return SCHEDULES[name](**spec)
        except TypeError as err:
            raise ValueError(f"Schedule {name!r}: {err}. Its constants are {list(SCHEDULES[name].__dataclass_fields__)}.") from err
    raise TypeError(f"schedule={spec!r} is not a schedule; pass a name such as 'flatness_one_over_t' or an instance.")


