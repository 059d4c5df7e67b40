"""Callbacks observe the sampler and never steer it."""

from lightning_entropy.callbacks.landscape_logger import LandscapeLogger, curves
from lightning_entropy.callbacks.progress import SamplerProgressBar

__all__ = ["LandscapeLogger", "SamplerProgressBar", "curves"]
