"""Experiment presets: one per paper figure, at CPU scale and at paper scale; every one composes and validates."""

from importlib import resources

import pytest
from hydra import compose, initialize_config_module

from lightning_entropy.cli import ConfigError, compose_config, register_configs, validate


def _presets() -> list[str]:
    folder = resources.files("lightning_entropy.conf") / "experiment"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


PRESETS = _presets()
NEEDS_PATH = ("house_prices", "embeddings")


def _overrides(name: str) -> list[str]:
    return [f"experiment={name}"] + (["task.path=data.npz"] if name.startswith(NEEDS_PATH) else [])


def _sweep(name: str) -> dict:
    register_configs()
    with initialize_config_module(config_module="lightning_entropy.conf", version_base=None):
        cfg = compose(config_name="config", overrides=_overrides(name), return_hydra_config=True)
    return dict(cfg.hydra.sweeper.params or {})


def test_every_paper_figure_has_a_cpu_and_a_paper_preset():
    cpu = [p for p in PRESETS if not p.endswith("_paper")]
    assert {"spiral", "spiral_regression", "house_prices", "mnist", "embeddings"} <= set(cpu)
    for name in cpu:
        assert f"{name}_paper" in PRESETS, f"experiment={name} has no paper-scale preset"


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_and_validates(name):
    cfg = compose_config(_overrides(name))
    validate(cfg)
    assert cfg.sampler.kind in ("wang_landau", "wang_landau_mc")


@pytest.mark.parametrize("name", [p for p in PRESETS if not p.endswith("_paper")])
def test_paper_scale_runs_longer_than_cpu_scale(name):
    cpu, paper = compose_config(_overrides(name)), compose_config(_overrides(f"{name}_paper"))
    assert cpu.task.name == paper.task.name
    steps = lambda c: c.trainer.max_steps * c.sampler.steps_per_lightning_step  # noqa: E731
    assert steps(paper) >= 100 * steps(cpu)
    assert paper.trainer.max_time is None and cpu.trainer.max_time is not None  # CPU presets are time-boxed
    assert len(paper.baseline.seeds) >= len(cpu.baseline.seeds)


def test_grid_presets_sweep_the_paper_axes():
    assert _sweep("mnist") == {"model.width": "2,3,4"}
    assert _sweep("mnist_paper") == {"model.width": "2,3,4"}
    assert _sweep("spiral_regression_paper") == {"model.width": "30,100,300,1000", "task.n_points": "100,200,500"}
    assert _sweep("spiral_paper") == {"model.depth": "2,3,4,5,6"}
    # the size grid on the main job's walk: depth 2-6 at width 6, width 4-16 at depth 3
    for scale in ("", "_paper"):
        assert _sweep(f"spiral_depth{scale}") == {"model.depth": "2,3,4,5,6"}
        assert _sweep(f"spiral_width{scale}") == {"model.width": "4,8,12,16"}
    depth, width = compose_config(["experiment=spiral_depth"]), compose_config(["experiment=spiral_width"])
    assert (depth.model.width, width.model.depth) == (6, 3)
    assert list(depth.sampler.variables) == ["train_loss"]  # the main job's label-free walk
    for cfg in (depth, width, compose_config(["experiment=spiral_width_paper"])):  # one train-loss range for all
        assert list(cfg.sampler.ranges) == [[-2.0, None]] and list(cfg.advantage.range) == [-2.0, None]
    # spiral regression is read where the paper reads it, ln L_train = -4.5, and the baseline gets there
    regression, paper = compose_config(["experiment=spiral_regression"]), compose_config(
        ["experiment=spiral_regression_paper"])
    assert list(regression.sampler.variables) == ["train_loss"] and list(regression.sampler.ranges) == [[-4.8, None]]
    for cfg in (regression, paper):
        assert list(cfg.advantage.range) == [-4.8, -4.2] and cfg.baseline.epochs >= 3000


def test_preset_data_not_bundled_must_be_named():
    cfg = compose_config(["experiment=house_prices"])
    with pytest.raises(ConfigError, match="task.path.*give it on the command line"):
        validate(cfg)
