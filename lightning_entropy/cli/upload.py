"""What the job sends to its Lightning logger besides the sampler's scalars: the whole configuration at the start,
the run's files at the end.

- :func:`log_config`: the full resolved configuration (task, model, data, sampler, baseline, trainer, logger) through
  ``logger.log_hyperparams``, for every logger (CSV: ``hparams.yaml``; TensorBoard: its hparams; W&B: the run's
  config). Lightning adds the module's own ``hparams`` when the fit starts.
- :func:`upload_files`: ``summary.json``, ``landscape.npz``, ``convergence.png``, ... to loggers that store files:
  W&B (``run.save``, the run's Files, with the headline numbers in the run summary, and the figures as images).
  The other loggers write into the run directory, which already holds the files.
- :func:`close`: end the W&B run, so that the next job of a sweep in this process starts its own run (Lightning
  leaves the run open) and an offline run's files are complete.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("lightning_entropy.cli")

#: Summary keys copied into a W&B run's summary (the numbers a sweep's table shows).
HEADLINE = ("mean_advantage", "converged", "flatness", "walker_steps", "steps", "stopped_by", "wall_time_s",
            "test_metric_gain")
IMAGES = ("convergence.png", "baseline.png", "md_trace.png")  # landscape.png is logged with the final metrics


def is_wandb(logger: Any) -> bool:
    return type(logger).__name__ == "WandbLogger"


def log_config(logger: Any, config: Mapping[str, Any]) -> None:
    """Send the resolved configuration to the logger (nested: each logger flattens it its own way)."""
    if logger:
        logger.log_hyperparams(dict(config))


def upload_files(logger: Any, out: Path, files: Iterable[str], summary: Mapping[str, Any]) -> list[str]:
    """Upload the run's ``files`` (names inside ``out``) where the logger stores files; returns what was uploaded."""
    if not logger or not is_wandb(logger):
        return []
    run = logger.experiment
    uploaded = []
    for name in files:
        path = out / name
        if path.is_file():
            run.save(str(path), base_path=str(out), policy="now")
            uploaded.append(name)
    for name in IMAGES:
        if name in uploaded:
            logger.log_image(key=f"report/{Path(name).stem}", images=[str(out / name)])
    run.summary.update({k: summary[k] for k in HEADLINE if summary.get(k) is not None})
    return uploaded


def close(logger: Any) -> None:
    """Finish the logger's W&B run (other loggers: nothing to do)."""
    if logger and is_wandb(logger) and getattr(logger, "_experiment", None) is not None:
        logger.experiment.finish()
