"""The ``lightning-entropy`` console script: Hydra composes the configuration shipped in
:mod:`lightning_entropy.conf`, and :func:`lightning_entropy.cli.job.run` does the work in Hydra's run directory
(``outputs/<date>/<time>`` by default; ``hydra.run.dir=...`` to choose; ``-m`` for sweeps).
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lightning_entropy.cli.config import ConfigError, register_configs
from lightning_entropy.cli.interrupt import CHECKPOINT, Interrupted
from lightning_entropy.cli.job import run

register_configs()


@hydra.main(version_base=None, config_path="pkg://lightning_entropy.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run(cfg, HydraConfig.get().runtime.output_dir)
    except ConfigError as err:
        print(f"lightning-entropy: configuration error: {err}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as err:
        out = HydraConfig.get().runtime.output_dir
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(("resume=", "hydra.run.dir="))]
        print(f"lightning-entropy: {err}; what was sampled is saved in {out} (summary.json with the"
              f" landscape or MD trace, and {CHECKPOINT} where sampling had begun). Resume with:\n  lightning-entropy {' '.join(overrides)}"
              f" resume={out} hydra.run.dir={out}", file=sys.stderr)
        sys.exit(128 + err.signum)


def main() -> None:
    """Entry point of ``lightning-entropy [overrides...]`` (arguments are read from ``sys.argv`` by Hydra)."""
    _hydra_main()
