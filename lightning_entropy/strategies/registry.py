"""Registration of the strategy names with Lightning's ``StrategyRegistry``: ``wang_landau`` (WLMD), ``wang_landau_mc``
(WLMC), ``wang_landau_ddp`` (WLMD walkers on several DDP processes sharing one landscape) and ``entropy_md`` (MD held
at a train-loss target, the training mode).
"""

from __future__ import annotations

from lightning.pytorch.strategies import StrategyRegistry

from lightning_entropy.strategies.entropy_md import EntropyMDStrategy
from lightning_entropy.strategies.wang_landau import WangLandauStrategy
from lightning_entropy.strategies.wang_landau_ddp import WangLandauDDPStrategy


def register(registry=StrategyRegistry) -> None:
    """Add the strategy names to ``registry`` (idempotent)."""
    entries = {
        "wang_landau": (WangLandauStrategy, "Wang-Landau molecular dynamics: entropy landscape of the module", {}),
        "wang_landau_mc": (WangLandauStrategy, "Wang-Landau Monte Carlo (single-parameter moves)", {"sampler": "mc"}),
        "wang_landau_ddp": (WangLandauDDPStrategy, "Wang-Landau MD walkers on DDP processes sharing one landscape", {}),
        "entropy_md": (EntropyMDStrategy, "molecular dynamics held at a train-loss target (the training mode)", {}),
    }
    for name, (cls, description, params) in entries.items():
        if name not in registry:
            registry.register(name, cls, description=description, **params)
