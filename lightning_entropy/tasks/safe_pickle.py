"""A restricted unpickler for data files: numpy arrays, lists, dicts, tuples, bytes, strings and numbers only.

``pickle.load`` runs whatever a file names (``os.system`` through ``__reduce__``). Data batches such as CIFAR's
``data_batch_*`` need only plain containers and numpy arrays, so :func:`load_data_pickle` allows exactly the globals
numpy uses to rebuild an array (``_reconstruct``, ``ndarray``, ``dtype``, ``scalar``) and refuses every other one with
an ``UnpicklingError`` naming the file and the refused global.
"""

from __future__ import annotations

import pickle
from pathlib import Path

#: (module, name) pairs a data pickle may reference: what numpy 1.x and 2.x write for arrays, dtypes and scalars.
ALLOWED_GLOBALS = frozenset(
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
) | frozenset({("numpy", "ndarray"), ("numpy", "dtype")})


class _DataUnpickler(pickle.Unpickler):
    def __init__(self, fh, source: str, **kwargs):
        super().__init__(fh, **kwargs)
        self._source = source

    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"{self._source}: refused to unpickle global {module}.{name}: a data batch may hold only numpy arrays, "
            "lists, dicts, bytes and strings. The file is not a genuine data batch (corrupt or crafted); delete it and "
            "let the archive be downloaded and verified again."
        )


def load_data_pickle(path: str | Path, *, encoding: str = "bytes"):
    """Unpickle the data file at ``path``, refusing any global but numpy's array constructors (see module doc)."""
    with open(path, "rb") as fh:
        return _DataUnpickler(fh, str(path), encoding=encoding).load()
