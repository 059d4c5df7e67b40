"""The paper's tasks as LightningDataModules and LightningModules, usable with optimizers and every strategy."""

from lightning_entropy.tasks.char_lm import CharDataModule, CharLanguageModel, stdlib_text
from lightning_entropy.tasks.cifar_catdog import (CIFARCatDogClassifier, CIFARCatDogDataModule, ensure_cifar10,
                                                  layernorm_resnet)
from lightning_entropy.tasks.common import Regressor, TensorDataModule
from lightning_entropy.tasks.embeddings import EmbeddingRegressor, EmbeddingsDataModule
from lightning_entropy.tasks.mnist import MNISTClassifier, MNISTDataModule, mnist_cnn
from lightning_entropy.tasks.modular_arithmetic import (ModularArithmeticDataModule, ModularArithmeticTransformer,
                                                        make_modular_addition)
from lightning_entropy.tasks.spiral import SpiralClassifier, SpiralDataModule, make_spiral, relu_net
from lightning_entropy.tasks.spiral_regression import (SpiralRegressionDataModule, SpiralRegressor,
                                                       make_spiral_regression)
from lightning_entropy.tasks.tabular import TabularDataModule, TabularRegressor, load_table
from lightning_entropy.tasks.transformer import TinyTransformer

__all__ = [
    "CIFARCatDogClassifier", "CIFARCatDogDataModule", "CharDataModule", "CharLanguageModel", "EmbeddingRegressor",
    "EmbeddingsDataModule", "MNISTClassifier", "MNISTDataModule", "ModularArithmeticDataModule",
    "ModularArithmeticTransformer", "Regressor", "SpiralClassifier", "SpiralDataModule", "SpiralRegressionDataModule",
    "SpiralRegressor", "TabularDataModule", "TabularRegressor", "TensorDataModule", "TinyTransformer", "ensure_cifar10",
    "layernorm_resnet", "load_table", "make_modular_addition", "make_spiral", "make_spiral_regression", "mnist_cnn",
    "relu_net", "stdlib_text",
]
