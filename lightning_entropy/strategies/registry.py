"""Registration of the strategy names with Lightning's ``StrategyRegistry``.

``wang_landau`` (WLMD), ``wang_landau_mc`` (WLMC) and ``wang_landau_ddp`` (WLMD walkers on several DDP processes
sharing one landscape) are built here. ``entropy_md`` is part of the public contract but not built yet: its name is
reserved so that a Trainer asking for it fails with a message that says so, instead of Lightning's "unknown
strategy".
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import StrategyRegistry

from lightning_entropy.strategies.wang_landau import WangLandauStrategy
from lightning_entropy.strategies.wang_landau_ddp import WangLandauDDPStrategy

RESERVED = {
    "entropy_md": "molecular dynamics held at a train-loss target (the training mode)",
}


class _Reserved:
    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            f"strategy={self.name!r} ({RESERVED[self.name]}) is reserved by lightning-entropy but not available in"
            " this version. Use strategy='wang_landau' (or 'wang_landau_mc') meanwhile."
        )


def register(registry=StrategyRegistry) -> None:
    """Add the strategy names to ``registry`` (idempotent)."""
    entries = {
        "wang_landau": (WangLandauStrategy, "Wang-Landau molecular dynamics: entropy landscape of the module", {}),
        "wang_landau_mc": (WangLandauStrategy, "Wang-Landau Monte Carlo (single-parameter moves)", {"sampler": "mc"}),
        "wang_landau_ddp": (WangLandauDDPStrategy, "Wang-Landau MD walkers on DDP processes sharing one landscape", {}),
    }
    for name, (cls, description, params) in entries.items():
        if name not in registry:
            registry.register(name, cls, description=description, **params)
    for name, description in RESERVED.items():
        if name not in registry:
            registry.register(name, _Reserved(name), description=f"reserved: {description}")
