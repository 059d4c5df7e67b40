"""The command line's error for a configuration value that cannot work (the bottom of :mod:`lightning_entropy.cli`:
every piece that rejects a value imports it from here, so no arrow runs back up to the schema)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key (e.g. ``model.width``)."""


__all__ = ["ConfigError"]
