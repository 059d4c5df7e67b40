"""The ``lightning-entropy`` command line: configuration, the main job's files, the baseline, and bad input.

Runs use tiny settings (a few walkers, a few sampler steps, a few baseline epochs) so the whole file takes seconds.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException

from lightning_entropy import Landscape
from lightning_entropy.baseline import BaselineRecorder, load_records, pool, save_records, train_baselines
from lightning_entropy.cli import ConfigError, compose_config, run, validate
from lightning_entropy.cli.job import CURVE_COLUMNS
from lightning_entropy.cli.summary import report_lines
from lightning_entropy.tasks.spiral import SpiralClassifier, SpiralDataModule

SUMMARY_KEYS = {"task", "model", "parameters", "box", "sampler", "steps", "walkers", "walker_steps", "flatness",
                "wall_time_s", "files", "run_dir", "config"}

# A WL run small enough for a unit test: 8 walkers x (3 Lightning steps x 5 sampler steps).
BASE = [
    "trainer.max_steps=3",
    "trainer.progress_bar=false",
    "trainer.threads=0",
    "baseline.epochs=12",
    "baseline.seeds=[0,1]",
    "baseline.parallel=false",
]
TINY = [*BASE, "sampler.walkers=8", "sampler.steps_per_lightning_step=5", "sampler.start_steps=10"]


def _options(group: str) -> list[str]:
    """The options of a config group shipped in the package (every YAML file of ``lightning_entropy/conf/<group>``)."""
    folder = resources.files("lightning_entropy.conf") / group
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_curves(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# -- configuration ---------------------------------------------------------------------------------------------------


def test_groups_ship_the_expected_options():
    assert {"wang_landau", "wang_landau_mc", "entropy_md", "adam", "sgd"} <= set(_options("sampler"))
    assert "spiral" in _options("task")
    assert {"none", "csv"} <= set(_options("logger"))
    assert "default" in _options("trainer")


@pytest.mark.parametrize("task", _options("task"))
@pytest.mark.parametrize("sampler", _options("sampler"))
def test_every_task_sampler_pair_composes_and_validates(task, sampler):
    cfg = compose_config([f"task={task}", f"sampler={sampler}"])
    validate(cfg)
    assert cfg.task.name == task
    assert cfg.sampler.kind == sampler
    assert cfg.model.width >= 1 and cfg.model.depth >= 1
    for key in ("n_train", "n_test", "seed"):
        assert key in cfg.task
    for key in ("max_steps", "max_time"):
        assert key in cfg.trainer
    assert list(cfg.baseline.seeds) and cfg.baseline.epochs >= 1
    if sampler.startswith("wang_landau") or sampler == "entropy_md":
        assert cfg.sampler.walkers >= 1 and "dt" in cfg.sampler and "box" in cfg.sampler
    else:
        assert cfg.sampler.lr > 0


def test_default_main_job_is_the_spiral_with_vectorized_walkers():
    cfg = compose_config([])
    assert (cfg.task.name, cfg.task.n_train, cfg.task.n_test) == ("spiral", 40, 40)
    assert (cfg.model.width, cfg.model.depth) == (6, 3)
    assert cfg.sampler.kind == "wang_landau" and cfg.sampler.walkers >= 128
    # the label-free 1-D walk on the train-loss range that converges here (conf/tuning/spiral_wang_landau.yaml)
    assert list(cfg.sampler.variables) == ["train_loss"] and cfg.sampler.ranges is None
    assert cfg.sampler.start_steps == 150 and cfg.trainer.max_time == "00:00:04:50"
    assert cfg.trainer.max_steps * cfg.sampler.steps_per_lightning_step == 120000
    two_d = compose_config(["experiment=spiral"])  # the 2-D walk on (ln L_train, smoothed test accuracy)
    assert list(two_d.sampler.variables) == ["train_loss", "test_metric"] and two_d.sampler.start_steps == 1000
    assert cfg.baseline.optimizer == "adam" and cfg.baseline.lr == pytest.approx(1e-3)
    assert cfg.logger.kind == "none"


def test_misspelt_key_is_rejected_naming_it():
    with pytest.raises(ConfigCompositionException, match="widht"):
        compose_config(["model.widht=3"])
    with pytest.raises(ConfigCompositionException, match="walkrs"):
        compose_config(["sampler.walkrs=3"])
    # Hydra's append syntax gets past composition; validation (before any work) refuses the unknown key
    with pytest.raises(ConfigError, match=r"model\.widht: unknown key"):
        validate(compose_config(["+model.widht=3"]))
    with pytest.raises(ConfigError, match=r"sampler\.walkrs: unknown key"):
        validate(compose_config(["+sampler.walkrs=3"]))


def test_wrong_type_is_rejected_naming_the_key():
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["sampler.walkers=many"])
    assert "sampler.walkers" in str(err.value) or "walkers" in str(err.value.__cause__)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.width=0", "model.width"),
        ("model.depth=-1", "model.depth"),
        ("task.n_train=1", "task.n_train"),
        ("sampler.walkers=0", "sampler.walkers"),
        ("sampler.start=warm", "sampler.start"),
        ("sampler.friction=2.0", "sampler.friction"),
        ("sampler.dt=0", "sampler.dt"),
        ("trainer.max_time=soon", "trainer.max_time"),
        ("logger.kind=mlflow", "logger.kind"),
        ("baseline.seeds=[]", "baseline.seeds"),
        ("sampler.box=-1.0", "box"),
        ("sampler.window=[[-6.0,-0.5],[0.0,1.0]]", "sampler.window"),
    ],
)
def test_bad_values_fail_before_any_work_naming_the_key(tmp_path, override, key):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run(compose_config([*TINY, override]), out, echo=lambda _: None)
    assert not out.exists()  # nothing was written: the error came before any work


# -- the main job --------------------------------------------------------------------------------------------------


def test_an_advantage_on_a_logit_accuracy_axis_is_named_in_logits(tmp_path):
    """With `sampler.accuracy_axis=logit` the baseline curve is moved onto the landscape's logit axis, so the
    advantage is a difference of logits: the summary, the printed line and a sweep's table say so (a run once
    reported -1.1 as a "smooth_test_accuracy" difference). A summary written before keeps its name in the file, and
    the sweep's table adds the units from its axis label."""
    from lightning_entropy.sweeps import width_table

    lines: list[str] = []
    summary = run(compose_config([*TINY, "experiment=spiral", "sampler.accuracy_axis=logit"]), tmp_path,
                  echo=lines.append)
    adv = summary["advantage"]
    assert summary["axis_labels"][-1].startswith("logit")
    assert adv["metric"] == "logit_smooth_test_accuracy"
    assert summary["baseline"]["metric"] == "smooth_test_accuracy"  # the records themselves stay in accuracy
    assert any("logit_smooth_test_accuracy" in line for line in lines if "advantage" in line)
    older = {**summary, "advantage": {**adv, "metric": "smooth_test_accuracy"}}
    assert width_table([older])[0]["metric"] == "logit_smooth_test_accuracy"
    label_free = {**older, "advantage": {**adv, "metric": "hard_test_accuracy", "readout": "label_free"}}
    assert width_table([label_free])[0]["metric"] == "hard_test_accuracy"


def test_two_axis_run_writes_the_four_files(tmp_path):
    lines: list[str] = []
    summary = run(compose_config([*TINY, "experiment=spiral"]), tmp_path, echo=lines.append)
    for name in ("landscape.npz", "landscape.png", "curves.csv", "summary.json", "baseline.csv"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "landscape.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert SUMMARY_KEYS <= on_disk.keys()
    assert on_disk["task"] == "spiral" and on_disk["model"] == "SpiralClassifier"
    assert on_disk["parameters"] == 116
    assert on_disk["sampler"] == "wang_landau"
    assert on_disk["walkers"] == 8
    assert on_disk["steps"] == 15  # 3 Lightning steps x 5 sampler steps
    assert on_disk["walker_steps"] == 8 * 15
    assert on_disk["box"]["rule"] == "fan_out"
    assert 0.0 < on_disk["flatness"] <= 1.0
    assert on_disk["wall_time_s"] > 0
    assert set(on_disk["files"]) == {"landscape.npz", "landscape.png", "curves.csv", "summary.json", "baseline.csv",
                                     "convergence.png"}
    # convergence figures: three snapshots (every 5 sampler steps = a tenth of the run, at least one chunk)
    conv = on_disk["convergence"]
    assert [h["step"] for h in conv["history"]] == [5, 10, 15]
    assert on_disk["converged"] is False and conv["reasons"]  # 15 steps cannot converge, and the run says so
    assert any("NOT converged" in line for line in lines)
    # the advantage: signed readout minus baseline on the bins both cover, with the bins it used
    adv = on_disk["advantage"]
    assert adv["readout"] == "max_s" and adv["metric"] == "smooth_test_accuracy" and adv["higher_is_better"]
    assert on_disk["mean_advantage"] == adv["mean_advantage"]
    assert set(on_disk["advantage_by_readout"]) == {"max_s", "mean_curve"}
    assert on_disk["variables"] == ["ln_train_loss", "test_accuracy"]
    assert on_disk["test_labels_in_dynamics"] is True
    assert on_disk["baseline"]["records"] == 2 * 12 and on_disk["baseline"]["metric"] == "smooth_test_accuracy"
    assert str(tmp_path.resolve()) in lines[-1]

    landscape = Landscape.load(tmp_path / "landscape.npz")
    assert landscape.walker_steps == 8 * 15 and landscape.ndim == 2
    rows = _read_curves(tmp_path / "curves.csv")
    assert tuple(rows[0].keys()) == CURVE_COLUMNS
    assert len(rows) == landscape.shape[0]
    np.testing.assert_allclose([float(r["ln_train_loss"]) for r in rows], landscape.centers[0])
    assert sum(int(r["visits"]) for r in rows) == int(landscape.histogram.sum())
    x, y_max = landscape.max_entropy_curve(exclude=1)
    np.testing.assert_allclose([float(r["max_s"]) for r in rows], y_max, equal_nan=True)
    # the baseline in curves.csv is the recorded baseline pooled on the landscape's own x bins
    records = load_records(tmp_path / "baseline.csv")
    curve = pool(records, metric="smooth_test_accuracy", edges=landscape.edges[0])
    assert [int(r["baseline_count"]) for r in rows] == curve.count.tolist()
    np.testing.assert_allclose([float(r["baseline_mean"]) for r in rows], curve.mean, equal_nan=True)
    per_bin = np.array([float(r["advantage"]) for r in rows])
    used = np.isfinite(per_bin)
    assert used.sum() == adv["bins"]
    if adv["bins"]:
        np.testing.assert_allclose(per_bin[used], (y_max - curve.mean)[used])
        assert adv["mean_advantage"] == pytest.approx(per_bin[used].mean())
        assert all(int(r["undersampled"]) == 0 for r, u in zip(rows, used) if u)


def test_monte_carlo_run_uses_hard_accuracy_for_axis_and_baseline(tmp_path):
    summary = run(compose_config([*TINY, "sampler=wang_landau_mc"]), tmp_path, echo=lambda _: None)
    assert summary["sampler"] == "wang_landau_mc"
    assert summary["axis_labels"][1] == "A_test"
    assert summary["baseline"]["metric"] == "hard_test_accuracy"
    assert summary["box"]["rule"] == "first_hidden"
    assert (tmp_path / "landscape.png").is_file() and (tmp_path / "landscape.npz").is_file()


def test_main_job_is_a_label_free_walk_with_its_picture(tmp_path, monkeypatch):
    """The main job as composed (shortened): a 1-D walk on its range, the label-free Eq. (1) as the readout, the
    label-free picture S(x) + ln p(y | x) written beside the landscape, no test label in the dynamics."""
    from lightning_entropy import plotting

    drawn, figure = [], plotting.landscape_figure
    monkeypatch.setattr(plotting, "landscape_figure", lambda land, **kw: drawn.append((land, kw)) or figure(land, **kw))
    summary = run(compose_config([*TINY, "trainer.max_steps=40"]), tmp_path, echo=lambda _: None)
    # both figures carry the run's verdict (the not-converged mark, its reasons and the hatched x)
    assert [land.ndim for land, _ in drawn] == [1, 2]
    assert all(kw["convergence"].converged is summary["convergence"]["converged"] for _, kw in drawn)
    assert summary["variables"] == ["ln_train_loss"] and summary["test_labels_in_dynamics"] is False
    assert {"landscape_label_free.npz", "landscape_label_free.png"} <= set(summary["files"])
    landscape = Landscape.load(tmp_path / "landscape.npz")
    assert landscape.ndim == 1
    picture = Landscape.load(tmp_path / "landscape_label_free.npz")
    assert picture.ndim == 2 and picture.shape[0] == landscape.shape[0]
    assert summary["advantage"]["readout"] == "label_free"
    # the main job's mean advantage is over a fixed range, so that two seeds' means cover the same bins
    assert summary["advantage"]["x_range"] == [-2.8, None]
    assert all(v >= -2.8 for v in summary["advantage"]["ln_train_loss"])
    # where the replicas agree: in the summary, and printed as read-able only when R-hat is all the run fails
    conv = summary["convergence"]
    assert {"agreement", "agreement_bins", "rhat_bins"} <= set(conv)
    agreed = dict(summary["advantage"], bins=3, mean_advantage=0.004, mean_advantage_error=0.002,
                  mean_advantage_r_hat=1.01)
    fake = dict(summary, advantage_where_replicas_agree=agreed,
                convergence=dict(conv, converged=False, reasons=["replicas disagree"], tags=["replicas disagree"],
                                 agreement=[-1.1, 2.2], agreement_bins=33, rhat_bins=54))
    text = "\n".join(report_lines(fake))
    assert "agree (R-hat of S and of the readouts) over ln L_train in [-1.10, 2.20], 33 of the 54 bins" in text
    assert "read the landscape there" in text and "there +0.004 ± 0.002 over 3 bins (R-hat 1.010)" in text
    fake["convergence"]["tags"] = ["replicas disagree", "S still moving"]
    text = "\n".join(report_lines(fake))
    assert "fails other tests (S still moving)" in text and "+0.004" not in text


def test_one_axis_landscape_reports_the_unbiased_mean_curve(tmp_path):
    overrides = [*TINY, "sampler.variables=[train_loss]", "sampler.window=[[-10,-0.7]]", "sampler.bin_width=[0.1]"]
    summary = run(compose_config(overrides), tmp_path, echo=lambda _: None)
    assert summary["variables"] == ["ln_train_loss"] and summary["test_labels_in_dynamics"] is False
    assert summary["advantage"]["metric"] == "hard_test_accuracy"
    assert summary["advantage"]["readout"] == "label_free"
    assert set(summary["advantage_by_readout"]) == {"label_free"}
    rows = _read_curves(tmp_path / "curves.csv")
    assert all(r["max_s"] == "nan" for r in rows)
    landscape = Landscape.load(tmp_path / "landscape.npz")
    _, mean = landscape.mean_curve()
    np.testing.assert_allclose([float(r["mean_curve"]) for r in rows], mean, equal_nan=True)


def test_csv_logger_receives_the_sampler_scalars(tmp_path):
    run(compose_config([*TINY, "logger=csv", "trainer.log_every_n_steps=1"]), tmp_path, echo=lambda _: None)
    metrics = list((tmp_path / "logs").rglob("metrics.csv"))
    assert len(metrics) == 1
    header = metrics[0].read_text().splitlines()[0].split(",")
    assert "wl/flatness" in header and "report/flatness" in header


def test_tensorboard_logger_gets_scalars_and_the_heatmap(tmp_path):
    run(compose_config([*TINY, "logger=tensorboard", "trainer.log_every_n_steps=1"]), tmp_path, echo=lambda _: None)
    events = list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    data = b"".join(p.read_bytes() for p in events)
    for tag in (b"wl/flatness", b"wl/acceptance", b"landscape/heatmap", b"report/flatness"):
        assert tag in data, tag


def test_any_other_trainer_argument_reaches_the_samplers_trainer(tmp_path):
    # one full-batch epoch is one Lightning step: max_epochs=1 stops after 5 sampler steps instead of 3 x 5
    summary = run(compose_config([*TINY, "+trainer.max_epochs=1"]), tmp_path, echo=lambda _: None)
    assert summary["steps"] == 5


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+trainer.determinstic=true", "not an argument of lightning.pytorch.Trainer. Did you mean trainer.deterministic"),
        ("+trainer.logger=false", "the job sets this Trainer argument itself; use logger instead"),
        ("trainer.max_steps=abc", "trainer.max_steps='abc'"),
        ("advantage.range=[-1,-2]", "advantage.range=[-1.0, -2.0]: give [lo, hi] with lo < hi"),
        ("advantage.range=[-1]", "advantage.range=[-1.0]: give [lo, hi]"),
    ],
)
def test_trainer_arguments_are_checked_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(compose_config([override]))


def test_window_accepts_integers_and_null_axes():
    from lightning_entropy.cli.job import make_strategy

    cfg = compose_config(["experiment=spiral", "sampler.window=[[-6,-1],null]"])
    validate(cfg)
    assert make_strategy(cfg)._window == [[-6, -1], None]
    assert make_strategy(compose_config(["experiment=spiral", "sampler.window=[null,null]"]))._window is None


@pytest.mark.parametrize(("sampler", "momentum"), [("adam", 0.0), ("sgd", 0.9)])
def test_optimizer_only_run_writes_the_baseline_curve_and_summary(tmp_path, sampler, momentum):
    summary = run(compose_config([*BASE, f"sampler={sampler}"]), tmp_path, echo=lambda _: None)
    assert not (tmp_path / "landscape.npz").exists()
    for name in ("baseline.png", "baseline.csv", "curves.csv", "summary.json"):
        assert (tmp_path / name).is_file(), name
    assert summary["sampler"] == sampler and summary["walkers"] is None and summary["walker_steps"] is None
    assert summary["steps"] == 12  # optimiser steps per seed: 12 full-batch epochs
    assert summary["baseline"]["optimizer"] == sampler
    assert summary["baseline"]["momentum"] == pytest.approx(momentum)
    assert summary["baseline"]["records"] == 2 * 12
    assert summary["baseline"]["metric"] == "hard_test_accuracy"
    rows = _read_curves(tmp_path / "curves.csv")
    assert sum(int(r["baseline_count"]) for r in rows) == 2 * 12
    assert all(math.isclose(float(r["ln_train_loss"]) * 10 % 1, 0.5, abs_tol=1e-6) or
               math.isclose(float(r["ln_train_loss"]) * 10 % 1, -0.5, abs_tol=1e-6) for r in rows)


def test_console_script_is_installed():
    from importlib.metadata import entry_points

    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("lightning-entropy") == "lightning_entropy.cli:main"


def test_main_runs_in_hydra_run_dir_with_the_baseline_in_a_second_process(tmp_path, monkeypatch, capsys):
    """The console entry point end to end (Hydra composes, the run dir comes from hydra.run.dir); the baseline
    trains in a second interpreter beside the sampler, as in the default main job."""
    from lightning_entropy.cli import main

    out = tmp_path / "run"
    argv = [*TINY, "baseline.parallel=true", "baseline.seeds=[3]", f"hydra.run.dir={out}",
            "hydra/job_logging=none", "hydra/hydra_logging=none"]
    monkeypatch.setattr(sys, "argv", ["lightning-entropy", *argv])
    monkeypatch.chdir(tmp_path)
    main()
    for name in ("landscape.npz", "landscape.png", "curves.csv", "summary.json", "baseline.csv"):
        assert (out / name).is_file(), name
    assert not (out / "baseline.log").exists()  # the baseline process succeeded and its log was removed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run_dir"] == str(out.resolve())
    assert summary["baseline"]["records"] == 12 and summary["baseline"]["seeds"] == [3]
    assert {r["seed"] for r in load_records(out / "baseline.csv")} == {3}
    assert (out / ".hydra" / "config.yaml").is_file()
    assert str(out.resolve()) in capsys.readouterr().out


def test_console_entry_point_misspelt_key_fails_naming_it(tmp_path, monkeypatch, capsys):
    from lightning_entropy.cli import main

    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["lightning-entropy", "model.widht=3", f"hydra.run.dir={out}"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code not in (0, None)
    assert "widht" in capsys.readouterr().err
    assert not (out / "summary.json").exists()


def test_console_entry_point_bad_value_exits_with_a_clear_message(tmp_path, monkeypatch, capsys):
    from lightning_entropy.cli import main

    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["lightning-entropy", "model.width=0", f"hydra.run.dir={out}"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "configuration error" in err and "model.width=0" in err
    assert not (out / "summary.json").exists()


# -- the baseline -------------------------------------------------------------------------------------------------------


def test_recorder_matches_an_independent_full_batch_evaluation():
    import lightning.pytorch as pl

    torch.manual_seed(0)
    dm = SpiralDataModule(n_train=30, n_test=20, seed=3, batch_size=8)  # minibatches: the recorder uses full sets
    model = SpiralClassifier(width=4, depth=2, lr=1e-2)
    recorder = BaselineRecorder(seed=7)
    trainer = pl.Trainer(max_epochs=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                         callbacks=[recorder])
    trainer.fit(model, datamodule=dm)
    recorder_records = recorder.records
    assert [r["epoch"] for r in recorder_records] == [1, 2, 3, 4, 5]
    assert {r["seed"] for r in recorder_records} == {7}
    last = recorder_records[-1]
    x, y = dm.train_set.tensors
    xt, yt = dm.test_set.tensors
    with torch.no_grad():
        ln_train = float(torch.nn.functional.cross_entropy(model(x), y).log())
        acc = float((model(xt).argmax(-1) == yt).float().mean())
    assert last["ln_train_loss"] == pytest.approx(ln_train, rel=1e-5)
    assert last["test_metric"] == pytest.approx(acc) and last["hard_test_accuracy"] == pytest.approx(acc)
    assert 0.0 < last["smooth_test_accuracy"] < 1.0


def test_adam_baseline_lowers_the_train_loss():
    dm = SpiralDataModule()
    threads = torch.get_num_threads()
    records = train_baselines(lambda seed: (dm, SpiralClassifier()), seeds=[0], epochs=60, lr=1e-2, threads=1)
    assert torch.get_num_threads() == threads  # restored
    assert len(records) == 60
    assert records[-1]["ln_train_loss"] < records[0]["ln_train_loss"] - 0.1


def test_pool_bins_mean_std_count():
    records = [
        {"ln_train_loss": -1.05, "test_metric": 0.5},
        {"ln_train_loss": -1.01, "test_metric": 0.7},
        {"ln_train_loss": -0.95, "test_metric": 0.9},
        {"ln_train_loss": -3.00, "test_metric": 0.1},  # outside the given edges
        {"ln_train_loss": float("nan"), "test_metric": 0.1},
    ]
    curve = pool(records, edges=[-1.1, -1.0, -0.9])
    assert curve.count.tolist() == [2, 1]
    np.testing.assert_allclose(curve.mean, [0.6, 0.9])
    assert curve.std[0] == pytest.approx(np.std([0.5, 0.7], ddof=1)) and np.isnan(curve.std[1])
    assert curve.dropped == 2
    free = pool(records[:4])  # no edges: 0.1-wide bins aligned to multiples of 0.1
    np.testing.assert_allclose(np.diff(free.edges), 0.1)
    assert np.allclose(np.round(free.edges * 10), free.edges * 10)
    assert free.count.sum() == 4


def test_records_round_trip_through_csv(tmp_path):
    records = [{"seed": 1, "epoch": 2, "ln_train_loss": -1.5, "test_metric": 0.75, "hard_test_accuracy": 0.75,
                "smooth_test_accuracy": 0.6, "ln_test_loss": float("nan")}]
    back = load_records(save_records(records, tmp_path / "b.csv"))
    assert back[0]["seed"] == 1 and back[0]["epoch"] == 2 and back[0]["ln_train_loss"] == -1.5
    assert math.isnan(back[0]["ln_test_loss"])


def test_the_logger_gets_where_the_replicas_agree(tmp_path):
    """The final numbers sent to a Lightning logger include the range where the replicas agree and the advantage
    over it, so that a sweep's runs compare there in the logger too."""
    from lightning_entropy.cli.summary import log_final

    got = {}

    class Logger:
        def log_metrics(self, metrics, step):
            got.update(metrics, step=step)

    summary = {"flatness": 0.3, "walker_steps": 10, "wall_time_s": 1.0, "converged": False, "files": [],
               "convergence": {"agreement": [-1.1, 2.2], "agreement_bins": 33, "rhat_bins": 54},
               "advantage_where_replicas_agree": {"mean_advantage": 0.004}}
    log_final(Logger(), summary, tmp_path, step=3)
    assert got["report/converged"] == 0.0 and got["report/agreement_bins"] == 33.0 and got["step"] == 3
    assert (got["report/agreement_lo"], got["report/agreement_hi"]) == (-1.1, 2.2)
    assert got["report/advantage_where_replicas_agree"] == 0.004
    got.clear()
    log_final(Logger(), dict(summary, convergence={"agreement": None, "agreement_bins": 0, "rhat_bins": 0}), tmp_path,
              step=4)
    assert "report/agreement_bins" not in got and got["report/converged"] == 0.0  # no R-hat: nothing to claim
