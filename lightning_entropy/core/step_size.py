"""The windowed run's time step per window, adapted to its walkers' acceptance during the Wang-Landau phase."""

from __future__ import annotations

import torch

ACCEPTANCE_TARGET = (0.6, 0.9)  # shrink below, grow above
RANGE = (1 / 20, 4.0)  # the adapted dt stays within these multiples of the configured dt


def adapt(dt: torch.Tensor, acceptance: torch.Tensor, inside: torch.Tensor, owner: torch.Tensor,
          base: float) -> torch.Tensor:
    """``dt`` ``(E,)`` per estimate after one chunk: times 0.8 where fewer than ``ACCEPTANCE_TARGET[0]`` of its
    walkers' moves were accepted, times 1.1 above ``ACCEPTANCE_TARGET[1]``, within ``RANGE`` of ``base``. Only
    walkers ``inside`` their window count, or, while none is, those on their way in (so that they can move at all
    where the loss is low). ``acceptance`` ``(W,)`` is each walker's share of accepted moves; ``owner`` ``(W,)`` its
    estimate."""
    zeros = torch.zeros(dt.shape[0], dtype=torch.float64, device=dt.device)

    def rate_of(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = zeros.index_add(0, owner, acceptance.double() * weight)
        count = zeros.index_add(0, owner, weight)
        return total / count.clamp(min=1.0), count

    inside_rate, inside_count = rate_of(inside.to(torch.float64))
    all_rate, _ = rate_of(torch.ones_like(acceptance, dtype=torch.float64))
    rate = torch.where(inside_count > 0, inside_rate, all_rate)  # no walker in yet: those on their way in
    lo, hi = ACCEPTANCE_TARGET
    grown = (dt * 1.1).clamp(max=RANGE[1] * base)
    shrunk = (dt * 0.8).clamp(min=RANGE[0] * base)
    return torch.where(rate < lo, shrunk, torch.where(rate > hi, grown, dt))
