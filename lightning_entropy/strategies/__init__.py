"""The Lightning adapter: strategies that install a sampler in place of the user's optimizer."""

from lightning_entropy.strategies.base import SamplerOptimizer, SamplerStrategy
from lightning_entropy.strategies.entropy_md import EntropyMDStrategy
from lightning_entropy.strategies.wang_landau import WangLandauStrategy

__all__ = ["EntropyMDStrategy", "SamplerOptimizer", "SamplerStrategy", "WangLandauStrategy"]
