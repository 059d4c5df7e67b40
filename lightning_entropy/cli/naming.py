"""The run's name for the loggers, made of the command line's overrides (``task=mnist,model.width=8``).

The same text Hydra uses for ``hydra.job.override_dirname``: ``key=value`` pairs joined by commas, sorted, without
the overrides that do not change what is computed (``hydra.*``, ``resume``, ``logger.*``). No overrides: ``default``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: Overrides that do not change the run's results (where it goes, how it is logged, where it resumes from).
IGNORED = ("hydra.", "hydra/", "resume=", "logger.", "logger=")
MAX_LENGTH = 128


def run_name(overrides: Sequence[str] | None) -> str:
    """The overrides as one name (``default`` when there are none); at most :data:`MAX_LENGTH` characters."""
    kept = sorted(o.lstrip("+~") for o in overrides or () if not o.lstrip("+~").startswith(IGNORED))
    name = ",".join(kept) or "default"
    return name if len(name) <= MAX_LENGTH else name[: MAX_LENGTH - 3] + "..."


def path_safe(name: str) -> str:
    """``name`` usable as one directory name (CSV / TensorBoard versions): ``/`` and spaces become ``_``."""
    return re.sub(r"[/\\\s]+", "_", name)


def command_line_overrides() -> list[str] | None:
    """The overrides of the running Hydra job (``None`` outside one: ``compose`` in tests and notebooks)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:  # noqa: BLE001 - not running under Hydra
        return None
