"""Counting the sampler's non-finite moves (proposals whose CVs were NaN/inf and were sent back) and warning on many.

A few non-finite moves are normal near a box edge of an unbounded loss; many mean the data or the model produce NaN
over much of the box (a NaN input, an overflowing activation), and the landscape then covers only part of it.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch


def finite(values: torch.Tensor) -> torch.Tensor:
    """``torch.isfinite(values)`` in two operations instead of four (the sampler's hot path asks it every step):
    ``v - v`` is exactly 0 for a finite ``v`` and NaN for NaN and ``±inf``."""
    return (values - values) == 0


#: Fraction of all walker moves above which :func:`warn_if_many` warns (0.05 = 5 per cent).
WARN_FRACTION = 0.05


def counts(state: Any) -> tuple[int, int]:
    """``(non-finite moves, all moves)`` of a sampler state with per-walker ``nonfinite`` counts and a ``step``."""
    nonfinite = getattr(state, "nonfinite", None)
    if state is None or nonfinite is None:
        return 0, 0
    return int(nonfinite.sum()), int(state.step) * int(nonfinite.numel())


def warn_if_many(state: Any, fraction: float = WARN_FRACTION) -> tuple[int, int]:
    """Warn when more than ``fraction`` of all moves were non-finite; returns :func:`counts`."""
    bad, moves = counts(state)
    if moves and bad > fraction * moves:
        warnings.warn(
            f"{bad} of {moves} sampler moves ({100 * bad / moves:.1f}%) were non-finite (NaN/inf CVs) and sent back: "
            "the landscape covers only the finite part of the box. Check the data for NaN/inf and the model for "
            "overflow, or use a smaller box.",
            RuntimeWarning, stacklevel=2,
        )
    return bad, moves
