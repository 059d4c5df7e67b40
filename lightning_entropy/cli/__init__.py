"""Command line of lightning-entropy: ``lightning-entropy [key=value ...]`` (Hydra).

- :func:`main`: the console script.
- :func:`compose_config`: the composed configuration for a list of overrides, without running anything.
- :func:`run`: the main job for a composed configuration (what ``main`` calls in Hydra's run directory).
"""

from __future__ import annotations

from omegaconf import DictConfig

from lightning_entropy.cli.config import Config, ConfigError, register_configs, validate
from lightning_entropy.cli.job import run
from lightning_entropy.cli.main import main


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose the shipped configuration with Hydra's compose API (as the console script would, minus ``hydra.*``).

    Raises Hydra's ``ConfigCompositionException`` for unknown keys and values of the wrong type.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config", overrides=list(overrides))
    with initialize_config_module(config_module="lightning_entropy.conf", version_base=None):
        return compose(config_name="config", overrides=list(overrides))


__all__ = ["Config", "ConfigError", "compose_config", "main", "register_configs", "run", "validate"]
