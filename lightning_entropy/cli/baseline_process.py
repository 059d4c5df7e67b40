"""The baseline process that ``lightning-entropy`` starts beside the sampler (``baseline.parallel=true``).

Reads one JSON object from stdin: ``{"config": <the run's configuration>, "settings": <train_baselines kwargs>,
"threads": int, "output": <CSV path>, "deadline": <time.time() to stop at, or null>, "sys_path": [...]}``; puts the
job's ``sys_path`` entries on its own (a ``model._target_`` of one's own imports here as in the job), rebuilds the task
from the same configuration (hence the same data split and model class as the sampler), trains one model per seed
until the deadline and writes the records with
:func:`lightning_entropy.baseline.save_records`. Run as ``python -m lightning_entropy.cli.baseline_process``.
"""

from __future__ import annotations

import json
import sys


def die_with_parent(parent: int | None) -> None:
    """End this process when the job that started it dies (even by SIGKILL), so that no orphan writes into a dead
    run's directory: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` on Linux, and everywhere a daemon thread that checks every
    second whether ``os.getppid()`` is still ``parent``."""
    import os
    import signal
    import threading
    import time

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if parent is None:
        return
    if os.getppid() != parent:  # the parent died before we got here
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def main() -> None:
    import time

    request = json.load(sys.stdin)
    die_with_parent(request.get("parent"))
    for entry in reversed(request.get("sys_path") or []):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    from omegaconf import OmegaConf

    from lightning_entropy.baseline import save_records, train_baselines
    from lightning_entropy.cli.build import quiet_lightning as _quiet_lightning
    from lightning_entropy.cli.tasks import build_task

    _quiet_lightning()
    task = build_task(OmegaConf.create(request["config"]))
    deadline = request.get("deadline")
    records = train_baselines(lambda seed: (task.datamodule, task.make_model(seed)),
                              threads=request.get("threads") or None,
                              max_time=max(0.0, deadline - time.time()) if deadline is not None else None,
                              **request["settings"])
    save_records(records, request["output"])


if __name__ == "__main__":
    main()
