"""The baseline recorder finds the loss as the sampler does (the module contract): a module with no ``loss_fn`` gets a
baseline, from an inline standard loss or from its own ``training_step``; the optimiser still trains in train mode."""

import math

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader

from lightning_entropy.baseline import BaselineRecorder, _optimizer_factory
from lightning_entropy.tasks import SpiralDataModule

pytestmark = pytest.mark.usefixtures("one_thread")


class Inline(LightningModule):
    """Lightning's docs style: F.cross_entropy inline, self.log, Dropout; remembers the mode its steps ran in."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2))
        self.modes: list[bool] = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.modes.append(self.training)
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())


class Regularised(Inline):
    """A loss that is not a standard loss of forward(x): the recorder evaluates training_step itself."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y) + 0.05 * sum((p ** 2).sum() for p in self.parameters())

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("val_loss", loss)
        return loss


def _record(module, epochs: int = 5):
    dm = SpiralDataModule()
    train = DataLoader(dm.train_set, batch_size=10, shuffle=True)  # minibatches, passed to fit
    val = DataLoader(dm.test_set, batch_size=16)
    module.configure_optimizers = _optimizer_factory(module, "adam", 1e-2, 0.0)
    recorder = BaselineRecorder(seed=0)
    Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0, callbacks=[recorder]).fit(module, train, val)
    return recorder, dm


def test_an_inline_cross_entropy_module_gets_accuracy_records():
    module = Inline()
    recorder, dm = _record(module)
    assert recorder.test_metric == "hard_test_accuracy" and len(recorder.records) == 5
    # 5 epochs x 4 minibatches trained in train mode (the contract's probes of training_step, in eval mode, come first)
    assert len(module.modes) > 20 and all(module.modes[-20:]) and not any(module.modes[:-20])
    x, y = dm.train_set.tensors
    xt, yt = dm.test_set.tensors
    module.eval()
    with torch.no_grad():
        ln_train = math.log(float(F.cross_entropy(module(x), y)))
        accuracy = float((module(xt).argmax(1) == yt).float().mean())
    last = recorder.records[-1]
    assert last["ln_train_loss"] == pytest.approx(ln_train, abs=1e-5)
    assert last["hard_test_accuracy"] == pytest.approx(accuracy)


def test_a_module_without_a_standard_loss_is_recorded_through_its_own_steps():
    module = Regularised()
    recorder, dm = _record(module, epochs=3)
    assert recorder.test_metric == "ln_test_loss" and len(recorder.records) == 3
    x, y = dm.train_set.tensors
    xt, yt = dm.test_set.tensors
    module.eval()
    with torch.no_grad():
        ln_train = math.log(float(module.training_step((x, y), 0)))
        ln_test = math.log(float(F.cross_entropy(module(xt), yt)))
    last = recorder.records[-1]
    assert last["ln_train_loss"] == pytest.approx(ln_train, abs=1e-5)  # regulariser included, as the sampler samples
    assert last["ln_test_loss"] == pytest.approx(ln_test, abs=1e-5)
    assert math.isnan(last["hard_test_accuracy"])


def test_an_accuracy_baseline_of_a_module_without_a_classifier_loss_names_the_fix():
    module = Regularised()
    module.configure_optimizers = _optimizer_factory(module, "adam", 1e-2, 0.0)
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[BaselineRecorder(metric="hard_test_accuracy")])
    with pytest.raises(ValueError, match="not a classifier.*metric='ln_test_loss'"):
        trainer.fit(module, datamodule=SpiralDataModule())
