"""The report's lines in the job's log file (Hydra's ``<run dir>/main.log``) as well as on stdout.

The lines are printed by the job (``echo``); here they are handed only to the root logger's file handlers, so the
console does not show them twice. Without Hydra's logging (``hydra/job_logging=none``, or ``run`` called from Python)
there is no file handler and nothing is written.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

log = logging.getLogger("lightning_entropy.report")


def to_log_files(lines: Iterable[str]) -> int:
    """Write ``lines`` at INFO to every file handler of the root logger; returns how many handlers got them."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for line in lines:
        record = log.makeRecord(log.name, logging.INFO, __file__, 0, line, None, None)
        for handler in handlers:
            if record.levelno >= handler.level:
                handler.handle(record)
    return len(handlers)
