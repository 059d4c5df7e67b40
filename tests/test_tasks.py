"""The paper's other tasks: spiral regression, tabular, MNIST and embeddings (the transformer and CIFAR tasks are in
test_tasks_more.py; the command-line composition test below covers them too).

Parameter counts against the paper, data shapes and standardization, a few Wang-Landau and optimiser steps on each
task, the command line's configuration of each, and clear errors for missing data files. Tests that need the paper's
reference files in ``../shared/data`` skip with a reason when they are absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

from lightning_entropy import WangLandauStrategy
from lightning_entropy.cli import ConfigError, compose_config, run, validate
from lightning_entropy.cli.tasks import build_task
from lightning_entropy.tasks import (EmbeddingRegressor, EmbeddingsDataModule, MNISTClassifier, MNISTDataModule,
                                     SpiralRegressionDataModule, SpiralRegressor, TabularDataModule, TabularRegressor,
                                     make_spiral_regression)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HOUSE = DATA / "house_prices.npz"
POLYMER = DATA / "polymer_bandgap_embeddings.npz"
NEW_TASKS = ("spiral_regression", "tabular", "mnist", "embeddings", "char_lm", "modular_arithmetic", "cifar_catdog")


def _needs(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"reference data file {path} is absent (see ../shared/data/README.md)")
    return path


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def mnist_dm():
    return MNISTDataModule(n_train=250, n_test=250)


# -- parameter counts -------------------------------------------------------------------------------------------------


def test_parameter_counts_match_the_paper():
    assert [_count(MNISTClassifier(c)) for c in (2, 3, 4)] == [362, 646, 1002]
    assert _count(SpiralRegressor(width=30)) == 1051
    assert _count(SpiralRegressor(width=1000)) == 1_005_001
    assert _count(TabularRegressor(331, width=10)) == 3331
    assert _count(EmbeddingRegressor(768, width=10)) == 7701


# -- data ---------------------------------------------------------------------------------------------------------------


def test_spiral_regression_data():
    dm = SpiralRegressionDataModule(n_points=200)
    (x, y), (xt, yt) = dm.train_set.tensors, dm.test_set.tensors
    assert x.shape == (100, 2) and y.shape == (100, 1) and xt.shape == (100, 2) and yt.shape == (100, 1)
    assert float(x.abs().max()) <= 5 and float(y.abs().max()) <= 1
    assert not torch.equal(x, xt)  # different seeds for the two halves
    odd = SpiralRegressionDataModule(n_points=101)
    assert (odd.n_train, odd.n_test) == (50, 51)
    # the target is continuous across the branch cut of atan2 (negative x1 axis)
    x_above = torch.tensor([[-3.0, 1e-6]])
    x_below = torch.tensor([[-3.0, -1e-6]])
    f = lambda p: torch.sin(2 * p.norm(dim=1) - torch.atan2(p[:, 1], p[:, 0]))  # noqa: E731
    assert float((f(x_above) - f(x_below)).abs()) < 1e-4
    a, b = make_spiral_regression(10, seed=4), make_spiral_regression(10, seed=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_tabular_diabetes_default_is_standardized_with_train_statistics():
    dm = TabularDataModule()
    (x, y), (xt, yt) = dm.train_set.tensors, dm.test_set.tensors
    assert dm.source == "sklearn diabetes" and dm.features == 10
    assert (dm.n_train, dm.n_test) == (110, 110)  # a quarter of 442 rows each
    assert x.shape == (110, 10) and y.shape == (110, 1) and xt.shape == (110, 10)
    torch.testing.assert_close(x.mean(0), torch.zeros(10), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(0, unbiased=False), torch.ones(10), atol=1e-4, rtol=0)
    assert abs(float(y.mean())) < 1e-5 and abs(float(y.std(unbiased=False)) - 1) < 1e-4
    assert abs(float(xt.mean())) > 1e-4  # the test split is not standardized with its own statistics


def test_tabular_csv_and_npz_by_path(tmp_path):
    rng = np.random.default_rng(0)
    table = rng.normal(size=(40, 4))
    csv = tmp_path / "table.csv"
    np.savetxt(csv, table, delimiter=",", header="a,b,price,c", comments="")
    dm = TabularDataModule(path=str(csv), target="price", n_train=20, n_test=10)
    assert dm.features == 3 and (dm.n_train, dm.n_test) == (20, 10)
    y = dm.train_set.tensors[1][:, 0]
    expected = (table[:20, 2] - table[:20, 2].mean()) / table[:20, 2].std()
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="task.target='nope'"):
        TabularDataModule(path=str(csv), target="nope")
    npz = tmp_path / "table.npz"
    np.savez(npz, X=table[:, :3], y=table[:, 3])
    dm = TabularDataModule(path=str(npz))
    assert dm.features == 3 and (dm.n_train, dm.n_test) == (10, 10)
    with pytest.raises(ValueError, match="task.n_train=30"):
        TabularDataModule(path=str(npz), n_train=30, n_test=30)


def test_house_prices_uses_the_papers_split():
    path = _needs(HOUSE)
    dm = TabularDataModule(path=str(path))
    assert (dm.n_train, dm.n_test, dm.features) == (365, 365, 331)
    with np.load(path) as z:
        y = z["y"].astype(np.float64)
    train_y = (y[:365] - y[:365].mean()) / y[:365].std()
    test_y = (y[365:730] - y[:365].mean()) / y[:365].std()  # rows 365-729, scaled with train statistics
    np.testing.assert_allclose(dm.train_set.tensors[1][:, 0].numpy(), train_y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dm.test_set.tensors[1][:, 0].numpy(), test_y, rtol=1e-4, atol=1e-4)
    assert _count(TabularRegressor(dm.features, width=10)) == 3331


def test_mnist_data(mnist_dm):
    (x, y), (xt, yt) = mnist_dm.train_set.tensors, mnist_dm.test_set.tensors
    assert x.shape == (250, 1, 28, 28) and xt.shape == (250, 1, 28, 28) and y.shape == (250,) and y.dtype == torch.long
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert len(torch.unique(y)) == 10
    assert MNISTClassifier(2)(x[:3]).shape == (3, 10)


def test_embeddings_data():
    path = _needs(POLYMER)
    dm = EmbeddingsDataModule(str(path))
    assert (dm.n_train, dm.n_test, dm.features) == (448, 113, 768)
    assert dm.train_set.tensors[1].shape == (448, 1)
    assert _count(EmbeddingRegressor(dm.features)) == 7701


def test_missing_paths_give_clear_errors(tmp_path):
    missing = tmp_path / "nowhere.npz"
    with pytest.raises(ValueError, match="task.path is not set"):
        EmbeddingsDataModule(None)
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        EmbeddingsDataModule(str(missing))
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        TabularDataModule(path=str(missing))


# -- every task trains and samples -------------------------------------------------------------------------------------


def _small_tasks(tmp_path):
    """(datamodule, model) of every task, small enough for a few steps each."""
    emb = tmp_path / "emb.npz"
    rng = np.random.default_rng(1)
    np.savez(emb, X_train=rng.normal(size=(30, 768)).astype(np.float32), y_train=rng.normal(size=30),
             X_test=rng.normal(size=(20, 768)).astype(np.float32), y_test=rng.normal(size=20))
    small_mnist = MNISTDataModule(n_train=40, n_test=40)
    return {
        "spiral_regression": (SpiralRegressionDataModule(n_points=100), lambda: SpiralRegressor(width=30)),
        "tabular": (TabularDataModule(), lambda: TabularRegressor(10)),
        "mnist": (small_mnist, lambda: MNISTClassifier(2)),
        "embeddings": (EmbeddingsDataModule(str(emb)), lambda: EmbeddingRegressor(768)),
    }


def _trainer(**kw):
    return Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, **kw)


def test_every_task_runs_wang_landau_and_sgd(tmp_path):
    for name, (dm, make) in _small_tasks(tmp_path).items():
        torch.manual_seed(0)
        model = make()
        strategy = WangLandauStrategy(walkers=4, steps_per_lightning_step=5, start="uniform", seed=1)
        trainer = _trainer(strategy=strategy, max_steps=2, limit_val_batches=0)
        trainer.fit(model, datamodule=dm)
        land = strategy.landscape
        classifier = name == "mnist"
        assert land.names == (("ln_train_loss", "test_accuracy") if classifier else ("ln_train_loss", "ln_test_loss")), name
        assert land.metadata["vectorized"], name
        assert land.metadata["parameters"] == _count(model), name
        assert np.isfinite(land.histogram).all() and land.histogram.sum() > 0, name

        torch.manual_seed(0)
        model = make()
        before = [p.detach().clone() for p in model.parameters()]
        trainer = _trainer(max_steps=2, num_sanity_val_steps=0)
        trainer.fit(model, datamodule=dm)
        assert trainer.global_step == 2, name
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), name
        assert "val_loss" in trainer.callback_metrics, name
        assert ("val_accuracy" in trainer.callback_metrics) == classifier, name


# -- the command line ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", NEW_TASKS)
@pytest.mark.parametrize("sampler", ["wang_landau", "adam"])
def test_cli_composes_each_task(task, sampler):
    cfg = compose_config([f"task={task}", f"sampler={sampler}"])
    validate(cfg)
    assert cfg.task.name == task and cfg.sampler.kind == sampler
    expected = {"spiral_regression": (30, 2), "tabular": (10, 1), "mnist": (2, 5), "embeddings": (10, 1),
                "char_lm": (16, 1), "modular_arithmetic": (16, 1), "cifar_catdog": (6, 1)}[task]
    assert (cfg.model.width, cfg.model.depth) == expected


def test_cli_builds_tasks_with_the_papers_sizes(tmp_path):
    t = build_task(compose_config(["task=spiral_regression", "task.n_points=200", "model.width=1000"]))
    assert (t.datamodule.n_train, t.datamodule.n_test) == (100, 100) and not t.classifier
    assert _count(t.make_model(0)) == 1_005_001
    t = build_task(compose_config(["task=mnist", "model.width=3"]))
    assert _count(t.make_model(0)) == 646 and t.classifier
    assert t.datamodule.n_train == 250
    m0, m0b, m1 = t.make_model(0), t.make_model(0), t.make_model(1)
    assert torch.equal(m0.net[0].weight, m0b.net[0].weight) and not torch.equal(m0.net[0].weight, m1.net[0].weight)
    t = build_task(compose_config(["task=tabular"]))
    assert _count(t.make_model(0)) == 10 * 10 + 10 + 11
    with pytest.raises(ValueError, match="model.depth=3"):
        build_task(compose_config(["task=mnist", "model.depth=3"]))


def test_cli_house_prices_and_embeddings_by_path():
    t = build_task(compose_config(["task=tabular", f"task.path={_needs(HOUSE)}"]))
    assert (t.datamodule.n_train, t.datamodule.n_test) == (365, 365) and _count(t.make_model(0)) == 3331
    t = build_task(compose_config(["task=embeddings", f"task.path={_needs(POLYMER)}"]))
    assert _count(t.make_model(0)) == 7701


@pytest.mark.parametrize(("task", "path", "match"), [
    ("embeddings", None, "task.path is not set"),
    ("embeddings", "missing.npz", "missing.npz"),
    ("tabular", "missing.csv", "missing.csv"),
])
def test_cli_missing_data_file_fails_before_any_work(tmp_path, task, path, match):
    overrides = [f"task={task}", "sampler=adam", "baseline.epochs=2", "baseline.seeds=[0]", "baseline.parallel=false",
                 "trainer.progress_bar=false", "trainer.threads=0"]
    if path is not None:
        overrides.append(f"task.path={tmp_path / path}")
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=match):
        run(compose_config(overrides), out, echo=lambda _: None)
    assert not out.exists()


def test_cli_regression_run_uses_the_test_loss_axis(tmp_path):
    overrides = ["task=spiral_regression", "trainer.max_steps=2", "trainer.progress_bar=false", "trainer.threads=0",
                 "baseline.epochs=5", "baseline.seeds=[0]", "baseline.parallel=false", "sampler.walkers=4",
                 "sampler.steps_per_lightning_step=5", "sampler.start_steps=5"]
    summary = run(compose_config(overrides), tmp_path, echo=lambda _: None)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["task"] == "spiral_regression" and summary["parameters"] == 1051
    assert on_disk["variables"] == ["ln_train_loss", "ln_test_loss"]


def test_explicit_accuracy_on_a_regression_task_is_an_error_not_a_silent_swap(tmp_path):
    overrides = ["task=spiral_regression", "sampler.variables=[train_loss,test_accuracy]", "sampler.walkers=2",
                 "trainer.max_steps=1", "baseline.enabled=false"]
    with pytest.raises((ConfigError, ValueError), match="accuracy.*not a classifier"):
        run(compose_config(overrides), tmp_path / "out", echo=lambda _: None)
    assert not (tmp_path / "out" / "summary.json").exists()


def test_mnist_cnn_is_alive_at_initialisation_for_every_seed():
    """Constant logits at init (dead ReLU layers) would leave SGD, Adam and the walkers' starts at chance."""
    from lightning_entropy.tasks.mnist import MNISTClassifier, mnist_split

    (x, _), _ = mnist_split(n_train=64, n_test=1)
    for seed in range(6):
        torch.manual_seed(seed)
        with torch.no_grad():
            logits = MNISTClassifier(channels=2)(x)
        assert logits.std(0).mean() > 1e-2, f"seed {seed}: the 2-channel CNN gives the same logits for every image"
