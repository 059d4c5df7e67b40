"""The forces of a 1-D walk with the walker's ``d x / d theta`` kept, so that a force can be rebuilt for another
potential (the window a walker holds after an exchange) without another evaluation."""

from __future__ import annotations

import torch


def _unit(cv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(cv.shape[0], dtype=torch.float64, device=cv.device), torch.ones_like(cv)


class JacobianForces:
    """The evaluator of a 1-D walk, seen by the integrator: ``value_and_grad`` computes ``d x / d theta`` in its one
    backward pass, keeps it as :attr:`last` and returns ``slope * (d x / d theta)``, the same force. Every other
    attribute is the evaluator's. :attr:`value` keeps the potential's value at the evaluated walkers, so that the
    caller can reuse it while the potential stays the same."""

    def __init__(self, evaluate) -> None:
        self.evaluate = evaluate
        self.last: torch.Tensor | None = None
        self.value: torch.Tensor | None = None

    def value_and_grad(self, theta: torch.Tensor, potential) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cv, _, jacobian = self.evaluate.value_and_grad(theta, _unit)
        value, slope = potential(cv)
        self.last, self.value = jacobian, value
        return cv, value, slope[:, :1].to(jacobian.dtype) * jacobian

    def __getattr__(self, name: str):
        return getattr(self.evaluate, name)
