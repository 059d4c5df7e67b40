"""LandscapeLogger: images at a cadence, curves and the npz at the end, for W&B (offline), TensorBoard-less CSV."""

import csv

import numpy as np
import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from lightning_entropy import WangLandauStrategy
from lightning_entropy.callbacks import LandscapeLogger
from lightning_entropy.tasks import SpiralClassifier, SpiralDataModule


def _fit(logger, every=2, steps=4):
    strategy = WangLandauStrategy(walkers=8, steps_per_lightning_step=10, start="uniform")
    trainer = Trainer(strategy=strategy, max_steps=steps, accelerator="cpu", logger=logger, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                      callbacks=[LandscapeLogger(every_n_steps=every)], log_every_n_steps=1)
    trainer.fit(SpiralClassifier(), datamodule=SpiralDataModule())
    return strategy


def test_csv_logger_gets_images_curves_and_npz(tmp_path):
    logger = CSVLogger(tmp_path, name="run")
    strategy = _fit(logger)
    folder = tmp_path / "run" / "version_0"
    images = sorted(p.name for p in (folder / "landscape_images").glob("*.png"))
    assert images == ["step_0000002.png", "step_0000004.png"]  # every 2 steps; the end coincides with step 4
    with open(folder / "landscape_curves.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == strategy.landscape.shape[0]
    assert {"ln_train_loss", "visits", "max_entropy_test_accuracy", "mean_test_accuracy"} <= set(rows[0])
    assert sum(float(r["visits"]) for r in rows) == strategy.landscape.histogram.sum()
    from lightning_entropy import Landscape

    np.testing.assert_array_equal(Landscape.load(folder / "landscape.npz").entropy, strategy.landscape.entropy)
    metrics = (folder / "metrics.csv").read_text()
    assert "wl/factor" in metrics and "wl/flatness" in metrics and "wl/acceptance" in metrics


def test_wandb_offline_run_holds_image_table_and_artifact(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(project="lightning-entropy-test", save_dir=str(tmp_path), offline=True, group="sweep-1")
    _fit(logger, every=2, steps=2)
    run_dir = logger.experiment.dir
    wandb.finish()
    wandb.teardown()  # the service writes the offline run's log asynchronously: let it finish before reading it
    files = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()]
    images = [f for f in files if "media/images/landscape/heatmap" in f and f.endswith(".png")]
    assert len(images) == 1, files  # step 2 (the cadence) and the end are the same step: logged once
    assert any("media/table/landscape/curves" in f and f.endswith(".table.json") for f in files), files
    run_file = next(tmp_path.rglob("run-*.wandb"))
    assert b"landscape-" in run_file.read_bytes()  # the artifact was logged to the run
    staged = [p for p in (tmp_path / "wandb_data_dir").rglob("*") if p.is_file() and p.read_bytes()[:2] == b"PK"]
    assert staged, "the landscape npz was not staged as an artifact file"
    with np.load(staged[0]) as npz:
        assert "entropy" in npz.files and "json" in npz.files
    assert run_dir
