"""Progress and logging as Lightning users expect: one bar over sampler steps, no minibatch fetched per Lightning step,
the sampler's scalars in every logger at every Lightning step, the full configuration and the run's files in the
logger from the command line."""

import json
import sys

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from lightning_entropy import WangLandauStrategy
from lightning_entropy.callbacks import SamplerProgressBar
from lightning_entropy.cli import compose_config, run
from lightning_entropy.cli.naming import run_name
from lightning_entropy.tasks import SpiralClassifier, SpiralDataModule

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["trainer.max_steps=3", "trainer.progress_bar=false", "trainer.threads=0", "baseline.epochs=4",
        "baseline.seeds=[0]", "baseline.parallel=false", "sampler.walkers=8", "sampler.steps_per_lightning_step=5",
        "sampler.start_steps=5"]


def _fit(strategy, *, max_steps=3, datamodule=None, **kw):
    kw.setdefault("logger", False)
    kw.setdefault("enable_progress_bar", False)
    trainer = Trainer(strategy=strategy, max_steps=max_steps, accelerator="cpu", enable_checkpointing=False,
                      enable_model_summary=False, **kw)
    trainer.fit(SpiralClassifier(), datamodule=datamodule or SpiralDataModule())
    return trainer


def test_the_bar_counts_sampler_steps_to_a_known_total_and_shows_the_wl_figures(capsys):
    bar = SamplerProgressBar()
    trainer = _fit(WangLandauStrategy(walkers=8, steps_per_lightning_step=5), max_steps=4, callbacks=[bar],
                   enable_progress_bar=True)
    out = capsys.readouterr().out
    assert trainer.progress_bar_callback is bar  # it replaces Lightning's per-epoch bar
    assert bar.bar.n == bar.bar.total == 20 == trainer.strategy.sampler_steps  # 4 Lightning steps x 5
    assert "/20 " in out and "Epoch" not in out
    for figure in ("factor=", "flatness=", "acceptance=", "x_min="):
        assert figure in out, figure


def test_with_max_time_the_total_is_what_the_rate_reaches_by_then():
    bar = SamplerProgressBar()
    trainer = Trainer(strategy=WangLandauStrategy(walkers=8, steps_per_lightning_step=5), max_steps=10**6,
                      max_time={"seconds": 2}, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_model_summary=False, callbacks=[bar])
    expected = []
    original = bar.on_train_batch_end

    def spy(trainer, *args):
        original(trainer, *args)
        expected.append(bar.bar.total)

    bar.on_train_batch_end = spy
    trainer.fit(SpiralClassifier(), datamodule=SpiralDataModule())
    assert trainer.global_step < 10**6
    assert all(total < 5 * 10**6 for total in expected[1:])  # not the step limit: the time cap comes first
    assert bar.bar.n == trainer.strategy.sampler_steps


class CountingLoader:
    """A minibatch loader that counts the batches it yields."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader, self.fetched = loader, 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.fetched += 1
            yield batch


def test_no_minibatch_is_fetched_per_lightning_step():
    dm = SpiralDataModule()
    train = CountingLoader(DataLoader(dm.train_set, batch_size=10))  # 4 batches
    val = DataLoader(dm.test_set, batch_size=40)
    strategy = WangLandauStrategy(walkers=8, steps_per_lightning_step=5)
    trainer = Trainer(strategy=strategy, max_steps=9, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(SpiralClassifier(), train, val)
    assert trainer.global_step == 9 and strategy.sampler_steps == 45
    assert train.fetched == 4  # the sampler read the whole train set once; the 9 Lightning steps fetched nothing
    assert len(strategy._evaluator.data.train[0]) == 40


def test_the_sampler_scalars_reach_the_logger_at_every_lightning_step(tmp_path):
    logger = CSVLogger(tmp_path, name="logs")
    _fit(WangLandauStrategy(walkers=8, steps_per_lightning_step=5), max_steps=3, logger=logger,
         log_every_n_steps=50)  # Lightning alone would log none of the 3 steps
    rows = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    steps = [r.split(",")[header.index("step")] for r in rows[1:] if r.split(",")[header.index("wl/flatness")]]
    assert steps == ["0", "1", "2"]
    assert {"wl/factor", "wl/acceptance", "wl/x_min", "wl/walker_steps"} <= set(header)


def test_run_name_is_made_of_the_overrides_that_change_the_results():
    assert run_name(["task=mnist", "model.width=8", "hydra.run.dir=/x", "logger=wandb", "resume=/y"]) == (
        "model.width=8,task=mnist")
    assert run_name([]) == "default" and run_name(None) == "default"
    assert len(run_name([f"+model.k{i}={i}" for i in range(100)])) <= 128


def test_csv_logger_gets_the_full_config_and_a_run_name_from_the_overrides(tmp_path):
    overrides = [*TINY, "logger=csv", "model.width=5"]
    summary = run(compose_config(overrides), tmp_path, echo=lambda _: None, overrides=overrides)
    assert summary["run_name"] == run_name(overrides)
    folders = list((tmp_path / "logs").iterdir())
    assert [f.name for f in folders] == [run_name(overrides)]  # the version folder is the run name
    import yaml

    hparams = yaml.safe_load((folders[0] / "hparams.yaml").read_text())
    assert hparams["sampler"]["walkers"] == 8 and hparams["model"]["width"] == 5
    assert hparams["baseline"]["epochs"] == 4 and hparams["trainer"]["max_steps"] == 3
    assert hparams["task"]["name"] == "spiral" and "datamodule" in hparams
    metrics = (folders[0] / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    assert sum(1 for r in metrics[1:] if r.split(",")[header.index("wl/flatness")]) == 3  # log_every_n_steps=10


def test_wandb_offline_gets_the_config_the_name_and_the_files(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    overrides = [*TINY, "logger=wandb"]
    summary = run(compose_config(overrides), tmp_path, echo=lambda _: None, overrides=["model.width=6", "seed=1"])
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = runs[0] / "files"
    for name in ("summary.json", "landscape.npz", "convergence.png", "curves.csv"):
        assert (files / name).is_file(), name
    assert json.loads((files / "summary.json").read_text())["walkers"] == summary["walkers"] == 8
    wandb.teardown()  # the service writes the offline run's log asynchronously: let it finish
    log = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))
    assert b"model.width=6,seed=1" in log  # the run name
    assert b"steps_per_lightning_step" in log and b"start_budget" in log  # the whole sampler config
    assert b"converged" in log and b"stopped_by" in log  # the headline numbers in the run's summary


def test_main_log_holds_the_report(tmp_path, monkeypatch, capsys):
    from lightning_entropy.cli import main

    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["lightning-entropy", *TINY, f"hydra.run.dir={out}"])
    monkeypatch.chdir(tmp_path)
    main()
    log = (out / "main.log").read_text()
    stdout = capsys.readouterr().out
    for line in ("lightning-entropy: spiral, SpiralClassifier", "advantage of the label-free Eq. (1)", "run directory"):
        assert line in log and line in stdout, line
    assert log.count("run directory") == 1
    assert stdout.count("run directory:") == 1  # printed once, not again by the log's console handler
