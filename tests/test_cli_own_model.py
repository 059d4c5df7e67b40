"""Your own model from the command line: ``model._target_`` / ``datamodule._target_`` (Hydra instantiate), with every
feature of the built-in tasks (sampler, baseline, report, loggers); the built-in tasks name their classes the same way.

The module is ``tests/lit_docs.py``, written as Lightning's docs write one: no ``loss_fn``, ``F.cross_entropy``
inline, ``self.log`` in both steps, minibatch loaders.
"""

import json
import math
import sys
from importlib import import_module
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightning_entropy import Landscape
from lightning_entropy.baseline import load_records
from lightning_entropy.cli import ConfigError, compose_config, run, validate
from lightning_entropy.cli.main import objective
from lightning_entropy.cli.tasks import TARGETS

pytestmark = pytest.mark.usefixtures("one_thread")

TESTS = Path(__file__).resolve().parent
OWN = ["model._target_=lit_docs.LitClassifier", "datamodule._target_=lit_docs.XorData", "+model.hidden=6"]
TINY = ["trainer.max_steps=3", "trainer.progress_bar=false", "trainer.threads=0", "baseline.epochs=6",
        "baseline.seeds=[0,1]", "baseline.parallel=false", "sampler.walkers=8", "sampler.steps_per_lightning_step=5",
        "sampler.start_steps=10"]


def test_own_module_and_data_get_the_landscape_the_baseline_and_the_report(tmp_path):
    summary = run(compose_config([*OWN, *TINY]), tmp_path, echo=lambda _: None)
    assert summary["task"] == "XorData" and summary["model"] == "LitClassifier"
    assert summary["parameters"] == 2 * 6 + 6 + 6 * 2 + 2
    # the contract found the inline cross-entropy: the main job's label-free walk records the held-out accuracy,
    # vectorized, against a baseline of the same metric
    assert summary["variables"] == ["ln_train_loss"] and summary["test_labels_in_dynamics"] is False
    assert Landscape.load(tmp_path / "landscape.npz").metadata["vectorized"] is True
    assert summary["baseline"]["metric"] == "hard_test_accuracy" and summary["baseline"]["records"] == 2 * 6
    records = load_records(tmp_path / "baseline.csv")
    assert all(math.isfinite(r["ln_train_loss"]) and 0 <= r["hard_test_accuracy"] <= 1 for r in records)
    assert set(summary["advantage_by_readout"]) == {"label_free"}
    two_d = run(compose_config([*OWN, *TINY, "experiment=spiral"]), tmp_path / "2d", echo=lambda _: None)
    assert two_d["variables"] == ["ln_train_loss", "test_accuracy"]  # the accuracy axis of the 2-D walk
    assert set(two_d["advantage_by_readout"]) == {"max_s", "mean_curve"}
    data = summary["data"]
    assert data["datamodule"] == "lit_docs.XorData" and data["model_arguments"] == {"hidden": 6}
    assert data["task_knobs_not_passed"] == ["width", "depth", "heads"]  # LitClassifier takes none of them
    for name in ("landscape.npz", "landscape.png", "convergence.png", "curves.csv", "baseline.csv", "summary.json"):
        assert (tmp_path / name).is_file(), name


def test_a_value_the_module_logs_is_an_axis_and_the_report_says_why_there_is_no_advantage(tmp_path):
    lines = []
    summary = run(compose_config([*OWN, *TINY, "sampler.variables=[train_loss,val_acc]"]), tmp_path, echo=lines.append)
    assert summary["variables"] == ["ln_train_loss", "val_acc"]  # validation_step's self.log("val_acc", ...)
    assert summary["mean_advantage"] is None and "'val_acc' has no baseline counterpart" in summary["no_advantage"]
    assert any(line.startswith("  no advantage: the landscape's held-out axis 'val_acc'") for line in lines)


def test_own_model_on_a_built_in_tasks_data(tmp_path):
    summary = run(compose_config(["model._target_=lit_docs.LitClassifier", *TINY]), tmp_path, echo=lambda _: None)
    assert summary["task"] == "spiral" and summary["data"]["n_train"] == 40  # the spiral task's split
    assert summary["model"] == "LitClassifier" and summary["parameters"] == 2 * 8 + 8 + 8 * 2 + 2  # hidden=8
    assert summary["baseline"]["records"] == 2 * 6


def test_console_script_with_own_module_baseline_in_a_second_process(tmp_path, monkeypatch, capsys):
    """The console entry point from a directory that holds the module (as a user runs it): the job and the baseline
    process both import it, and the summary lands in main.log."""
    from lightning_entropy.cli import main

    out = tmp_path / "run"
    monkeypatch.chdir(TESTS)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != TESTS])
    sys.modules.pop("lit_docs", None)
    argv = [*OWN, *TINY, "baseline.parallel=true", "baseline.seeds=[3]", f"hydra.run.dir={out}"]
    monkeypatch.setattr(sys, "argv", ["lightning-entropy", *argv])
    main()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "LitClassifier" and summary["baseline"]["records"] == 6
    assert {r["seed"] for r in load_records(out / "baseline.csv")} == {3}
    assert "lightning-entropy: XorData, LitClassifier" in (out / "main.log").read_text()
    assert str(out.resolve()) in capsys.readouterr().out


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model._target_=lit_docs.Missing"], r"model\._target_='lit_docs\.Missing': cannot import it"),
        (["model._target_=no_such_package.Module"], r"model\._target_=.*cannot import it.*No module named"),
        (["model._target_=lit_docs.NotAModule"], r"builds a NotAModule, not a lightning\.pytorch.*LightningModule"),
        (["model._target_=lit_docs.LitClassifier", "+model.hiden=4"],
         r"model\.hiden=4: lit_docs\.LitClassifier takes no argument 'hiden' \(its arguments: hidden, lr\)"),
        (["model._target_=lit_docs.LitClassifier", "+model.hidden=-3"], r"LitClassifier\(hidden=-3\) failed"),
        (["datamodule._target_=lit_docs.XorData"], r"give model\._target_=<your LightningModule> too"),
        (["model._target_=LitClassifier"], r"model\._target_='LitClassifier': give the import path"),
    ],
)
def test_bad_targets_fail_before_any_work_naming_the_key(tmp_path, overrides, message):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=message):
        run(compose_config([*overrides, *TINY]), out, echo=lambda _: None)
    assert not out.exists()


def test_extra_keys_are_constructor_arguments_only_for_a_class_of_ones_own():
    validate(compose_config(["model._target_=lit_docs.LitClassifier", "+model.hidden=3"]))
    with pytest.raises(ConfigError, match=r"model\.hidden: unknown key"):
        validate(compose_config(["+model.hidden=3"]))  # the spiral task's model has no such knob
    with pytest.raises(ConfigError, match=r"datamodule\.n_val: unknown key"):
        validate(compose_config(["+datamodule.n_val=3"]))


@pytest.mark.parametrize("task", sorted(TARGETS))
def test_every_task_names_its_classes_as_targets(task):
    cfg = compose_config([f"task={task}"])
    assert (cfg.model._target_, cfg.datamodule._target_) == TARGETS[task]
    for target in TARGETS[task]:
        module, name = target.rsplit(".", 1)
        assert hasattr(import_module(module), name), target
    assert OmegaConf.select(cfg, "model.width") >= 1  # the task's own knobs stay (task=mnist model.width=8)


def test_the_objective_for_sweepers_is_the_mean_advantage():
    assert objective({"mean_advantage": 0.25}) == 0.25
    assert objective({"mean_advantage": None, "test_metric_gain": -0.1}) == -0.1
    assert math.isnan(objective({"mean_advantage": None}))


def test_the_task_function_returns_the_objective_to_the_sweeper(tmp_path, monkeypatch):
    """What Hydra's launcher hands a sweeper (Optuna, Ax): the task function's return value, the summary's
    mean advantage."""
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from lightning_entropy.cli.config import register_configs

    main_module = sys.modules["lightning_entropy.cli.main"]
    register_configs()
    with initialize_config_module(config_module="lightning_entropy.conf", version_base=None):
        cfg = compose(config_name="config", overrides=[*OWN, *TINY], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # restored after the test
    HydraConfig.instance().set_config(cfg)
    monkeypatch.chdir(tmp_path)
    with open_dict(cfg):
        del cfg["hydra"]
    value = main_module._hydra_main.__wrapped__(cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert value == objective(summary) or (math.isnan(value) and summary["mean_advantage"] is None)
    assert isinstance(value, float)
