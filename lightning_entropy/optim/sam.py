"""Sharpness-aware minimization (SAM; Foret, Kleiner, Mobahi, Neyshabur, ICLR 2021) around any ``torch.optim``
optimizer.

Each step takes two gradients: at the weights ``w`` and at ``w + e``, where ``e = rho g / ||g||`` climbs the loss
along its gradient ``g`` (``adaptive=True``: ASAM, Kwon et al. 2021, ``e = rho w² g / ||w g||``, elementwise). The
base optimizer then steps from ``w`` with the second gradient. The weights are updated in place, as by every
``torch.optim`` optimizer; ``e`` is transient.

``step`` needs a closure that zeroes the gradients, computes the loss and calls ``backward`` (as for ``LBFGS``):
Lightning's automatic optimization passes one, so ``configure_optimizers`` can return ``SAM(self.parameters(),
torch.optim.Adam, lr=1e-3)`` unchanged; in a plain loop::

    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)

    def closure():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)

``state_dict`` is the base optimizer's (its moments, and the param groups with ``rho`` and ``adaptive``), so
checkpoints round-trip like any ``torch.optim`` optimizer's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


class SAM(torch.optim.Optimizer):
    """SAM around ``base`` (an optimizer class, e.g. ``torch.optim.Adam``) with its keyword arguments ``kwargs``.

    Args:
        params: the parameters or parameter groups, as for any optimizer.
        base: the optimizer class that takes each step (it shares the param groups).
        rho: the radius of the climb, in the units of the weights (``adaptive``: relative to them); 0.05 is the
            paper's default for SGD on CIFAR.
        adaptive: ASAM's elementwise scale-invariant climb.
        **kwargs: the base optimizer's arguments (``lr``, ``betas``, ...).
    """

    def __init__(self, params: Iterable[Any], base: type[torch.optim.Optimizer] = torch.optim.SGD, *,
                 rho: float = 0.05, adaptive: bool = False, **kwargs: Any) -> None:
        if not (isinstance(rho, (int, float)) and rho >= 0):
            raise ValueError(f"rho={rho!r}: the radius of SAM's climb must be a number >= 0 (0.05 is common).")
        if not (isinstance(base, type) and issubclass(base, torch.optim.Optimizer)):
            raise TypeError(f"base={base!r}: give an optimizer class such as torch.optim.SGD or torch.optim.Adam.")
        super().__init__(params, dict(rho=float(rho), adaptive=bool(adaptive), **kwargs))
        self.base = base(self.param_groups, **kwargs)
        self.param_groups = self.base.param_groups  # one set of groups: lr schedulers reach the base optimizer

    @torch.no_grad()
    def _climb(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Move every parameter by ``e`` in place; returns the moves to undo."""
        grads = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    scale = p.abs() if group["adaptive"] else None
                    grads.append((group, p, p.grad if scale is None else scale * p.grad))
        if not grads:
            return []
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for _, _, g in grads]))
        moves = []
        for group, p, g in grads:
            e = g * (group["rho"] / (norm + 1e-12))
            if group["adaptive"]:
                e = e * p.abs()
            p.add_(e)
            moves.append((p, e))
        return moves

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One SAM step; ``closure`` (required) zeroes the gradients, computes the loss, calls ``backward`` and
        returns the loss. Returns the loss at the weights before the step."""
        if closure is None:
            raise RuntimeError("SAM.step needs a closure that zeroes the gradients, computes the loss, calls backward"
                               " and returns the loss: opt.step(closure). Lightning's automatic optimization passes"
                               " one; with manual optimization, pass your own.")
        with torch.enable_grad():
            loss = closure()
        moves = self._climb()
        with torch.enable_grad():
            closure()
        with torch.no_grad():
            for p, e in moves:
                p.sub_(e)
        self.base.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base.load_state_dict(state_dict)
        self.param_groups = self.base.param_groups


__all__ = ["SAM"]
