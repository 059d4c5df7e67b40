"""Optimizers that the training-mode comparison measures ``entropy_md`` against (``benchmarks/training_modes.py``)."""

from lightning_entropy.optim.sam import SAM

__all__ = ["SAM"]
