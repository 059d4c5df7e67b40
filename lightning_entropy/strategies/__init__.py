"""The Lightning adapter: strategies that install a sampler in place of the user's optimizer."""

from lightning_entropy.strategies.wang_landau import SamplerOptimizer, WangLandauStrategy

__all__ = ["SamplerOptimizer", "WangLandauStrategy"]
