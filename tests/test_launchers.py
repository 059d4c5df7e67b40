"""Hydra launchers for grids of runs: the shipped presets compose with the command line's configuration."""

import pytest
from hydra import compose, initialize_config_module

from lightning_entropy.cli import register_configs

pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
SLURM = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


def _launcher(*overrides: str):
    register_configs()
    with initialize_config_module(config_module="lightning_entropy.conf", version_base=None):
        cfg = compose(config_name="config", overrides=["model.width=3", *overrides], return_hydra_config=True)
    assert cfg.model.width == 3  # the run's own configuration is unchanged by the launcher
    return cfg.hydra.launcher


def test_joblib_and_the_local_preset_run_a_grid_in_parallel_processes():
    assert _launcher("hydra/launcher=joblib")._target_ == JOBLIB
    local = _launcher("hydra/launcher=local")
    assert local._target_ == JOBLIB
    assert local.n_jobs == 2 and local.backend == "loky"
    assert _launcher("hydra/launcher=local", "hydra.launcher.n_jobs=6").n_jobs == 6


def test_slurm_preset_submits_one_job_per_run_with_overridable_resources():
    slurm = _launcher("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=1")
    assert slurm._target_ == SLURM
    assert slurm.partition == "gpu" and slurm.gpus_per_node == 1
    assert slurm.tasks_per_node == 1 and slurm.cpus_per_task == 4 and slurm.timeout_min == 240
    assert slurm.submitit_folder.endswith(".submitit/%j")  # inside the sweep directory
