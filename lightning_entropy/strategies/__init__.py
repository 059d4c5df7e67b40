"""The Lightning adapter: strategies that install a sampler in place of the user's optimizer."""

from lightning_entropy.strategies.wang_landau import SamplerOptimizer, WangLandauStrategy
from lightning_entropy.strategies.wang_landau_ddp import WangLandauDDPStrategy

__all__ = ["SamplerOptimizer", "WangLandauDDPStrategy", "WangLandauStrategy"]
