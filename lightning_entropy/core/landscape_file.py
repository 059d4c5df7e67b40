"""The landscape's file: one ``.npz`` that numpy alone can read.

It holds every tensor of :meth:`Landscape.state_dict <lightning_entropy.core.landscape.Landscape.state_dict>` as an
array (bias, visits, observable sums, group statistics, walker steps, ...), ``entropy`` (S - max S, NaN where never
visited, for readers without this package) and ``json``: the grid's configuration, the run's metadata and the
snapshot history. It is written atomically (a temporary file, then ``os.replace``), so a reader never sees half a
file; reading refuses a corrupt, truncated or non-finite one with a ``ValueError`` that names it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")


def write(state: dict[str, Any], entropy: np.ndarray, path: str | Path) -> Path:
    """Write a landscape's ``state`` (its ``state_dict``) and its ``entropy`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: v.cpu().numpy() for k, v in state.items() if isinstance(v, torch.Tensor)}
    meta = json.dumps({"config": state["config"], "metadata": state["metadata"], "history": state["history"]},
                      default=str)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # atomic: a reader never sees half a file
    try:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, json=np.array(meta), entropy=entropy, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read(path: str | Path, build: Callable[[dict[str, Any]], T]) -> T:
    """``build(state)`` of the state read from ``path`` (written by :func:`write`); any failure on the way, of the
    file or of ``build``, is a ``ValueError`` that names the file (a missing file stays ``FileNotFoundError``)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["json"]))
            state = {k: torch.from_numpy(data[k]) for k in data.files if k not in ("json", "entropy")}
        state.update(meta)
        bias = state["bias"]
        if not bool(torch.isfinite(bias).all()):
            raise ValueError("its bias holds NaN or inf")
        return build(state)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - BadZipFile, KeyError, JSONDecodeError, EOFError, shape errors...
        raise ValueError(
            f"{path} is not a readable landscape file ({type(err).__name__}: {err}): it is corrupt, truncated or"
            " not written by Landscape.save. Re-run the job, or resume it from its checkpoint."
        ) from err


__all__ = ["read", "write"]
