"""The box: every parameter is a particle confined to ``[-b_i, +b_i]``.

The box is part of the definition of entropy (an unbounded parameter space has infinite volume), so the
rule that sets the bounds is explicit, configurable and recorded with every landscape (``Box.describe``).

Rules (ALGORITHM.md section 2):

- ``Box(1.0)`` or the float ``1.0``: one bound for every parameter.
- ``Box.fan_out(c=2.0)`` or ``"fan_out"``: per tensor ``b = c / sqrt(fan_out)``, where ``fan_out`` is
  ``shape[0] * prod(shape[2:])`` for a weight with two or more dimensions and the length for a vector
  (bias, LayerNorm). For a Linear layer this equals ``c / sqrt(out_features)`` for weight and bias.
- ``Box.first_hidden(c=2.0)`` or ``"first_hidden"``: one global bound ``c / sqrt(w)``, ``w`` the output width
  of the first parameter tensor (the first hidden layer's width).

Strings may carry the constant: ``"fan_out:3"``; mappings (from Hydra) look like ``{"rule": "fan_out", "c": 3}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lightning_entropy.core.walkers import ParameterLayout

RULES = ("constant", "fan_out", "first_hidden")


@dataclass(frozen=True)
class Box:
    """A box rule. ``rule`` is one of ``RULES``; ``c`` is the bound (constant) or the constant of the rule."""

    rule: str = "fan_out"
    c: float = 2.0

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"Unknown box rule {self.rule!r}; use one of {RULES}, or a positive float for one bound.")
        if not (isinstance(self.c, (int, float)) and math.isfinite(self.c) and self.c > 0):
            raise ValueError(
                f"The box constant must be a positive finite number, got {self.c!r}: pass e.g. box=1.0 (every"
                " parameter in [-1, 1]) or box='fan_out' (b = 2/sqrt(fan_out))."
            )

    @classmethod
    def constant(cls, bound: float) -> Box:
        return cls("constant", float(bound))

    @classmethod
    def fan_out(cls, c: float = 2.0) -> Box:
        return cls("fan_out", float(c))

    @classmethod
    def first_hidden(cls, c: float = 2.0) -> Box:
        return cls("first_hidden", float(c))

    @classmethod
    def parse(cls, spec: Any) -> Box:
        """Build a box from a float, a rule name (``"fan_out"``, ``"fan_out:3"``), a mapping or a ``Box``."""
        if isinstance(spec, Box):
            return spec
        if isinstance(spec, bool):
            raise ValueError(f"box={spec!r} is not a box: pass a positive float or a rule name such as 'fan_out'.")
        if isinstance(spec, (int, float)):
            if not (math.isfinite(spec) and spec > 0):
                raise ValueError(
                    f"box={spec!r} is not a valid bound: the box must be positive (every parameter lies in [-b, b]);"
                    " pass e.g. box=1.0 or box='fan_out'."
                )
            return cls.constant(float(spec))
        if isinstance(spec, str):
            name, _, const = spec.partition(":")
            try:
                return cls(name.strip(), float(const) if const else 2.0)
            except ValueError as err:
                if const and not _is_float(const):
                    raise ValueError(f"box={spec!r}: the constant after ':' must be a number, e.g. 'fan_out:3'.") from err
                raise
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"rule", "c"}
            if unknown:
                raise ValueError(f"box={dict(spec)!r} has unknown keys {sorted(unknown)}; use 'rule' and 'c'.")
            return cls(str(spec.get("rule", "fan_out")), float(spec.get("c", 2.0)))
        raise TypeError(f"box={spec!r} ({type(spec).__name__}) is not a box: pass a positive float or a rule name.")

    def bounds(self, layout: ParameterLayout, device: torch.device | None = None, dtype=torch.float32) -> torch.Tensor:
        """The bound ``b_i`` of every parameter, flattened in the layout's order, shape ``(P,)``."""
        per_tensor = []
        if self.rule == "constant":
            per_tensor = [self.c] * len(layout.shapes)
        elif self.rule == "fan_out":
            for shape in layout.shapes:
                fan = shape[0] * math.prod(shape[2:]) if len(shape) >= 2 else (shape[0] if shape else 1)
                per_tensor.append(self.c / math.sqrt(max(fan, 1)))
        else:  # first_hidden
            first = layout.shapes[0]
            width = first[0] if first else 1
            per_tensor = [self.c / math.sqrt(width)] * len(layout.shapes)
        out = torch.empty(layout.numel, device=device, dtype=dtype)
        for value, sl in zip(per_tensor, layout.slices):
            out[sl] = value
        return out

    def log_volume(self, layout: ParameterLayout) -> float:
        """ln of the box volume (sum of ln(2 b_i)): the additive constant that makes S absolute."""
        return float(torch.log(2 * self.bounds(layout, dtype=torch.float64)).sum())

    def describe(self) -> dict[str, Any]:
        return {"rule": self.rule, "c": self.c}

    def __str__(self) -> str:
        if self.rule == "constant":
            return f"[-{self.c:g}, {self.c:g}] for every parameter"
        if self.rule == "fan_out":
            return f"b = {self.c:g}/sqrt(fan_out) per tensor"
        return f"b = {self.c:g}/sqrt(first hidden width) for every parameter"


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def reflect(theta: torch.Tensor, velocity: torch.Tensor, bound: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror positions that left ``[-b, b]`` back inside and flip their velocities.

    Works on stacked walkers ``(W, P)`` with ``bound`` of shape ``(P,)``. A particle that overshoots by more than
    the box width (a huge velocity) is clamped to the wall. No host synchronisation.
    """
    out = theta.abs() > bound
    theta = torch.where(out, torch.copysign(2 * bound, theta) - theta, theta)  # 2b - θ above, -2b - θ below
    theta = torch.clamp(theta, -bound, bound)
    velocity = torch.where(out, -velocity, velocity)
    return theta, velocity


def uniform(walkers: int, bound: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``walkers`` points drawn uniformly from the box, shape ``(W, P)``."""
    u = torch.rand((walkers, bound.numel()), generator=generator, device=bound.device, dtype=bound.dtype)
    return (2 * u - 1) * bound
