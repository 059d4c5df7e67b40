"""The ``lightning-entropy`` console script: Hydra composes the configuration shipped in
:mod:`lightning_entropy.conf`, and :func:`lightning_entropy.cli.job.run` does the work in Hydra's run directory
(``outputs/<date>/<time>`` by default; ``hydra.run.dir=...`` to choose; ``-m`` for sweeps).

The task function returns the run's objective for sweepers (Optuna, Ax: ``hydra/sweeper=optuna``): the mean
high-entropy advantage (``summary.json``'s ``mean_advantage``; ``test_metric_gain`` for ``sampler=entropy_md``), or
NaN when the run has none (no bin covered by both curves, an optimiser-only run), which sweepers record as a failed
trial. The directory the command runs in is put on ``sys.path``, so ``model._target_=my_pkg.MyModule`` imports a
package there as ``python -m`` would.
"""

from __future__ import annotations

import math
import os
import sys
import time

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lightning_entropy.cli.config import ConfigError, register_configs
from lightning_entropy.cli.deadline import process_age
from lightning_entropy.cli.interrupt import CHECKPOINT, Interrupted
from lightning_entropy.cli.job import run

register_configs()


def objective(summary: dict) -> float:
    """The number a sweeper optimises: the mean advantage (entropy_md: the held-out gain), NaN when there is none."""
    for key in ("mean_advantage", "test_metric_gain"):
        value = summary.get(key)
        if value is not None:
            return float(value)
    return math.nan


def _importable_here() -> None:
    """Put the directory the command was started in on ``sys.path`` (console scripts leave it off)."""
    try:
        from hydra.utils import get_original_cwd

        cwd = get_original_cwd()
    except Exception:  # noqa: BLE001 - not under Hydra
        cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


@hydra.main(version_base=None, config_path="pkg://lightning_entropy.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float:
    _importable_here()
    hydra_cfg = HydraConfig.get()
    single = hydra_cfg.mode is None or hydra_cfg.mode.name != "MULTIRUN"
    started = _command_started if single else None  # a single run of the command counts from its process start
    try:
        return objective(run(cfg, hydra_cfg.runtime.output_dir, started=started))
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


_command_started: float | None = None  # time.monotonic() when the command's process started (None: not a command)


def _is_command() -> bool:
    """Whether this process is the ``lightning-entropy`` command (its console script or ``python -m
    lightning_entropy.cli``), not a program that calls :func:`main` (tests, notebooks)."""
    path = str(getattr(sys.modules.get("__main__"), "__file__", "") or "")
    return path.endswith(("lightning-entropy", os.path.join("lightning_entropy", "cli", "__main__.py")))


def main() -> None:
    """Entry point of ``lightning-entropy [overrides...]`` (arguments are read from ``sys.argv`` by Hydra)."""
    global _command_started
    _command_started = time.monotonic() - process_age() if _is_command() else None
    _hydra_main()
