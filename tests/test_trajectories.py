"""Bit-identical trajectories: every sampler (WLMD per step and per visit, WLMC, restrained MD, DDP, and the core's
call shapes without Lightning) reproduces the walkers and landscapes recorded in ``tests/data/trajectories.npz``.

A change meant to leave the samplers' behaviour alone (a refactor) must keep this test passing unchanged. A change
that means to alter trajectories regenerates the references (``python tests/trajectories.py``, see that file) and
says why in its commit.
"""

import numpy as np
import pytest
import trajectories


@pytest.fixture(scope="module")
def reference():
    if not trajectories.REFERENCE.is_file():
        pytest.skip(f"no references at {trajectories.REFERENCE}: run python tests/trajectories.py")
    recorded, digests, arrays = trajectories.load()
    here = trajectories.environment()
    if recorded != here:
        pytest.skip(f"references recorded with {recorded}, this is {here}: floating point may differ; regenerate"
                    " them here at a trusted commit (python tests/trajectories.py)")
    return digests, arrays


def compare(name: str, arrays: dict, reference) -> None:
    digests, whole = reference
    mine = {k[len(name) + 1:]: v for k, v in digests.items() if k.startswith(f"{name}/")}
    assert mine, f"no references for {name}"
    assert sorted(arrays) == sorted(mine), f"{name}: other arrays than the recorded ones"
    wrong = []
    for key, value in arrays.items():
        if trajectories.digest(value) == mine[key]:
            continue
        saved = whole.get(f"{name}/{key}")
        if saved is not None and saved.shape == value.shape and np.issubdtype(value.dtype, np.number):
            with np.errstate(invalid="ignore"):
                gap = np.nanmax(np.abs(value.astype(np.float64) - saved.astype(np.float64)), initial=0.0)
            wrong.append(f"{key} (largest difference {gap:.3g})")
        else:
            wrong.append(key)
    assert not wrong, f"{name}: not bit-identical: {', '.join(wrong)}"


@pytest.mark.parametrize("name", list(trajectories.SCENARIOS))
def test_trajectory_is_bit_identical(name, reference):
    compare(name, trajectories.run(name), reference)
