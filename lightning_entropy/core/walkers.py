"""Walkers: many copies of one network's parameters, stacked as rows of a ``(W, P)`` tensor.

A walker is one point θ of parameter space. All samplers keep their walkers flat (one row each) so that box
reflection, Langevin updates and single-parameter Monte Carlo moves are plain tensor operations; the layout maps
a row back to the module's named tensors for evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ParameterLayout:
    """Names, shapes and offsets of a module's trainable parameters in the flat walker vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, module: nn.Module) -> ParameterLayout:
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError(
                f"{type(module).__name__} has no trainable parameters: there is nothing to sample. Give the module"
                " parameters with requires_grad=True."
            )
        return cls(tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    @property
    def slices(self) -> tuple[slice, ...]:
        out, start = [], 0
        for size in self.sizes:
            out.append(slice(start, start + size))
            start += size
        return tuple(out)

    def flatten(self, module: nn.Module) -> torch.Tensor:
        """The module's current parameters as one flat vector ``(P,)``."""
        params = dict(module.named_parameters())
        return torch.cat([params[n].detach().reshape(-1) for n in self.names])

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of a flat ``(..., P)`` tensor as the named parameter tensors ``(..., *shape)``."""
        lead = theta.shape[:-1]
        pieces = theta.split(self.sizes, dim=-1)  # one split: its backward is a single concatenation
        return {n: piece.reshape(*lead, *shape) for n, shape, piece in zip(self.names, self.shapes, pieces)}

    @torch.no_grad()
    def load_into(self, module: nn.Module, theta: torch.Tensor) -> None:
        """Copy one walker's flat parameters ``(P,)`` into the module in place."""
        params = dict(module.named_parameters())
        for name, value in self.unflatten(theta).items():
            params[name].copy_(value)
