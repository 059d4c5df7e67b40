"""Checks of the cached full-batch data before any sampling: finite inputs, label dtype and range, per split.

A single ``inf`` in the train inputs makes every move non-finite and the landscape one bin; labels out of range make
torch raise an index error that names no split; float labels for a classification loss are truncated silently.
:func:`validate_full_batch` refuses all three with a ``ValueError`` that names the split, the bad value and the fix.
Pure PyTorch (no Lightning import); the data are the ``(inputs, targets)`` pairs of
:class:`lightning_entropy.core.evaluator.FullBatch`.
"""

from __future__ import annotations

from typing import Any

import torch

#: Losses whose targets are class indices (integers in ``[0, classes)``).
INDEX_LOSSES = ("cross_entropy",)


def _tensors(obj: Any):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def check_finite_inputs(inputs: Any, split: str) -> None:
    """Refuse NaN/inf anywhere in a split's floating-point input tensors."""
    for t in _tensors(inputs):
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(
                f"The {split} inputs hold {bad} non-finite value(s) (NaN or inf) of {t.numel()}: every move would be "
                f"non-finite. Clean or impute the {split} data (e.g. torch.nan_to_num, drop those rows) before fit."
            )


def check_targets(targets: torch.Tensor | None, split: str, loss: Any, classes: int | None) -> None:
    """Refuse float labels for a class-index loss, labels outside ``[0, classes)``, and non-finite regression targets.

    ``classes``: the number of output logits of the module (``None`` when unknown: only ``>= 0`` is checked).
    """
    if not isinstance(targets, torch.Tensor):
        return
    if loss in INDEX_LOSSES:
        if targets.is_floating_point() and targets.dim() == 1:
            raise ValueError(
                f"The {split} labels are {targets.dtype} but loss {loss!r} needs integer class indices (float labels "
                f"would be truncated). Cast them with labels.long() in the data module (or use class probabilities "
                "of shape (N, classes))."
            )
        if not targets.is_floating_point() and targets.numel():
            lo, hi = int(targets.min()), int(targets.max())
            if lo < 0 or (classes is not None and hi >= classes):
                limit = f"[0, {classes - 1}]" if classes is not None else "[0, classes)"
                raise ValueError(
                    f"The {split} labels range over [{lo}, {hi}] but the module has {classes} output classes, so "
                    f"labels must lie in {limit}. Relabel the {split} data or widen the model's last layer."
                )
    elif targets.is_floating_point() and targets.numel() and not bool(torch.isfinite(targets).all()):
        raise ValueError(f"The {split} targets hold NaN or inf; clean the {split} targets before fit.")
    if loss == "binary_cross_entropy" and targets.numel():
        lo, hi = float(targets.min()), float(targets.max())
        if lo < 0 or hi > 1:
            raise ValueError(
                f"The {split} targets range over [{lo}, {hi}] but loss 'binary_cross_entropy' needs targets in [0, 1]."
                f" Map the {split} labels to 0/1."
            )


def validate_full_batch(data: Any, loss: Any, module: torch.nn.Module | None = None) -> None:
    """Validate every split of ``data`` (a ``FullBatch``) for the detected ``loss`` (see module doc).

    ``module``: when given and the loss takes class indices, one train row is passed through it (no gradients) to
    learn the number of classes for the label-range check.
    """
    splits = [("train", data.train)] + ([("held-out", data.test)] if data.test is not None else [])
    classes = None
    if loss in INDEX_LOSSES and module is not None and isinstance(data.train[0], torch.Tensor) and len(data.train[0]):
        try:
            with torch.no_grad():
                out = module(data.train[0][:1])
            classes = int(out.shape[-1]) if isinstance(out, torch.Tensor) and out.dim() >= 2 else None
        except Exception:  # noqa: BLE001 - the range check is then only lo >= 0; the sampler reports real errors
            classes = None
    for split, (inputs, targets) in splits:
        check_finite_inputs(inputs, split)
        check_targets(targets, split, loss, classes)


def check_variable_callables(specs: Any, module: torch.nn.Module, data: Any) -> None:
    """Call each user callable CV in ``specs`` once on the module's held-out outputs; it must return a scalar.

    A callable returning a vector (or failing) used to fail deep inside torch's vmap without naming it; this names the
    callable, the shape it returned and the fix. Only the ``(inputs, targets)`` path is checked (on the step path the
    callables never see outputs).
    """
    callables = [s for s in (specs or ()) if callable(s) and not isinstance(s, str)]
    if not callables or data.test is None:
        return
    inputs, targets = data.test
    if not isinstance(inputs, torch.Tensor) or targets is None:
        return
    with torch.no_grad():
        out = module(inputs)
    for fn in callables:
        name = getattr(fn, "__qualname__", getattr(fn, "__name__", repr(fn)))
        try:
            with torch.no_grad():
                value = fn(out, targets)
        except Exception as err:  # noqa: BLE001 - re-raised with the callable's name
            raise ValueError(
                f"The collective variable {name} failed on the module's held-out outputs {tuple(out.shape)} and targets"
                f" {tuple(targets.shape)}: {type(err).__name__}: {err}. It must be fn(outputs, targets) -> scalar tensor."
            ) from err
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"The collective variable {name} returned {shape} on the module's held-out outputs; it must return one"
                " scalar tensor per walker (reduce it, e.g. with .mean())."
            )
