"""The sampling core: pure PyTorch, no Lightning import.

Data flows one way: data -> collective variables (:mod:`variables`, :mod:`evaluator`) -> samplers
(:mod:`samplers`) -> landscape (:mod:`landscape`, on a :mod:`grid`; its file: :mod:`landscape_file`). The box
(:mod:`box`), walkers (:mod:`walkers`, :mod:`start`) and the Wang-Landau factor schedule (:mod:`schedule`) are the
sampler's other inputs. A run starts with :mod:`setup` (the
grid, the walkers' admission, the metadata) and is driven by a run object: :mod:`run` (windows and replicas,
``fill="visit"``) or :mod:`step_run` (one landscape filled per step, ``fill="step"`` and WLMC), each with
``chunk(steps)``, ``snapshot()`` and ``state_dict()``. The windowed run's pieces: :mod:`windows` (estimates,
exchange, deposits) with :mod:`placement` (where windows lie), :mod:`forces`, :mod:`step_size`, :mod:`combine`
(joining windows and replicas, R-hat) and :mod:`label_free` (the 2-D picture of a 1-D walk). The strategies and
the command line are shells around them.
"""

from lightning_entropy.core.box import Box
from lightning_entropy.core.evaluator import Evaluator, FullBatch
from lightning_entropy.core.landscape import Landscape
from lightning_entropy.core.schedule import Constant, FlatnessOneOverT, RampPlateauDecay
from lightning_entropy.core.variables import CollectiveVariable
from lightning_entropy.core.walkers import ParameterLayout

__all__ = [
    "Box",
    "CollectiveVariable",
    "Constant",
    "Evaluator",
    "FlatnessOneOverT",
    "FullBatch",
    "Landscape",
    "ParameterLayout",
    "RampPlateauDecay",
]
