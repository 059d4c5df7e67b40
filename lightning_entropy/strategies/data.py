"""Full-batch data for the samplers, read once from the Trainer's dataloaders and cached on the device."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn

from lightning_entropy.core.evaluator import FullBatch


def detect_loss(module: nn.Module, loss: Any = "auto") -> Any:
    """The loss kind the vectorized path uses: a name, a callable, or ``None`` (use the module's training_step).

    ``"auto"`` looks for a ``loss_fn``, ``criterion`` or ``loss_function`` attribute: ``nn.CrossEntropyLoss()``,
    ``nn.BCEWithLogitsLoss()`` and ``nn.MSELoss()`` with default settings map to their names (so accuracies are
    available); any other module or callable ``loss(outputs, targets)`` is used as it is.
    """
    if loss != "auto":
        return loss
    for attr in ("loss_fn", "criterion", "loss_function"):
        obj = getattr(module, attr, None)
        if obj is None:
            continue
        plain = getattr(obj, "reduction", "mean") == "mean" and getattr(obj, "weight", None) is None
        if isinstance(obj, nn.CrossEntropyLoss) and plain and not obj.label_smoothing:
            return "cross_entropy"
        if isinstance(obj, nn.BCEWithLogitsLoss) and plain and obj.pos_weight is None:
            return "binary_cross_entropy"
        if isinstance(obj, nn.MSELoss) and plain:
            return "mse"
        if callable(obj):
            return obj
    return None


def _concat(batches: list[Any]) -> Any:
    """Concatenate a list of batches along the first dimension (tensors, tuples/lists and dicts of tensors)."""
    first = batches[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(batches) if first.dim() else torch.stack(batches)
    if isinstance(first, (tuple, list)):
        return type(first)(_concat([b[i] for b in batches]) for i in range(len(first)))
    if isinstance(first, Mapping):
        return {k: _concat([b[k] for b in batches]) for k in first}
    raise TypeError(f"cannot concatenate batches of type {type(first).__name__}")


def _read(loader: Any, device: torch.device, what: str) -> Any:
    if loader is None:
        return None
    loaders = loader if isinstance(loader, (list, tuple)) else [loader]
    batches = [b for dl in loaders for b in dl]
    if not batches:
        raise ValueError(f"The {what} dataloader yielded no batches; the sampler needs the whole {what} set.")
    try:
        full = _concat(batches)
    except (TypeError, RuntimeError) as err:
        raise ValueError(
            f"Could not join the {what} batches into one full batch ({err}). Yield tensors, (inputs, targets) pairs"
            " or dicts of tensors with the same trailing shapes."
        ) from err
    return _to(full, device)


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(b, device) for b in batch)
    if isinstance(batch, Mapping):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def _loader(trainer: Any, kind: str) -> Any:
    """The train/val/test dataloader(s) the user gave the Trainer, the datamodule or the module."""
    source = getattr(trainer._data_connector, f"_{kind}_dataloader_source", None)
    if source is not None and source.is_defined():
        return source.dataloader()
    for owner in (trainer.datamodule, trainer.lightning_module):
        if owner is not None and is_overridden(f"{kind}_dataloader", owner):
            return getattr(owner, f"{kind}_dataloader")()
    return None


def cache_full_batch(trainer: Any, heldout: str, standard_loss: bool, device: torch.device) -> FullBatch:
    """Read the train set and the held-out set (``heldout``: ``"val"`` or ``"test"``) once, as full batches."""
    if heldout not in ("val", "test"):
        raise ValueError(f"heldout={heldout!r}: use 'val' (val_dataloader) or 'test' (test_dataloader).")
    train = _read(_loader(trainer, "train"), device, "train")
    if train is None:
        raise ValueError("No train_dataloader was found; the sampler needs the train set to compute ln L_train.")
    test = _read(_loader(trainer, heldout), device, heldout)
    if not standard_loss:
        return FullBatch((train, None), (test, None) if test is not None else None)

    def pair(full: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(full, (tuple, list)) and len(full) >= 2:
            return full[0], full[1]
        raise ValueError(
            f"The {what} batches are {type(full).__name__}, not (inputs, targets) pairs; the vectorized sampler"
            " needs pairs. Yield (inputs, targets), or drop the module's `loss_fn` so the sampler calls"
            " training_step instead."
        )

    return FullBatch(pair(train, "train"), pair(test, heldout) if test is not None else None)
