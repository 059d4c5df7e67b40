"""The samplers, one algorithm per module, each a pure ``init``/``step`` pair over an explicit state.

- :mod:`~lightning_entropy.core.samplers.wlmd`: Wang-Landau molecular dynamics (Langevin, or WL-GHMC with a
  Metropolis test that removes the time-step bias).
- :mod:`~lightning_entropy.core.samplers.wlmc`: Wang-Landau Monte Carlo with single-parameter moves.
"""

from lightning_entropy.core.samplers import wlmc, wlmd

__all__ = ["wlmc", "wlmd"]
