"""The baseline process that ``lightning-entropy`` starts beside the sampler (``baseline.parallel=true``).

Reads one JSON object from stdin: ``{"config": <the run's configuration>, "settings": <train_baselines kwargs>,
"threads": int, "output": <CSV path>}``; rebuilds the task from the same configuration (hence the same data split
and model class as the sampler), trains one model per seed and writes the records with
:func:`lightning_entropy.baseline.save_records`. Run as ``python -m lightning_entropy.cli.baseline_process``.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    request = json.load(sys.stdin)
    from omegaconf import OmegaConf

    from lightning_entropy.baseline import save_records, train_baselines
    from lightning_entropy.cli.job import _quiet_lightning
    from lightning_entropy.cli.tasks import build_task

    _quiet_lightning()
    task = build_task(OmegaConf.create(request["config"]))
    records = train_baselines(lambda seed: (task.datamodule, task.make_model(seed)),
                              threads=request.get("threads") or None, **request["settings"])
    save_records(records, request["output"])


if __name__ == "__main__":
    main()
