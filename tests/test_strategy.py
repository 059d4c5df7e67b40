"""The Lightning strategies: registration, any module, checkpoints that resume exactly, clear errors."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.strategies import StrategyRegistry
from torch import nn

import lightning_entropy
from lightning_entropy import WangLandauStrategy
from lightning_entropy.tasks import SpiralClassifier, SpiralDataModule


def _trainer(strategy, max_steps=3, **kw):
    kw.setdefault("logger", False)
    kw.setdefault("enable_checkpointing", False)
    return Trainer(strategy=strategy, max_steps=max_steps, accelerator="cpu", enable_progress_bar=False,
                   enable_model_summary=False, limit_val_batches=0, **kw)


def _wl(**kw):
    kw.setdefault("walkers", 8)
    kw.setdefault("steps_per_lightning_step", 20)
    return WangLandauStrategy(**kw)


def test_names_are_registered():
    for name in ("wang_landau", "wang_landau_mc", "wang_landau_ddp", "entropy_md"):
        assert name in StrategyRegistry
    assert isinstance(Trainer(strategy="wang_landau", logger=False).strategy, WangLandauStrategy)
    assert Trainer(strategy="wang_landau_mc", logger=False).strategy.sampler == "mc"


def test_every_contract_name_is_registered_with_its_strategy():
    from lightning.pytorch.strategies import StrategyRegistry

    from lightning_entropy import EntropyMDStrategy, WangLandauDDPStrategy

    expected = {"wang_landau": WangLandauStrategy, "wang_landau_mc": WangLandauStrategy,
                "wang_landau_ddp": WangLandauDDPStrategy, "entropy_md": EntropyMDStrategy}
    for name, cls in expected.items():
        assert StrategyRegistry[name]["strategy"] is cls, name
    assert StrategyRegistry["wang_landau_mc"]["init_params"] == {"sampler": "mc"}


def test_boring_model_runs_unmodified():
    model = BoringModel()
    trainer = _trainer(_wl(), max_steps=3)
    trainer.fit(model)
    land = trainer.strategy.landscape
    assert land.names == ("ln_train_loss", "ln_test_loss")  # no standard loss: training/validation_step losses
    assert land.walker_steps == 3 * 20 * 8
    assert land.histogram.sum() == 3 * 20 * 8
    assert np.isfinite(land.entropy).sum() > 0
    theta0 = trainer.strategy.walker_parameters[0]
    assert torch.allclose(torch.cat([p.detach().flatten() for p in model.parameters()]), theta0)


def test_spiral_classifier_2d_landscape_and_save(tmp_path):
    trainer = _trainer(_wl(walkers=16, start="uniform", seed=3), max_steps=4)
    trainer.fit(SpiralClassifier(), datamodule=SpiralDataModule())
    land = trainer.strategy.landscape
    assert land.names == ("ln_train_loss", "test_accuracy")
    assert land.metadata["parameters"] == 116 and land.metadata["vectorized"]
    assert land.metadata["test_labels_in_dynamics"] is True
    assert land.metadata["box"] == {"rule": "fan_out", "c": 2.0} and land.metadata["steps"] == 80
    assert land.edges[1][0] < 0 < 1 < land.edges[1][-1]
    back = lightning_entropy.Landscape.load(land.save(tmp_path / "landscape.npz"))
    np.testing.assert_array_equal(back.entropy, land.entropy)
    assert back.metadata["walkers"] == 16


def test_same_seed_same_landscape_and_other_seed_differs():
    def run(seed):
        trainer = _trainer(_wl(seed=seed, start="uniform"), max_steps=2)
        trainer.fit(SpiralClassifier(), datamodule=SpiralDataModule())
        return trainer.strategy.landscape.bias.clone()

    first = run(1)
    assert torch.equal(first, run(1))
    assert not torch.equal(first, run(2))


@pytest.mark.parametrize("sampler", ["md", "mc"])
def test_resume_from_checkpoint_continues_exactly(tmp_path, sampler):
    def fit(max_steps, ckpt_path=None, every=None):
        callbacks = [ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=every, save_top_k=-1)] if every else []
        trainer = _trainer(_wl(sampler=sampler, start="uniform", seed=5), max_steps=max_steps,
                           enable_checkpointing=bool(every), callbacks=callbacks)
        trainer.fit(SpiralClassifier(), datamodule=SpiralDataModule(), ckpt_path=ckpt_path)
        return trainer.strategy

    straight = fit(4, every=2)
    ckpt = next(p for p in tmp_path.glob("*.ckpt") if "step=2" in p.name)
    resumed = fit(4, ckpt_path=str(ckpt))
    assert torch.equal(straight.landscape.bias, resumed.landscape.bias)
    assert torch.equal(straight.landscape.visits, resumed.landscape.visits)
    assert torch.equal(straight.walker_parameters, resumed.walker_parameters)
    assert straight.landscape.walker_steps == resumed.landscape.walker_steps == 4 * 20 * 8


def test_monte_carlo_uses_hard_accuracy():
    trainer = _trainer(_wl(sampler="mc", start="uniform"), max_steps=3)
    trainer.fit(SpiralClassifier(), datamodule=SpiralDataModule())
    land = trainer.strategy.landscape
    assert land.metadata["sampler"] == "mc" and land.kernel_sigma == 0.0
    visited_y = land.centers[1][land.histogram.sum(axis=0) > 0]
    assert np.allclose(visited_y * 40, np.round(visited_y * 40), atol=1e-6)  # hard accuracy: multiples of 1/40


def test_adam_start_reaches_lower_train_loss_than_uniform():
    def start_losses(start):
        strategy = _wl(start=start, walkers=8, start_steps=200, start_lr=0.02)
        trainer = _trainer(strategy, max_steps=1)
        trainer.fit(SpiralClassifier(), datamodule=SpiralDataModule())
        return strategy.landscape

    adam, uniform = start_losses("adam"), start_losses("uniform")
    assert adam.edges[0][0] < uniform.edges[0][0] - 0.5  # the grid reaches down to where Adam took the walkers


def test_one_d_walk_records_the_label_free_eq1_estimate():
    strategy = _wl(variables=("train_loss",), start="uniform", observe_every=2)
    trainer = _trainer(strategy, max_steps=3)
    trainer.fit(SpiralClassifier(), datamodule=SpiralDataModule())
    land = strategy.landscape
    assert land.observable_names == ("hard_test_accuracy",)
    assert land.metadata["test_labels_in_dynamics"] is False
    x, mean = land.mean_curve()
    assert np.isfinite(mean).any() and np.nanmax(mean) <= 1 and np.nanmin(mean) >= 0


# -- things that cannot work get a clear error ------------------------------------------------------------------------


class ManualModel(SpiralClassifier):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False


@pytest.mark.parametrize(
    ("trainer_kw", "model", "match"),
    [
        ({}, ManualModel(), "manual optimization"),
        ({"gradient_clip_val": 1.0}, None, "gradient_clip_val"),
        ({"accumulate_grad_batches": 2}, None, "accumulate_grad_batches"),
        ({"precision": "bf16-mixed"}, None, "precision='32-true'"),
        ({"plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]}, None,
         "gradient scaler"),
    ],
)
def test_unsupported_trainer_settings_are_rejected(trainer_kw, model, match):
    trainer = _trainer(_wl(), **trainer_kw)
    with pytest.raises(ValueError, match=match):
        trainer.fit(model or SpiralClassifier(), datamodule=SpiralDataModule())


class NoHeldOut(SpiralDataModule):
    val_dataloader = None
    test_dataloader = None


def test_test_variable_without_heldout_set_names_the_fix():
    trainer = _trainer(_wl(variables=("train_loss", "test_accuracy")))
    with pytest.raises(ValueError, match="needs held-out data.*val_dataloader"):
        trainer.fit(SpiralClassifier(), datamodule=NoHeldOut())


def test_without_heldout_the_default_is_a_1d_walk():
    trainer = _trainer(_wl())
    trainer.fit(SpiralClassifier(), datamodule=NoHeldOut())
    assert trainer.strategy.landscape.names == ("ln_train_loss",)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"variables": ("train_loss", "test_acuracy")}, "Unknown collective variable 'test_acuracy'"),
        ({"box": 0.0}, "box must be positive"),
        ({"box": -1.0}, "box must be positive"),
        ({"walkers": 0}, "walkers=0 must be a positive integer"),
        ({"variables": ("test_loss",)}, "first axis is always 'train_loss'"),
        ({"sampler": "hmc"}, "sampler='hmc'"),
        ({"dt": -0.1}, "dt=-0.1"),
        ({"start": "sgd_warm"}, "start='sgd_warm'"),
    ],
)
def test_bad_arguments_name_the_value_and_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        strategy = _wl(**kwargs)
        _trainer(strategy).fit(SpiralClassifier(), datamodule=SpiralDataModule())


def test_nonfinite_losses_send_walkers_back_and_are_never_deposited():
    def poisoned(out, y):  # NaN wherever the mean logit exceeds 0.5: part of the box is poisoned
        return nn.functional.cross_entropy(out, y) * torch.where(out.mean() < 0.5, 1.0, float("nan"))

    strategy = _wl(start="uniform", box=4.0, variables=("train_loss",), walkers=16, loss=poisoned)
    trainer = _trainer(strategy, max_steps=5)
    trainer.fit(SpiralClassifier(), datamodule=SpiralDataModule())
    state = strategy._state
    assert float(state.nonfinite.sum()) > 0, "the test needs walkers to hit the poisoned region"
    assert torch.isfinite(state.cv).all()
    assert torch.isfinite(strategy.landscape.bias).all()
    assert strategy.landscape.histogram.sum() == 5 * 20 * 16


# -- the startup hook -------------------------------------------------------------------------------------------------


def _hook_installed() -> bool:
    return (Path(sysconfig.get_paths()["purelib"]) / "lightning_entropy_startup.pth").exists()


@pytest.mark.skipif(not _hook_installed(), reason="package not installed with its startup hook (pip install .)")
def test_fresh_interpreter_knows_the_strategy_without_import(tmp_path):
    code = ("import sys; from lightning.pytorch import Trainer; t = Trainer(strategy='wang_landau', logger=False);"
            " print(type(t.strategy).__name__, 'lightning_entropy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "LIGHTNING_ENTROPY_AUTOREGISTER": "1"})
    assert out.returncode == 0, out.stderr
    assert "WangLandauStrategy True" in out.stdout
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "LIGHTNING_ENTROPY_AUTOREGISTER": "0"})
    assert off.returncode != 0 and "wang_landau" in off.stderr
    lazy = subprocess.run([sys.executable, "-c", "import sys; print('lightning_entropy' in sys.modules or 'torch' in sys.modules)"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert lazy.stdout.strip() == "False"  # the hook imports nothing until Lightning is imported


class Untraceable(SpiralClassifier):
    """Data-dependent control flow on a tensor value: torch.func.vmap cannot trace it."""

    def forward(self, x):
        out = self.net(x)
        if out.sum() > 1e9:  # never true, but vmap must evaluate the condition
            out = out * 0
        return out


def test_module_vmap_cannot_trace_falls_back_to_a_loop_with_a_warning():
    strategy = _wl(start="uniform", walkers=4)
    with pytest.warns(UserWarning, match="vmap cannot trace Untraceable"):
        _trainer(strategy, max_steps=2).fit(Untraceable(), datamodule=SpiralDataModule())
    land = strategy.landscape
    assert land.metadata["vectorized"] is False
    assert land.walker_steps == 2 * 20 * 4 and np.isfinite(land.entropy).any()
