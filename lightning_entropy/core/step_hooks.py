"""Calling a module's own ``training_step`` / ``validation_step`` for walkers: the loss it returns and the values it
logs, with ``self.log`` / ``self.log_dict`` captured instead of reaching Lightning.

While walkers are evaluated the hooks run on the full batch under ``torch.func.functional_call`` (and ``vmap``), from
inside a Lightning hook the user never wrote. Lightning's ``self.log`` cannot take values there (batched tensors, a
result collection of another hook), so :func:`capture_logs` replaces ``log`` and ``log_dict`` on the module instance
for the duration of the call: the values are kept (as tensors) and returned with the loss, so a metric the user logs can
be sampled or recorded as an observable; nothing reaches the Trainer's loggers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

RETURNED = "returned"  # key of the loss a hook returns in a step output
LOGGED = "logged:"  # prefix of the keys of logged values in a step output


@contextmanager
def capture_logs(module: nn.Module) -> Iterator[dict[str, Any]]:
    """Within the block ``module.log(name, value, ...)`` and ``module.log_dict({...}, ...)`` store ``value`` in the
    yielded dict (keyword arguments such as ``on_step`` or ``prog_bar`` are ignored) instead of logging it."""
    logged: dict[str, Any] = {}

    def log(name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        logged[name] = value

    def log_dict(dictionary: Mapping[str, Any], *args: Any, **kwargs: Any) -> None:
        logged.update(dictionary)

    had = {attr: attr in module.__dict__ for attr in ("log", "log_dict")}
    saved = {attr: module.__dict__.get(attr) for attr in had}
    object.__setattr__(module, "log", log)
    object.__setattr__(module, "log_dict", log_dict)
    try:
        yield logged
    finally:
        for attr, present in had.items():
            if present:
                object.__setattr__(module, attr, saved[attr])
            else:
                object.__delattr__(module, attr)


def returned_loss(output: Any) -> torch.Tensor | None:
    """The loss tensor in a hook's output (a tensor, a dict with key ``loss`` or a one-tensor dict), else ``None``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        if isinstance(output.get("loss"), torch.Tensor):
            return output["loss"]
        values = [v for v in output.values() if isinstance(v, torch.Tensor)]
        if len(values) == 1:
            return values[0]
    return None


def extract_loss(output: Any, hook: str) -> torch.Tensor:
    """The loss tensor of a ``training_step``/``validation_step`` output (a tensor or a one-value/``loss`` dict)."""
    loss = returned_loss(output)
    if loss is None:
        raise ValueError(
            f"{hook} returned {type(output).__name__} without a loss: the sampler needs a scalar loss tensor (or a dict"
            f" with key 'loss'). Return the loss from {hook}, or give the module a `loss_fn` so that the sampler can use"
            " forward() directly."
        )
    return loss


def _as_tensor(value: Any, like: torch.Tensor | None) -> torch.Tensor | None:
    """A logged value as a tensor (numbers become tensors; anything else, e.g. a torchmetrics Metric, is dropped)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        dtype = like.dtype if like is not None and like.is_floating_point() else torch.get_default_dtype()
        return torch.tensor(float(value), dtype=dtype, device=like.device if like is not None else None)
    return None


def step_output(output: Any, logged: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """One hook call as a flat dict of tensors: the returned loss under :data:`RETURNED` (absent if none) and every
    logged value under ``LOGGED + name``."""
    loss = returned_loss(output)
    out: dict[str, torch.Tensor] = {} if loss is None else {RETURNED: loss}
    for name, value in logged.items():
        tensor = _as_tensor(value, loss)
        if tensor is not None:
            out[LOGGED + name] = tensor
    return out


class StepCall(nn.Module):
    """Calls a LightningModule hook under ``functional_call`` so the walker's parameters are substituted; returns
    :func:`step_output` of the call, with the hook's logs captured."""

    def __init__(self, module: nn.Module, hook: str) -> None:
        super().__init__()
        self.inner = module
        self.hook = hook

    def forward(self, batch: Any, index: int) -> dict[str, torch.Tensor]:
        with capture_logs(self.inner) as logged:
            output = getattr(self.inner, self.hook)(batch, index)
        return step_output(output, logged)
