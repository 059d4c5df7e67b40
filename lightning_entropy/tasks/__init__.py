"""The paper's tasks as LightningDataModules and LightningModules, usable with optimizers and every strategy."""

from lightning_entropy.tasks.common import Regressor, TensorDataModule
from lightning_entropy.tasks.embeddings import EmbeddingRegressor, EmbeddingsDataModule
from lightning_entropy.tasks.mnist import MNISTClassifier, MNISTDataModule, mnist_cnn
from lightning_entropy.tasks.spiral import SpiralClassifier, SpiralDataModule, make_spiral, relu_net
from lightning_entropy.tasks.spiral_regression import (SpiralRegressionDataModule, SpiralRegressor,
                                                       make_spiral_regression)
from lightning_entropy.tasks.tabular import TabularDataModule, TabularRegressor, load_table

__all__ = [
    "EmbeddingRegressor", "EmbeddingsDataModule", "MNISTClassifier", "MNISTDataModule", "Regressor",
    "SpiralClassifier", "SpiralDataModule", "SpiralRegressionDataModule", "SpiralRegressor", "TabularDataModule",
    "TabularRegressor", "TensorDataModule", "load_table", "make_spiral", "make_spiral_regression", "mnist_cnn",
    "relu_net",
]
