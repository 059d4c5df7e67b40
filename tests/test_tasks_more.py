"""The transformer tasks (character-level language model, modular arithmetic) and CIFAR cats vs dogs.

Parameter counts, splits without leakage, the vectorized (vmap) path for the hand-written attention, a few steps of
WLMD, WLMC and SGD on each task, CIFAR's files read without torchvision and a quick clear error without network, and
one command-line run per task. CIFAR runs on generated images of CIFAR's shape (``synthetic``): no network needed.
"""

from __future__ import annotations

import json
import pickle
import socket
import tarfile
import time
import warnings

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

from lightning_entropy import WangLandauStrategy
from lightning_entropy.cli import ConfigError, compose_config, run, validate
from lightning_entropy.cli.tasks import build_task
from lightning_entropy.core.evaluator import Evaluator, FullBatch
from lightning_entropy.core.variables import loss_fn, resolve
from lightning_entropy.core.walkers import ParameterLayout
from lightning_entropy.tasks import cifar_catdog as cifar
from lightning_entropy.tasks.char_lm import UNKNOWN, CharDataModule, CharLanguageModel, stdlib_text
from lightning_entropy.tasks.cifar_catdog import (CIFARCatDogClassifier, CIFARCatDogDataModule, ensure_cifar10,
                                                  layernorm_resnet)
from lightning_entropy.tasks.modular_arithmetic import ModularArithmeticDataModule, ModularArithmeticTransformer
from lightning_entropy.tasks.transformer import TinyTransformer, transformer_parameters


pytestmark = pytest.mark.usefixtures("one_thread")


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _trainer(**kw):
    return Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, **kw)


# -- parameter counts -------------------------------------------------------------------------------------------------


def test_parameter_counts():
    assert _count(layernorm_resnet(6, 1)) == 43_604  # the paper's LayerNorm ResNet, widths 6-12-24-48
    assert _count(CIFARCatDogClassifier(6, 1)) == 43_604
    assert _count(layernorm_resnet(6, 2)) > 2 * 43_604  # depth adds blocks per stage
    assert _count(ModularArithmeticTransformer(23, 16, 1, 2)) == 4135
    for args in ((24, 23, 3, 16, 1), (93, 93, 16, 16, 1), (50, 7, 8, 12, 3)):
        assert _count(TinyTransformer(*args, heads=2)) == transformer_parameters(*args)
    dm = CharDataModule(context=8, n_train=32, n_test=32)
    assert _count(CharLanguageModel(len(dm.vocab), 8, 16, 1, 2)) == transformer_parameters(len(dm.vocab), len(dm.vocab),
                                                                                           8, 16, 1)


def test_bad_heads_and_context_fail_naming_the_value():
    with pytest.raises(ValueError, match="model.heads=3"):
        TinyTransformer(10, 10, 4, width=16, heads=3)
    with pytest.raises(ValueError, match="context 4"):
        TinyTransformer(10, 10, 4)(torch.zeros(2, 5, dtype=torch.long))


# -- data --------------------------------------------------------------------------------------------------------------


def test_default_text_ships_with_python():
    text = stdlib_text()
    assert len(text) > 50_000 and text == stdlib_text()  # deterministic
    assert "Return" in text


def test_char_lm_windows_are_split_by_position_without_leakage():
    dm = CharDataModule(context=8, n_train=100, n_test=80, train_fraction=0.6, seed=3)
    (x, y), (xt, yt) = dm.train_set.tensors, dm.test_set.tensors
    assert x.shape == y.shape == (100, 8) and xt.shape == yt.shape == (80, 8) and x.dtype == torch.long
    assert dm.cut == int(len(dm.text) * 0.6)
    span = 9
    assert int(dm.train_offsets.max()) + span <= dm.cut <= int(dm.test_offsets.min())  # no window crosses the cut
    assert len(set(dm.train_offsets.tolist())) == 100 and bool((dm.train_offsets.diff() >= span).all())  # disjoint
    for i in (0, 57):
        o = int(dm.train_offsets[i])
        assert dm.decode(x[i]) == dm.text[o:o + 8] and dm.decode(y[i]) == dm.text[o + 1:o + 9]  # next character
    torch.testing.assert_close(x[:, 1:], y[:, :-1])
    assert set(dm.text[:dm.cut]) == set(dm.vocab[1:])  # vocabulary: the train part's characters
    other = CharDataModule(context=8, n_train=100, n_test=80, train_fraction=0.6, seed=4)
    assert not torch.equal(other.train_offsets, dm.train_offsets)


def test_char_lm_unknown_token_and_path(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("abcab" * 40 + ("xyz" * 70)[:200])  # x, y, z only after the cut at 200
    dm = CharDataModule(path=str(path), context=4, n_train=10, n_test=10, train_fraction=0.5)
    assert dm.vocab == UNKNOWN + "abc" and dm.source == str(path)
    assert bool((dm.test_set.tensors[0] == 0).all())  # test-only characters map to the unknown token
    with pytest.raises(ValueError, match="task.n_train=1000"):
        CharDataModule(path=str(path), context=4, n_train=1000, n_test=10)
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        CharDataModule(path=str(tmp_path / "nowhere.txt"))


def test_module_loss_is_the_samplers_cross_entropy():
    dm = CharDataModule(context=8, n_train=16, n_test=16)
    model = CharLanguageModel(len(dm.vocab), 8, 16, 1, 2)
    x, y = dm.train_set.tensors
    out = model(x)
    assert out.shape == (16, 8, len(dm.vocab))
    torch.testing.assert_close(model.compute_loss(out, y), loss_fn("cross_entropy")(out, y))
    # the sampler's accuracy is next-character accuracy over every position
    hard = resolve("test_accuracy", loss="cross_entropy", monte_carlo=True).fn(out, y)
    torch.testing.assert_close(hard, (out.argmax(-1) == y).float().mean())


@pytest.mark.parametrize(("p", "fraction"), [(7, 0.3), (11, 0.5), (23, 0.8)])
def test_modular_arithmetic_split_follows_train_fraction(p, fraction):
    dm = ModularArithmeticDataModule(modulus=p, train_fraction=fraction, seed=1)
    assert dm.n_train == round(fraction * p * p) and dm.n_train + dm.n_test == p * p
    (x, y), (xt, yt) = dm.train_set.tensors, dm.test_set.tensors
    pairs = {tuple(r) for r in torch.cat([x, xt])[:, :2].tolist()}
    assert len(pairs) == p * p  # every pair once: disjoint splits that cover the table
    assert bool((x[:, 2] == p).all()) and torch.equal(y, (x[:, 0] + x[:, 1]) % p)
    assert torch.equal(yt, (xt[:, 0] + xt[:, 1]) % p)
    with pytest.raises(ValueError, match="task.train_fraction=1.0"):
        ModularArithmeticDataModule(modulus=p, train_fraction=1.0)


def test_cifar_synthetic_has_cifars_shape():
    dm = CIFARCatDogDataModule(n_train=12, n_test=10, synthetic=True)
    (x, y), (xt, yt) = dm.train_set.tensors, dm.test_set.tensors
    assert x.shape == (12, 3, 32, 32) and xt.shape == (10, 3, 32, 32) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert set(y.tolist()) | set(yt.tolist()) == {0, 1}
    assert CIFARCatDogClassifier(2, 1)(x[:3]).shape == (3, 2)


def _fake_cifar(folder, per_batch: int = 20):
    """Five training batches in CIFAR-10's pickle format with classes 0..9 in turn; returns the expected cats/dogs."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(1, 6):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        classes = [(k + i) % 10 for k in range(per_batch)]
        with open(folder / f"data_batch_{i}", "wb") as fh:
            pickle.dump({b"data": data, b"labels": classes}, fh)
        keep = [k for k, c in enumerate(classes) if c in (3, 5)]
        images.append(data[keep])
        labels += [int(classes[k] == 5) for k in keep]
    return np.concatenate(images).reshape(-1, 3, 32, 32), np.array(labels)


@pytest.mark.parametrize("packed", [False, True])
def test_cifar_files_are_read_without_torchvision(tmp_path, packed):
    source = tmp_path / "src" if packed else tmp_path / "root"
    images, labels = _fake_cifar(source / cifar.FOLDER)
    if packed:  # only the archive in root: it is extracted there
        (tmp_path / "root").mkdir()
        with tarfile.open(tmp_path / "root" / cifar.ARCHIVE, "w:gz") as tar:
            tar.add(source / cifar.FOLDER, arcname=cifar.FOLDER)
    dm = CIFARCatDogDataModule(root=str(tmp_path / "root"), n_train=12, n_test=8, seed=2, download=False)
    assert (tmp_path / "root" / cifar.FOLDER / "data_batch_5").is_file()
    x, y = dm.train_set.tensors
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(2))[:20]
    np.testing.assert_allclose(x.numpy(), images[order[:12].numpy()] / 255.0, rtol=0, atol=1e-6)
    assert y.tolist() == labels[order[:12].numpy()].tolist()
    with pytest.raises(ValueError, match="holds only 20"):
        CIFARCatDogDataModule(root=str(tmp_path / "root"), n_train=15, n_test=15, download=False)


def test_cifar_without_network_fails_quickly_with_where_to_put_the_files(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "CIFAR_URL", "https://192.0.2.1/cifar-10-python.tar.gz")  # TEST-NET: unroutable
    monkeypatch.setattr(cifar, "CONNECT_TIMEOUT_S", 1.0)
    t = time.perf_counter()
    with pytest.raises(ConnectionError) as err:
        ensure_cifar10(tmp_path / "data")
    assert time.perf_counter() - t < 5
    message = str(err.value)
    for needle in ("192.0.2.1", "task.root", cifar.ARCHIVE, cifar.FOLDER, "task.synthetic=true",
                   str(tmp_path / "data")):
        assert needle in message, needle

    def refuse(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(ConnectionError, match="Network is unreachable"):
        ensure_cifar10(tmp_path / "data")
    with pytest.raises(FileNotFoundError, match="task.root"):
        ensure_cifar10(tmp_path / "data", download=False)
    # through the command line: a configuration error before any work, nothing written
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="cannot be downloaded"):
        run(compose_config(["task=cifar_catdog", f"task.root={tmp_path / 'data'}", "sampler=adam",
                            "baseline.parallel=false"]), out, echo=lambda _: None)
    assert not out.exists()


# -- the vectorized path ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["char_lm", "modular_arithmetic", "cifar_catdog"])
def test_networks_are_evaluated_by_vmap_and_match_the_loop(task):
    torch.manual_seed(0)
    if task == "char_lm":
        dm = CharDataModule(context=8, n_train=12, n_test=10)
        model = CharLanguageModel(len(dm.vocab), 8, 8, 2, 2)
    elif task == "modular_arithmetic":
        dm = ModularArithmeticDataModule(modulus=5, train_fraction=0.6)
        model = ModularArithmeticTransformer(5, 8, 2, 2)
    else:
        dm = CIFARCatDogDataModule(n_train=4, n_test=4, synthetic=True)
        model = CIFARCatDogClassifier(4, 1)
    data = FullBatch(dm.train_set.tensors, dm.test_set.tensors)
    layout = ParameterLayout.of(model)
    cvs = [resolve(n, loss="cross_entropy") for n in ("train_loss", "test_accuracy")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the per-walker fallback warns (and so do vmap's slow fallbacks)
        fast = Evaluator(model, layout, data, cvs, vectorize="auto")
    assert fast.vectorized and fast._chain is None
    slow = Evaluator(model, layout, data, cvs, vectorize=False)
    theta = layout.flatten(model) + 0.05 * torch.randn(3, layout.numel, generator=torch.Generator().manual_seed(0))
    bias = lambda cv: (cv.sum(1), torch.ones_like(cv))  # noqa: E731
    v1, _, g1 = fast.value_and_grad(theta, bias)
    v2, _, g2 = slow.value_and_grad(theta, bias)
    torch.testing.assert_close(v1, v2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5 * float(g2.abs().max()))  # float32 summation order
    assert float(g1.abs().sum()) > 0


# -- every task samples and trains ------------------------------------------------------------------------------------


def _small(name):
    if name == "char_lm":
        dm = CharDataModule(context=8, n_train=16, n_test=16)
        return dm, lambda: CharLanguageModel(len(dm.vocab), 8, 8, 1, 2)
    if name == "modular_arithmetic":
        return ModularArithmeticDataModule(modulus=7), lambda: ModularArithmeticTransformer(7, 8, 1, 2)
    return CIFARCatDogDataModule(n_train=8, n_test=8, synthetic=True), lambda: CIFARCatDogClassifier(4, 1)


@pytest.mark.parametrize("name", ["char_lm", "modular_arithmetic", "cifar_catdog"])
def test_every_task_runs_wlmd_wlmc_and_sgd(name):
    dm, make = _small(name)
    for sampler in ("md", "mc"):
        torch.manual_seed(0)
        model = make()
        strategy = WangLandauStrategy(sampler=sampler, walkers=3, steps_per_lightning_step=4, start="uniform", seed=1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _trainer(strategy=strategy, max_steps=2, limit_val_batches=0).fit(model, datamodule=dm)
        slow = [str(w.message) for w in caught if "vmap cannot trace" in str(w.message)
                or "performance drop" in str(w.message)]  # the per-walker fallback, or a vmap op without batching rule
        assert not slow, (name, slow)
        land = strategy.landscape
        assert land.names == ("ln_train_loss", "test_accuracy"), (name, sampler)
        assert land.metadata["vectorized"] and land.metadata["parameters"] == _count(model), (name, sampler)
        assert land.walker_steps == 3 * 8 and np.isfinite(land.histogram).all(), (name, sampler)
        assert land.histogram.sum() > 0, (name, sampler)

    torch.manual_seed(0)
    model = make()
    model.optimizer = "sgd"
    model.hparams.lr = 0.02
    x, y = dm.train_set.tensors
    with torch.no_grad():
        before = float(model.compute_loss(model(x), y))
    trainer = _trainer(max_steps=5, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 5 and isinstance(trainer.optimizers[0], torch.optim.SGD)
    assert {"val_loss", "val_accuracy"} <= set(trainer.callback_metrics)
    with torch.no_grad():
        assert float(model.compute_loss(model(x), y)) < before, name  # full-batch gradient descent


# -- the command line -----------------------------------------------------------------------------------------------


TINY = ["trainer.max_steps=2", "trainer.progress_bar=false", "trainer.threads=0", "baseline.epochs=3",
        "baseline.seeds=[0]", "baseline.parallel=false", "sampler.walkers=3", "sampler.steps_per_lightning_step=4",
        "sampler.start_steps=4"]
CLI_TASKS = {
    "char_lm": (["task.context=8", "task.n_train=16", "task.n_test=16", "model.width=8"], 16, 1),
    "modular_arithmetic": (["task.modulus=7", "model.width=8"], 16, 1),
    "cifar_catdog": (["task.synthetic=true", "task.n_train=8", "task.n_test=8", "model.width=4",
                      "task.batch_size=4"], 6, 1),
}


@pytest.mark.parametrize("task", sorted(CLI_TASKS))
def test_cli_runs_each_task(tmp_path, task):
    extra, width, depth = CLI_TASKS[task]
    default = compose_config([f"task={task}"])
    validate(default)
    assert (default.model.width, default.model.depth) == (width, depth)
    summary = run(compose_config([f"task={task}", *TINY, *extra]), tmp_path, echo=lambda _: None)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["task"] == task and on_disk["data"]["name"] == task
    assert on_disk["variables"] == ["ln_train_loss", "test_accuracy"]
    assert on_disk["parameters"] == _count(build_task(compose_config([f"task={task}", *extra])).make_model(0))
    assert on_disk["baseline"]["optimizer"] == default.baseline.optimizer  # the task's own baseline setting
    assert on_disk["baseline"]["records"] == 3
    for name in ("landscape.npz", "landscape.png", "curves.csv", "baseline.csv"):
        assert (tmp_path / name).is_file(), name
    assert summary["walker_steps"] == 3 * 8
    # the task's box rule (sampler.box is null): c = 4 for the transformers, the paper's c = 2 for the ResNet
    assert on_disk["box"] == {"rule": "fan_out", "c": 2.0 if task == "cifar_catdog" else 4.0}


def test_task_baseline_settings_yield_to_the_command_line():
    cfg = compose_config(["task=cifar_catdog"])
    assert (cfg.baseline.optimizer, cfg.baseline.lr, cfg.baseline.momentum) == ("sgd", 1e-2, 0.9)
    assert compose_config(["task=cifar_catdog", "baseline.lr=0.5"]).baseline.lr == 0.5
    assert compose_config(["task=char_lm"]).baseline.lr == pytest.approx(3e-3)
    assert compose_config([]).baseline.lr == pytest.approx(1e-3)  # the spiral keeps the global default


def test_box_is_sampler_box_else_task_box_else_the_samplers_default():
    from lightning_entropy.cli.job import box_rule

    assert box_rule(compose_config(["task=modular_arithmetic"])) == "fan_out:4"
    assert box_rule(compose_config(["task=modular_arithmetic", "sampler.box=0.5"])) == 0.5
    assert box_rule(compose_config(["task=char_lm", "sampler=wang_landau_mc"])) == "fan_out:4"
    assert box_rule(compose_config(["task=spiral"])) == "fan_out"
    assert box_rule(compose_config(["task=spiral", "sampler=wang_landau_mc"])) == "first_hidden"
    assert box_rule(compose_config(["task=spiral", "task.box=fan_out:3"])) == "fan_out:3"


@pytest.mark.parametrize(("overrides", "key"), [
    (["task=char_lm", "task.box=fan_in"], "task.box"),
    (["task=spiral", "model.heads=2"], "model.heads"),
    (["task=char_lm", "model.heads=3"], "model.heads=3"),
    (["task=modular_arithmetic", "task.train_fraction=1.5"], "task.train_fraction"),
    (["task=modular_arithmetic", "task.modulus=1"], "task.modulus"),
    (["task=char_lm", "task.context=0"], "task.context"),
    (["task=modular_arithmetic", "task.n_train=100"], "task.n_train"),
])
def test_bad_task_values_fail_before_any_work(tmp_path, overrides, key):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run(compose_config([*overrides, "sampler=adam", "baseline.parallel=false"]), out, echo=lambda _: None)
    assert not out.exists()
