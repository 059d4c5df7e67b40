"""lightning-entropy: entropy landscapes of neural networks, sampled with Wang-Landau as Lightning strategies.

``import lightning_entropy`` registers the strategy names ``wang_landau``, ``wang_landau_mc``, ``wang_landau_ddp`` and
``entropy_md`` with ``lightning.pytorch``'s ``StrategyRegistry``, so ``Trainer(strategy="wang_landau")`` works.
"""

from lightning_entropy.core import (  # noqa: E402
    Box,
    CollectiveVariable,
    Constant,
    FlatnessOneOverT,
    Landscape,
    RampPlateauDecay,
)
from lightning_entropy.strategies import EntropyMDStrategy, WangLandauDDPStrategy, WangLandauStrategy  # noqa: E402
from lightning_entropy.core.setup import package_version as _package_version  # noqa: E402
from lightning_entropy.strategies.registry import register as _register  # noqa: E402

__version__ = _package_version()  # from the installed package's metadata (pyproject.toml)

_register()

__all__ = [
    "Box",
    "CollectiveVariable",
    "Constant",
    "EntropyMDStrategy",
    "FlatnessOneOverT",
    "Landscape",
    "RampPlateauDecay",
    "WangLandauDDPStrategy",
    "WangLandauStrategy",
    "__version__",
]
