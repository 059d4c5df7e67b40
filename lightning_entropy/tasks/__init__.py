"""The paper's tasks as LightningDataModules and LightningModules, usable with optimizers and every strategy."""

from lightning_entropy.tasks.spiral import SpiralClassifier, SpiralDataModule, make_spiral, relu_net

__all__ = ["SpiralClassifier", "SpiralDataModule", "make_spiral", "relu_net"]
