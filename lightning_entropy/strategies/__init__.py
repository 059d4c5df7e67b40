from lightning_entropy.strategies.base import SamplerOptimizer, SamplerStrategy
from lightning_entropy.strategies.entropy_md import EntropyMDStrategy
from lightning_entropy.strategies.wang_landau import WangLandauStrategy
from lightning_entropy.strategies.wang_landau_ddp import WangLandauDDPStrategy

__all__ = ["EntropyMDStrategy", "SamplerOptimizer", "SamplerStrategy", "WangLandauDDPStrategy", "WangLandauStrategy"]
