"""``entropy_md``: MD held at a train loss (the training mode), from the pure sampler to the command line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from toy import toy_problem

from lightning_entropy import EntropyMDStrategy
from lightning_entropy.cli import ConfigError, compose_config, run
from lightning_entropy.core.ensemble import EnsembleModule
from lightning_entropy.core import loop
from lightning_entropy.core.samplers import restrained
from lightning_entropy.core.samplers.wlmd import MDConfig
from lightning_entropy.core.walkers import ParameterLayout
from lightning_entropy.tasks import SpiralClassifier, SpiralDataModule


pytestmark = pytest.mark.usefixtures("one_thread")


# -- the pure sampler ------------------------------------------------------------------------------------------------


def _toy_run(steps: int, *, strength: float = 1e3, walkers: int = 16, observe_every: int = 0, seed: int = 0):
    net, layout, evaluate, bound = toy_problem(1)
    theta = (0.5 * layout.flatten(net)).clamp(-0.9, 0.9)  # a point well inside the [-1, 1] box
    target = float(evaluate(theta[None]).values[0, 0])
    config = restrained.RestraintConfig(target, strength, MDConfig(dt=0.01, friction=0.05))
    sampler = restrained.RestrainedMD(evaluate, bound, config)
    state = sampler.init(theta.repeat(walkers, 1), seed=seed)
    spreads = []
    for _ in range(steps // 100):
        state, _ = loop.run(sampler, state, 100, observe_every=observe_every)
        spreads.append(float(state.theta.std(0).mean()))
    return state, config, spreads


def test_restraint_force_is_k_times_offset_times_grad_of_ln_loss():
    _, layout, evaluate, _ = toy_problem(1)
    theta = torch.rand(3, layout.numel, generator=torch.Generator().manual_seed(0)) - 0.5
    config = restrained.RestraintConfig(target=-1.0, strength=50.0)
    cv, value, grad = evaluate.value_and_grad(theta, restrained.potential(config))
    unit = evaluate.value_and_grad(theta, lambda c: (c[:, 0], torch.ones_like(c)))[2]  # grad of ln L_train
    torch.testing.assert_close(value, 0.5 * 50.0 * (cv[:, 0] + 1.0) ** 2)
    torch.testing.assert_close(grad, 50.0 * (cv[:, 0] + 1.0)[:, None] * unit)


def test_walkers_spread_from_one_point_while_the_loss_stays_within_a_few_widths():
    state, config, spreads = _toy_run(600, observe_every=10)
    trace = restrained.trace_arrays(state)
    x = trace["ln_train_loss"]
    assert x.shape == (60, 16)
    assert np.abs(x - config.target).max() < 5 * config.width
    assert 0.0 < spreads[0] < spreads[2] < spreads[-1]  # the variance of the walkers grows from zero
    assert float(state.md.accepted.mean()) / state.step > 0.5


def test_adapt_dt_moves_towards_the_acceptance_window():
    assert restrained.adapt_dt(1e-3, 0.0) < restrained.adapt_dt(1e-3, 0.3) < 1e-3
    assert restrained.adapt_dt(1e-3, 0.75) == 1e-3
    assert restrained.adapt_dt(1e-3, 0.99) > 1e-3
    with pytest.raises(ValueError, match="acceptance=1.5"):
        restrained.adapt_dt(1e-3, 1.5)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"target": float("nan")}, "target=nan"),
    ({"target": 0.0, "strength": 0.0}, "strength=0.0.*positive"),
    ({"target": 0.0, "strength": -5.0}, "strength=-5.0"),
])
def test_restraint_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        restrained.RestraintConfig(**kwargs)


# -- the strategy ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    """A spiral classifier after 300 full-batch Adam steps (a start at low train loss), as a state dict."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, dm = SpiralClassifier(), SpiralDataModule()
    x, y = dm.train_set.tensors
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        model.loss_fn(model(x), y).backward()
        opt.step()
    torch.set_num_threads(previous)
    return model.state_dict()


def _model(state):
    model = SpiralClassifier()
    model.load_state_dict(state)
    return model


def _ln_train(model) -> float:
    x, y = SpiralDataModule().train_set.tensors
    with torch.no_grad():
        return math.log(float(model.loss_fn(model(x), y)))


def _fit(strategy, model, datamodule=None, max_steps=4, **kw):
    kw.setdefault("logger", False)
    kw.setdefault("enable_checkpointing", False)
    trainer = Trainer(strategy=strategy, max_steps=max_steps, accelerator="cpu", enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, **kw)
    trainer.fit(model, datamodule=datamodule or SpiralDataModule())
    return strategy


def _md(**kw):
    kw.setdefault("walkers", 8)
    kw.setdefault("steps_per_lightning_step", 25)
    kw.setdefault("observe_every", 5)
    return EntropyMDStrategy(**kw)


def test_name_is_registered():
    assert isinstance(Trainer(strategy="entropy_md", logger=False).strategy, EntropyMDStrategy)


def test_holds_the_starting_train_loss_and_returns_the_closest_walker(trained):
    model = _model(trained)
    start = _ln_train(model)
    strategy = _fit(_md(), model)
    assert strategy.target == pytest.approx(start, abs=1e-5)
    trace = strategy.trace
    assert trace["step"][0] == 0 and trace["step"][-1] == 100 and len(trace["step"]) == 21
    assert np.abs(trace["ln_train_loss"] - start).max() < 5 * strategy.width
    assert trace["ln_train_loss_std"][0] == 0 and trace["ln_train_loss_std"][-1] > 0  # one start, then apart
    assert strategy.metric_name == "hard_test_accuracy"
    assert ((trace["hard_test_accuracy"] >= 0) & (trace["hard_test_accuracy"] <= 1)).all()
    # the module holds the walker closest to the target
    theta = strategy.walker_parameters
    closest = int((strategy.walker_ln_train_loss - strategy.target).abs().argmin())
    layout = ParameterLayout.of(model)
    torch.testing.assert_close(layout.flatten(model), theta[closest])
    assert abs(_ln_train(model) - start) < 3 * strategy.width
    assert float(theta.std(0).mean()) > 0
    assert (theta.abs() <= strategy._bound).all()
    assert 0.5 < strategy.acceptance <= 1


def test_hold_mean_moves_the_centre_so_the_walkers_mean_sits_at_the_target(trained):
    """A weak restraint (k = 10, width 0.32 nats) on a trained spiral net: the volume of low loss grows with ln L_train,
    so walkers centred at the target settle well above it; ``hold="mean"`` moves the centre down until they do not."""
    offsets = {}
    for hold in ("center", "mean"):
        strategy = _fit(_md(walkers=16, strength=10.0, hold=hold, adapt_steps=300, steps_per_lightning_step=50),
                        _model(trained), max_steps=10)
        offsets[hold] = float(strategy.walker_ln_train_loss.mean()) - strategy.target
        if hold == "center":
            assert strategy.center == strategy.target
        else:
            assert strategy.center < strategy.target - 0.1
    assert offsets["center"] > strategy.width  # the entropic force: > 1 width above the target
    assert abs(offsets["mean"]) < 0.5 * offsets["center"]  # within the burn-in's lag and the 16 walkers' noise


@pytest.mark.parametrize("adapt_steps", [200, 10_000])  # the burn-in ends inside the fit / the fit ends inside it
def test_a_restraint_that_cannot_hold_its_target_says_so(trained, adapt_steps):
    with pytest.warns(UserWarning, match=r"After 200 MD steps .* mean ln L_train is .* restraint widths\) from"
                                         r" target=.*larger strength"):
        _fit(_md(strength=1.0, hold="center", adapt_steps=adapt_steps, steps_per_lightning_step=50), _model(trained),
             max_steps=4)


def test_a_chosen_metric_is_observed_under_its_own_name(trained):
    strategy = _fit(_md(metric="smooth_test_accuracy"), _model(trained), max_steps=1)
    assert strategy.metric_name == "smooth_test_accuracy"
    acc = strategy.trace["smooth_test_accuracy"]
    assert acc.shape == (6, 8) and ((acc > 0) & (acc < 1)).all()
    assert not np.allclose(acc * 40, np.round(acc * 40))  # smoothed, not multiples of 1/40


def test_ensemble_averages_walker_probabilities(trained):
    strategy = _fit(_md(select="ensemble"), _model(trained), max_steps=2)
    x = SpiralDataModule().test_set.tensors[0]
    probs = strategy.ensemble_predict(x)
    assert probs.shape == (len(x), 2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(x)))
    ensemble = strategy.result
    assert isinstance(ensemble, EnsembleModule) and ensemble.walkers == 8
    by_hand = torch.stack([torch.softmax(o, -1) for o in ensemble.walker_outputs(x)]).mean(0)
    torch.testing.assert_close(probs, by_hand)
    metrics = strategy.ensemble_metrics()
    assert 0 <= metrics["hard_test_accuracy"] <= 1
    assert abs(metrics["ln_train_loss"] - strategy.target) < 0.5  # averaged probabilities: near, not at, the target


class FlippedLabels(SpiralDataModule):
    """The same data with every held-out label flipped: a dynamics that used them would move differently."""

    def __init__(self):
        super().__init__()
        x, y = self.test_set.tensors
        self.test_set = torch.utils.data.TensorDataset(x, 1 - y)


def test_heldout_labels_do_not_steer_the_trajectory(trained):
    clean = _fit(_md(seed=3), _model(trained), max_steps=3)
    flipped = _fit(_md(seed=3), _model(trained), FlippedLabels(), max_steps=3)
    assert torch.equal(clean.walker_parameters, flipped.walker_parameters)
    np.testing.assert_array_equal(clean.trace["ln_train_loss"], flipped.trace["ln_train_loss"])
    np.testing.assert_allclose(clean.trace["hard_test_accuracy"], 1 - flipped.trace["hard_test_accuracy"], atol=1e-6)


def test_resume_from_checkpoint_continues_exactly(tmp_path, trained):
    def fit(max_steps, ckpt_path=None, every=None):
        callbacks = [ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=every, save_top_k=-1)] if every else []
        strategy = _md(seed=5, steps_per_lightning_step=15, adapt_steps=1000, dt=0.02, strength=100.0)
        trainer = Trainer(strategy=strategy, max_steps=max_steps, accelerator="cpu", enable_progress_bar=False,
                          enable_model_summary=False, limit_val_batches=0, logger=False,
                          enable_checkpointing=bool(every), callbacks=callbacks)
        trainer.fit(_model(trained), datamodule=SpiralDataModule(), ckpt_path=ckpt_path)
        return strategy

    straight = fit(4, every=2)
    ckpt = next(p for p in tmp_path.glob("*.ckpt") if "step=2" in p.name)
    resumed = fit(4, ckpt_path=str(ckpt))
    assert straight.dt != 0.02  # the time step adapted, and must resume adapted
    assert resumed.dt == straight.dt and resumed.box == straight.box and resumed.target == straight.target
    assert straight.center != straight.target and resumed.center == straight.center  # the moved centre resumes
    assert torch.equal(straight.walker_parameters, resumed.walker_parameters)
    for key in ("step", "ln_train_loss", "hard_test_accuracy"):
        np.testing.assert_array_equal(straight.trace[key], resumed.trace[key])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"strength": 0.0}, "strength=0.0.*1/sqrt"),
    ({"strength": -1.0}, "strength=-1.0"),
    ({"target": float("nan")}, "target=nan.*finite"),
    ({"walkers": 0}, "walkers=0 must be a positive integer"),
    ({"select": "best"}, "select='best'"),
    ({"dt": -0.1}, "dt=-0.1"),
    ({"adapt_steps": -1}, "adapt_steps=-1"),
    ({"hold": "median"}, "hold='median'.*'mean'"),
    ({"heldout": "train"}, "heldout='train'"),
])
def test_bad_arguments_name_the_value_and_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EntropyMDStrategy(**kwargs)


def test_a_module_far_outside_the_box_is_an_error_that_names_the_fix(trained):
    with pytest.raises(ValueError, match="far outside the box.*larger box"):
        _fit(_md(box=0.05), _model(trained), max_steps=1)


@pytest.mark.parametrize(("trainer_kw", "match"), [
    ({"gradient_clip_val": 1.0}, "EntropyMDStrategy cannot clip gradients"),
    ({"accumulate_grad_batches": 2}, "accumulate_grad_batches"),
])
def test_trainer_settings_that_cannot_work_are_rejected(trained, trainer_kw, match):
    with pytest.raises(ValueError, match=match):
        _fit(_md(), _model(trained), max_steps=1, **trainer_kw)


def test_results_before_fit_say_so():
    with pytest.raises(RuntimeError, match="before trainer.fit"):
        _ = _md().trace


# -- the command line ------------------------------------------------------------------------------------------------


def test_cli_trains_the_baseline_then_samples_and_writes_both_metrics(tmp_path):
    cfg = compose_config(["sampler=entropy_md", "trainer.max_steps=3", "trainer.progress_bar=false",
                          "trainer.threads=0", "baseline.epochs=200", "baseline.lr=1e-2", "sampler.walkers=4",
                          "sampler.steps_per_lightning_step=10", "sampler.observe_every=5"])
    summary = run(cfg, tmp_path, echo=lambda _: None)
    for name in ("summary.json", "md_trace.csv", "md_trace.png", "baseline.csv"):
        assert (tmp_path / name).exists(), name
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["baseline_test_metric"] == summary["baseline_test_metric"]
    assert 0 <= written["test_metric"] <= 1 and 0 <= written["baseline_test_metric"] <= 1
    assert written["metric"] == "hard_test_accuracy" and written["test_labels_in_dynamics"] is False
    assert abs(written["ln_train_loss"] - written["baseline_ln_train_loss"]) < 5 * written["restraint_width"]
    assert written["steps"] == 30 and written["walkers"] == 4
    rows = (tmp_path / "md_trace.csv").read_text().splitlines()
    assert rows[0].startswith("step,ln_train_loss_mean") and len(rows) == 1 + 7  # steps 0, 5, ..., 30


@pytest.mark.parametrize(("override", "key"), [
    ("sampler.strength=-1.0", "sampler.strength"),
    ("sampler.select=best", "sampler.select"),
    ("sampler.adapt_steps=-2", "sampler.adapt_steps"),
])
def test_cli_rejects_bad_values_before_training(tmp_path, override, key):
    with pytest.raises(ConfigError, match=key):
        run(compose_config(["sampler=entropy_md", override]), tmp_path, echo=lambda _: None)
    assert not (tmp_path / "summary.json").exists()


def test_the_progress_bar_shows_the_heldout_metric_not_its_mean_with_the_train_loss(trained):
    """md/heldout is the walkers' mean held-out accuracy at the latest observation (it once averaged a row of ln
    L_train with the accuracy: -0.211 on the bar while the accuracy was 0.905)."""
    strategy = _fit(_md(), _model(trained), max_steps=2)
    shown = float(strategy.lightning_module.trainer.progress_bar_metrics["md/heldout"])
    assert shown == pytest.approx(float(strategy.trace["hard_test_accuracy_mean"][-1]), abs=1e-6)
    assert 0.0 <= shown <= 1.0


def test_latest_heldout_reads_the_last_row_of_a_chunk_of_observations():
    from lightning_entropy.strategies.entropy_md import latest_heldout

    ln_train = torch.full((3, 1, 4), -2.0)
    accuracy = torch.arange(12, dtype=torch.float32).reshape(3, 1, 4) / 12  # per observation, per walker
    chunk = torch.cat([ln_train, accuracy], dim=1)  # (n, 1 + k, W)
    assert float(latest_heldout([chunk])) == pytest.approx(float(accuracy[-1].mean()))
    assert float(latest_heldout([chunk[0]])) == pytest.approx(float(accuracy[0].mean()))  # a single (1 + k, W) row
