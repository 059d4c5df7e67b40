"""Full-batch data for the samplers, read once from the Trainer's dataloaders and cached on the device.

The loaders are the ones the fit uses, from wherever Lightning accepts them: ``trainer.fit(model, train_dataloaders,
val_dataloaders)``, a datamodule, or the module's ``*_dataloader`` methods. They are read through the Trainer's public
properties (``trainer.train_dataloader``, ``trainer.val_dataloaders``, set by the fit loop before ``on_train_start``),
then through the datamodule's or module's hooks; every batch of every loader is concatenated into one full batch.
The fit loop itself iterates :class:`SamplerSteps` in place of the train loader (``process_dataloader`` of the
strategies), which yields placeholders without touching the loader.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from lightning.pytorch.utilities.model_helpers import is_overridden

_PUBLIC = {"train": "train_dataloader", "val": "val_dataloaders", "test": "test_dataloaders"}


class SamplerSteps:
    """What the fit loop iterates in place of the train loader while a sampler runs: the Lightning step index, as many
    per epoch as the loader has batches (so ``max_epochs`` and ``estimated_stepping_batches`` keep their meaning;
    without a length: forever). The sampler reads the whole loader once (:func:`read_split`); fetching and collating
    a minibatch per Lightning step only to drop it would be wasted work. ``loader`` is the loader it stands for."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)  # TypeError for an unsized loader, as Lightning expects

    def __iter__(self) -> Iterator[int]:
        try:
            return iter(range(len(self.loader)))
        except TypeError:
            return itertools.count()


def _unwrap(loaders: Any) -> Any:
    """The loaders behind :class:`SamplerSteps` placeholders (in lists, tuples and dicts as Lightning keeps them)."""
    if isinstance(loaders, SamplerSteps):
        return loaders.loader
    if isinstance(loaders, (list, tuple)):
        return type(loaders)(_unwrap(dl) for dl in loaders)
    if isinstance(loaders, Mapping):
        return {k: _unwrap(dl) for k, dl in loaders.items()}
    return loaders


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
    if isinstance(loader, Mapping):
        loader = list(loader.values())
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


def samples(batch: Any) -> int:
    """The number of samples in a full batch (the length of its first tensor)."""
    if isinstance(batch, torch.Tensor):
        return len(batch) if batch.dim() else 1
    items = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else ()
    for item in items:
        n = samples(item)
        if n:
            return n
    return 0


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(b, device) for b in batch)
    if isinstance(batch, Mapping):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def dataloaders(trainer: Any, kind: str) -> tuple[Any, str]:
    """The ``kind`` (``"train"``, ``"val"`` or ``"test"``) dataloader(s) of the fit and where they came from, or
    ``(None, "")``.

    First the Trainer's public property (``trainer.train_dataloader`` / ``val_dataloaders``: Lightning loads these
    before ``on_train_start`` from the loaders given to ``fit``, the datamodule or the module), then the datamodule's
    and the module's ``<kind>_dataloader`` hook. Loaders given to ``fit`` that Lightning does not load itself (a
    ``val_dataloaders`` with ``limit_val_batches=0`` or no ``validation_step``) are only held by the loop's data
    source, which has no public accessor: it is read last, and skipped if a Lightning version lacks it.
    """
    loaders = _unwrap(getattr(trainer, _PUBLIC[kind], None))
    if loaders is not None:
        return loaders, f"trainer.{_PUBLIC[kind]}"
    for owner, what in ((trainer.datamodule, "datamodule"), (trainer.lightning_module, "module")):
        if owner is not None and is_overridden(f"{kind}_dataloader", owner):
            return getattr(owner, f"{kind}_dataloader")(), f"the {what}'s {kind}_dataloader"
    loop = {"train": lambda: trainer.fit_loop, "val": lambda: trainer.fit_loop.epoch_loop.val_loop,
            "test": lambda: trainer.test_loop}[kind]
    from lightning.pytorch import LightningDataModule, LightningModule  # not at import: the startup hook imports
    # this package while lightning.pytorch is still initialising

    source = getattr(loop(), "_data_source", None)  # private: the loaders given to fit
    instance = getattr(source, "instance", None)
    if instance is not None and not isinstance(instance, (LightningModule, LightningDataModule)):
        return instance, f"the {kind} loaders given to trainer.fit"
    return None, ""


def read_split(trainer: Any, kind: str, device: torch.device) -> tuple[Any, str]:
    """The whole ``kind`` set as one batch on ``device`` (``None`` if there is none) and where it came from."""
    loaders, origin = dataloaders(trainer, kind)
    return _read(loaders, device, kind), origin


def pair(full: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(inputs, targets)`` of a full batch; an error that says what to yield otherwise."""
    if isinstance(full, (tuple, list)) and len(full) >= 2:
        return full[0], full[1]
    raise ValueError(
        f"The {what} batches are {type(full).__name__}, not (inputs, targets) pairs; the vectorized sampler"
        " needs pairs. Yield (inputs, targets), or drop the module's `loss_fn` so the sampler calls"
        " training_step instead."
    )
