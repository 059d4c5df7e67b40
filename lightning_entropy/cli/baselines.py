"""The optimiser baseline of a job: trained here, or in a second process beside the sampler
(:mod:`lightning_entropy.cli.baseline_process`) on the same configuration (same split and model).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_entropy.cli.tasks import Task


def train_here(task: Task, settings: dict[str, Any], threads: int | None,
                    max_time: float | None = None) -> list[dict[str, float]]:
    from lightning_entropy.baseline import train_baselines

    return train_baselines(lambda seed: (task.datamodule, task.make_model(seed)), threads=threads,
                           max_time=max_time, **settings)


def start_process(cfg: DictConfig, settings: dict[str, Any], out: Path,
                            deadline: float | None = None) -> subprocess.Popen:
    """Start ``python -m lightning_entropy.cli.baseline_process`` on the same configuration (same split and model).

    Its output goes to ``baseline.log`` in the run directory (removed when it succeeds); its records to
    ``baseline.csv``. It stops at ``deadline`` (``time.time()``) and imports from this process's ``sys.path`` (a
    ``model._target_`` of one's own is found there too).
    """
    threads = int(cfg.baseline.threads)
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    request = {"config": OmegaConf.to_container(cfg, resolve=True), "settings": settings, "threads": threads,
               "output": str(out / "baseline.csv"), "parent": os.getpid(), "deadline": deadline,
               "sys_path": [p for p in sys.path if p]}
    log_file = open(out / "baseline.log", "w")  # noqa: SIM115 - closed by finish_process
    try:
        process = subprocess.Popen([sys.executable, "-m", "lightning_entropy.cli.baseline_process"],
                                   stdin=subprocess.PIPE, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                   text=True)
        process.stdin.write(json.dumps(request))
        process.stdin.close()
    finally:
        log_file.close()
    return process


def finish_process(process: subprocess.Popen, out: Path) -> list[dict[str, float]]:
    """Wait for the baseline process and read its records; raise with the end of its log if it failed."""
    from lightning_entropy.baseline import load_records

    code = process.wait()
    log_path = out / "baseline.log"
    if code != 0:
        tail = log_path.read_text()[-3000:] if log_path.exists() else ""
        raise RuntimeError(f"The baseline process failed (exit code {code}); the end of {log_path}:\n{tail}")
    log_path.unlink(missing_ok=True)
    return load_records(out / "baseline.csv")
