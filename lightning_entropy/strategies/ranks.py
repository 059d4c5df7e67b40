"""What the ranks of :class:`~lightning_entropy.WangLandauDDPStrategy` share besides the landscape, apart from the
strategy: each rank's seed, the schedule's per-rank share of the WL factor (:class:`RankShare`), how a checkpoint's
pooled walkers are dealt out to another layout (:func:`deal`), and the launcher that hands rank 0's sampler state
back to the main process after a spawned fit (:class:`SamplerLauncher`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

import lightning
import torch
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

from lightning_entropy.core.landscape import Landscape

#: Rank r seeds its walkers with ``seed + r * RANK_SEED_STRIDE`` (a CPU generator keeps only 32 bits of a seed, so a
#: stride of 2**32 would give every rank the same walkers).
RANK_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class RankShare:
    """A schedule seen by one of ``ranks`` processes: ``f_t / ranks`` per step, no histogram decisions in the loop.

    The strategy applies the real schedule's ``update`` itself, after each synchronisation, on the shared landscape.
    """

    schedule: Any
    ranks: int

    def init(self, device=None) -> dict[str, torch.Tensor]:
        return self.schedule.init(device)

    def factor(self, state: dict[str, torch.Tensor], t: torch.Tensor) -> torch.Tensor:
        return self.schedule.factor(state, t) / self.ranks

    def update(self, state, landscape: Landscape, t: int):
        return state

    def describe(self) -> dict[str, Any]:
        return self.schedule.describe()


def deal(total: int, rank: int, walkers: int) -> torch.Tensor:
    """Indices into a pool of ``total`` walkers that rank ``rank`` takes when every rank runs ``walkers`` walkers:
    ``rank * walkers ...`` onwards, wrapping around the pool (walkers repeat when the pool is smaller)."""
    if total < 1:
        raise ValueError(f"The checkpoint holds {total} walkers; there is nothing to resume.")
    return (rank * walkers + torch.arange(walkers)) % total


def on_cpu(obj: Any) -> Any:
    """Tensors below ``obj`` (dicts, lists, tuples) detached and on the CPU, for pickling across processes."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_cpu(v) for v in obj)
    return obj


class SamplerLauncher(_MultiProcessingLauncher):
    """Lightning's multiprocessing launcher that also hands rank 0's sampler state to the main process.

    The state goes through a temporary file, like Lightning's weights: the result queue is a pipe that rank 0 writes
    before it exits and the main process reads only after every rank exited, so a large payload there would block.
    """

    def get_extra_results(self, trainer: lightning.pytorch.Trainer) -> dict[str, Any]:
        extra = super().get_extra_results(trainer)
        final = getattr(self._strategy, "_final", None)
        if final is not None:
            path = os.path.join(tempfile.mkdtemp(), "wang_landau_state.pt")
            torch.save(on_cpu(final), path)
            extra["wang_landau_path"] = path
        return extra

    def update_main_process_results(self, trainer: lightning.pytorch.Trainer, extra: dict[str, Any]) -> None:
        super().update_main_process_results(trainer, extra)
        path = extra.get("wang_landau_path")
        if path is not None:
            self._strategy._adopt(torch.load(path, weights_only=False))
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)


__all__ = ["RANK_SEED_STRIDE", "RankShare", "SamplerLauncher", "deal", "on_cpu"]
