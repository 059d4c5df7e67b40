"""The startup hook: makes ``Trainer(strategy="wang_landau")`` work without ``import lightning_entropy``.

The wheel installs ``lightning_entropy_startup.pth`` and this module (outside the package, so that start-up does not
import the package, torch or Lightning) into site-packages; Python runs the ``.pth`` line at start-up, which calls
:func:`install`. ``install`` imports nothing heavy: it puts a finder on ``sys.meta_path`` that waits for
``lightning.pytorch.strategies`` to be imported and then registers the strategy names. Every step is fail-safe (an
error leaves Python and Lightning untouched). Set ``LIGHTNING_ENTROPY_AUTOREGISTER=0`` to switch the hook off.

Start-up cost: this module imports only ``sys`` (already loaded by the interpreter). The finder is a plain class with
a ``find_spec`` method (the meta-path protocol needs no ``importlib.abc`` base, whose import alone pulls in ~65
modules, ~20 ms); ``importlib.util`` is imported only when Lightning itself is being imported.
"""

import sys

TARGET = "lightning.pytorch.strategies"


class _RegisterAfterImport:
    """Wraps the loader of ``lightning.pytorch.strategies`` so the names are registered right after it loads."""

    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        sys.meta_path.remove(self)  # find the real spec without ourselves; we are needed only once
        import importlib.util  # noqa: PLC0415 - lazily: Lightning is being imported, the cost is negligible now

        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return None
        original = spec.loader.exec_module

        def exec_module(module):
            original(module)
            try:
                _register_names(module)
            except Exception:  # noqa: BLE001 - never break the user's import of Lightning
                pass

        spec.loader.exec_module = exec_module
        return spec


def _register_names(strategies_module) -> None:
    from lightning_entropy.strategies.registry import register

    register(strategies_module.StrategyRegistry)


def install() -> None:
    """Register now if Lightning is already imported, otherwise as soon as it is."""
    if TARGET in sys.modules:
        _register_names(sys.modules[TARGET])
        return
    if not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
