"""The one shape every sampler has, and the state helper every sampler state shares.

A sampler is an object built once from what stays fixed during a run (the evaluator, the box, the landscape it
deposits into, the integrator constants), as BlackJAX builds a ``SamplingAlgorithm`` or posteriors a transform::

    sampler = wlmd.WLMD(evaluate, landscape, bound, MDConfig())     # or wlmc.WLMC(...), restrained.RestrainedMD(...)
    state = sampler.init(theta0, seed=0)                             # walkers (W, P) -> state
    for t in range(1, n + 1):
        state = sampler.step(state, factor=schedule_factor(t), observe=t % 10 == 0)
    state = sampler.finish(state, n)                                 # host-side bookkeeping, once per call

What is explicit and what is not:

- the state (positions, velocities, CVs, counters, the RNG, the step count) is explicit: ``step`` returns a new state
  object and leaves the tensors of the one it was given alone; the two share the ``torch.Generator``, which every
  step advances (and restrained MD's trace lists, which an observation appends to), so a run continues from the
  newest state only;
- the landscape is an in-place accumulator: a Wang-Landau ``step`` deposits into ``sampler.landscape`` and records
  observables there, so a step updates the landscape in place. A sampler that deposits nothing (restrained MD) has
  ``landscape = None``.

:func:`lightning_entropy.core.loop.run` drives any sampler with a schedule; it never asks which sampler it drives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch

from lightning_entropy.core.landscape import Landscape

State = TypeVar("State")


class Sampler(Protocol[State]):
    """``init``/``step``/``finish`` over an explicit state (see the module docstring).

    Attributes:
        landscape: the landscape ``step`` deposits into and records observables in (updated in place), or ``None``
            for a sampler that deposits nothing. Schedules that read the histogram read this one.
        state_type: the class of the states (``state_type.from_state_dict(saved, device)`` restores one).
    """

    landscape: Landscape | None
    state_type: type

    def init(self, position: torch.Tensor, *, seed: int) -> State:
        """Walkers at ``position`` ``(W, P)``; ``seed`` seeds the state's generator (velocities, moves)."""

    def step(self, state: State, *, factor: torch.Tensor | None = None, observe: bool = False) -> State:
        """One move of every walker. ``factor``: nats deposited this step, shared by the walkers (a Wang-Landau
        sampler needs it; one that deposits nothing ignores it). ``observe``: record the observables now.
        Never synchronises with the host."""

    def finish(self, state: State, steps: int) -> State:
        """Bookkeeping after a call of ``steps`` steps (host side, never inside the hot loop)."""


@dataclass(frozen=True, eq=False)
class Depositing:
    """What the Wang-Landau samplers share besides the shape: what they are built from, and :meth:`finish`.

    Args:
        evaluate: the CV evaluator (CVs, forces, and ``observe`` for the observables).
        landscape: the in-place accumulator: every step deposits into it and, when observing, records there.
        bound: ``(P,)`` box half-widths.
    """

    evaluate: Any
    landscape: Landscape
    bound: torch.Tensor

    def finish(self, state, steps: int):
        """Write the step count into the landscape's metadata (``landscape.metadata["steps"]``)."""
        self.landscape.metadata["steps"] = state.step
        return state


class WalkerState:
    """Base of the samplers' dataclass states: per-walker tensors (leading walker dimension ``W``), a
    ``torch.Generator`` field ``generator`` and an int field ``step``.

    ``state_dict`` holds every tensor field (cloned) under its name, ``step`` and the generator's state as ``rng``;
    the same keys as the checkpoints the states have always written.
    """

    generator: torch.Generator
    step: int

    @classmethod
    def walker_fields(cls) -> tuple[str, ...]:
        """The names of the per-walker tensors (every field but ``generator`` and ``step``), in field order."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("generator", "step"))

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k).clone() for k in self.walker_fields()}
        out["step"] = self.step
        out["rng"] = self.generator.get_state()
        return out

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device | str):
        gen = torch.Generator(device=device)
        gen.set_state(state["rng"])
        return cls(generator=gen, step=int(state["step"]), **{k: state[k].to(device) for k in cls.walker_fields()})

    @classmethod
    def pool(cls, states: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """One state dict of all walkers of ``states`` (state dicts, e.g. one per process), concatenated in order;
        the step and the generator of the first."""
        out: dict[str, Any] = {k: torch.cat([s[k] for s in states]) for k in cls.walker_fields()}
        out["step"] = states[0]["step"]
        out["rng"] = states[0]["rng"]
        return out

    @classmethod
    def take(cls, state: dict[str, Any], index: torch.Tensor, rng: torch.Tensor | None = None) -> dict[str, Any]:
        """The state dict of walkers ``index`` of ``state`` (same step); with ``rng``, that generator state."""
        out: dict[str, Any] = {k: state[k][index] for k in cls.walker_fields()}
        out["step"] = state["step"]
        out["rng"] = state["rng"] if rng is None else rng
        return out


def removed(module: str, replacements: dict[str, str]):
    """A module ``__getattr__`` that names the replacement of each function the one sampler shape replaced."""

    def __getattr__(name: str):
        if name in replacements:
            raise AttributeError(f"{module}.{name} was replaced by the one sampler shape (see"
                                 f" lightning_entropy.core.samplers.base): use {replacements[name]}.")
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
