"""The samplers, one algorithm per module, each a pure ``init``/``step`` pair over an explicit state.

- :mod:`~lightning_entropy.core.samplers.wlmd`: Wang-Landau molecular dynamics (Langevin, or WL-GHMC with a
  Metropolis test that removes the time-step bias); its integrator step :func:`~wlmd.move` is shared.
- :mod:`~lightning_entropy.core.samplers.wlmc`: Wang-Landau Monte Carlo with single-parameter moves.
- :mod:`~lightning_entropy.core.samplers.restrained`: MD held at a train loss by a harmonic restraint on
  ln L_train (the training mode, ``entropy_md``).
"""

from lightning_entropy.core.samplers import restrained, wlmc, wlmd

__all__ = ["restrained", "wlmc", "wlmd"]
