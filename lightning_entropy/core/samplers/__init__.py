"""The samplers, one algorithm per module, each built once and then driven as ``init``/``step`` over an explicit
state (the :class:`~lightning_entropy.core.samplers.base.Sampler` shape; the Wang-Landau samplers deposit into their
landscape in place).

- :mod:`~lightning_entropy.core.samplers.wlmd`: :class:`~wlmd.WLMD`, Wang-Landau molecular dynamics (Langevin, or
  WL-GHMC with a Metropolis test that removes the time-step bias); its integrator pieces :func:`~wlmd.start` and
  :func:`~wlmd.move` are shared.
- :mod:`~lightning_entropy.core.samplers.wlmc`: :class:`~wlmc.WLMC`, Wang-Landau Monte Carlo with single-parameter
  moves.
- :mod:`~lightning_entropy.core.samplers.restrained`: :class:`~restrained.RestrainedMD`, MD held at a train loss by
  a harmonic restraint on ln L_train (the training mode, ``entropy_md``).
- :mod:`~lightning_entropy.core.samplers.base`: the :class:`~base.Sampler` protocol and
  :class:`~base.WalkerState`, the ``state_dict`` helper of the walker states.

:func:`lightning_entropy.core.loop.run` drives any of them.
"""

from lightning_entropy.core.samplers import base, restrained, wlmc, wlmd
from lightning_entropy.core.samplers.base import Sampler, WalkerState
from lightning_entropy.core.samplers.restrained import RestrainedMD
from lightning_entropy.core.samplers.wlmc import WLMC
from lightning_entropy.core.samplers.wlmd import WLMD

__all__ = ["WLMC", "WLMD", "RestrainedMD", "Sampler", "WalkerState", "base", "restrained", "wlmc", "wlmd"]
