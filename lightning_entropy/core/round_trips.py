"""Walker round trips across the train-loss range: the convergence figure a flat histogram alone cannot give.

A walker makes a round trip when it goes from the low end of the x range (ln L_train) to the high end and back.
Walkers that never cross the range mean the landscape's two halves were filled by different walkers and are tied
together only through the bias, which a flat-looking histogram does not reveal. The ends are the lowest and
highest ``end_fraction`` of the range (the soft-wall window where there is one, else the grid).

Pure functions over an explicit state, vectorized over walkers, no host synchronisation per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class RoundTripState:
    """Per walker: the last end touched (-1 none yet, 0 low, 1 high) and the number of end-to-end crossings."""

    lo: float  # upper edge of the low end, CV units
    hi: float  # lower edge of the high end
    last_end: torch.Tensor  # (W,) int64
    crossings: torch.Tensor  # (W,) int64; a round trip is two crossings

    @property
    def round_trips(self) -> torch.Tensor:
        """``(W,)`` completed round trips per walker."""
        return self.crossings // 2

    def state_dict(self) -> dict[str, Any]:
        return {"lo": self.lo, "hi": self.hi, "last_end": self.last_end.clone(), "crossings": self.crossings.clone()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device | str) -> RoundTripState:
        return cls(float(state["lo"]), float(state["hi"]), state["last_end"].to(device), state["crossings"].to(device))


def init(walkers: int, x_range: tuple[float, float], *, end_fraction: float = 0.1,
         device: torch.device | str = "cpu") -> RoundTripState:
    """No end touched yet; ``x_range`` is the ``(lo, hi)`` of the x axis the walkers should cross."""
    lo, hi = (float(v) for v in x_range)
    if not hi > lo or not 0 < end_fraction < 0.5:
        raise ValueError(f"x_range={x_range!r} must have lo < hi and end_fraction={end_fraction!r} lie in (0, 0.5).")
    span = end_fraction * (hi - lo)
    zeros = torch.zeros(walkers, dtype=torch.int64, device=device)
    return RoundTripState(lo + span, hi - span, zeros - 1, zeros.clone())


def update(state: RoundTripState, x: torch.Tensor, lo: torch.Tensor | None = None,
           hi: torch.Tensor | None = None) -> RoundTripState:
    """Count a crossing for each walker that reaches the end opposite to the last one it touched (in place).

    ``lo``/``hi`` ``(W,)`` override the ends per walker (e.g. the ends of each walker's current window).
    """
    lo = state.lo if lo is None else lo
    hi = state.hi if hi is None else hi
    end = torch.where(x <= lo, 0, torch.where(x >= hi, 1, -1))
    reached = end >= 0
    crossed = reached & (state.last_end >= 0) & (end != state.last_end)
    state.crossings += crossed
    state.last_end.copy_(torch.where(reached, end, state.last_end))
    return state
