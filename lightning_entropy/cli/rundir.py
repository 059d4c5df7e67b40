"""Claiming a run directory before any work: it must be writable, and no second run may use it at the same time.

:func:`claim` creates the directory, proves it writable by writing a probe file, and takes an exclusive ``fcntl``
lock on ``.lightning-entropy.lock`` inside it (held until the returned handle is closed or the process dies, so a
killed run never leaves a stale lock). A second run on the same directory fails at once with a ``ConfigError``
naming the directory, the holder's process id and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from lightning_entropy.cli.config import ConfigError

LOCK_NAME = ".lightning-entropy.lock"


def claim(out: str | Path) -> IO | None:
    """Create, check and lock the run directory ``out``; returns the open lock file (close it to release)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"run directory {str(out)!r} is not writable ({err.strerror}): nothing would be saved. Give a writable"
            " one with hydra.run.dir=<dir> (or fix its permissions)."
        ) from None
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the writability check still holds
        return None
    handle = open(out / LOCK_NAME, "a+")  # noqa: SIM115 - held for the run's lifetime
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise ConfigError(
            f"run directory {str(out)!r} is in use by another lightning-entropy run (pid {holder}): two runs would mix"
            " their outputs. Wait for it to finish, or give this run another hydra.run.dir=<dir>."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
