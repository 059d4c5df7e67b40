"""Callbacks observe the sampler and never steer it."""

from lightning_entropy.callbacks.landscape_logger import LandscapeLogger, curves

__all__ = ["LandscapeLogger", "curves"]
