"""Where walkers start: optimiser starts that stop above a given low end of the ln L_train range (the floor), so that
every walker starts inside the grid from its own run."""

import warnings

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from toy import ToyModule, toy_datamodule

from lightning_entropy import WangLandauStrategy
from lightning_entropy.core.start import start_walkers

pytestmark = pytest.mark.usefixtures("one_thread")


def _bowl(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ln L = ln |theta|^2 (a quadratic bowl) and its gradient 2 theta / |theta|^2."""
    r2 = (theta**2).sum(1)
    return torch.log(r2), 2 * theta / r2.unsqueeze(1)


def _start(floor=None, **kw):
    return start_walkers("adam", walkers=32, bound=torch.ones(6), generator=torch.Generator().manual_seed(3),
                         module_theta=torch.zeros(6), train_loss_and_gradient=_bowl, steps=200, lr=0.02,
                         floor=floor, **kw)


def _trajectories(steps: int = 200) -> list[torch.Tensor]:
    """The 32 Adam runs of :func:`_start` written out: the points after 0, 1, ..., ``steps`` steps."""
    from lightning_entropy.core.box import uniform

    bound = torch.ones(6)
    theta = uniform(32, bound, torch.Generator().manual_seed(3))
    leaf = theta.clone().requires_grad_(True)
    opt = torch.optim.Adam([leaf], lr=0.02)
    points = [theta.clone()]
    for _ in range(steps):
        leaf.grad = torch.nan_to_num(_bowl(leaf.detach())[1])
        opt.step()
        with torch.no_grad():
            leaf.copy_(torch.maximum(torch.minimum(leaf, bound), -bound))
        points.append(leaf.detach().clone())
    return points


def test_a_floor_stops_each_run_at_its_last_point_above_it():
    free, free_report = _start()
    floor = float(torch.quantile(_bowl(free)[0], 0.5))  # half the free runs end below it
    theta, report = _start(floor)
    points = _trajectories()
    ln_loss = torch.stack([_bowl(p)[0] for p in points])  # (steps + 1, walkers)
    expected, stopped = [], []
    for w in range(32):
        stop = round(200 * (w + 1) / 32)  # walker w's run ends after this many steps
        crossed = torch.nonzero(ln_loss[: stop + 1, w] < floor).flatten()
        k = int(crossed[0]) if len(crossed) else None  # the first point below the floor
        expected.append(points[stop][w] if k is None else points[max(k - 1, 0)][w])
        stopped.append(k is not None)
    torch.testing.assert_close(free, torch.stack([points[round(200 * (w + 1) / 32)][w] for w in range(32)]),
                               rtol=0, atol=0)  # the runs written out are the start's
    torch.testing.assert_close(theta, torch.stack(expected), rtol=0, atol=0)
    assert (_bowl(theta)[0] >= floor).all()
    assert report.at_floor == sum(stopped) > 0 and free_report.at_floor == 0
    assert report.describe()["stopped_at_floor"] == report.at_floor


def test_a_floor_needs_the_loss_not_only_its_gradient():
    with pytest.raises(ValueError, match="train_loss_and_gradient"):
        start_walkers("adam", walkers=4, bound=torch.ones(3), generator=torch.Generator().manual_seed(0),
                      module_theta=torch.zeros(3), train_loss_gradient=lambda th: 2 * th, floor=-1.0)


def _fit(strategy: WangLandauStrategy) -> WangLandauStrategy:
    trainer = Trainer(strategy=strategy, max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      num_sanity_val_steps=0)
    trainer.fit(ToyModule(), datamodule=toy_datamodule())
    return strategy


def test_a_given_low_end_keeps_every_adam_start_inside_the_grid():
    """ranges=[(lo, None)] above the lowest Adam starts: the starts stop at lo instead of being replaced by copies of
    the walkers inside the grid (copies across replicas would make them less independent than their errors say)."""
    kw = dict(walkers=32, start="adam", start_steps=300, start_lr=0.05, variables=("train_loss",), seed=4,
              steps_per_lightning_step=5)
    found = _fit(WangLandauStrategy(**kw)).landscape.edges[0]
    low = float(np.round(found[0] + 0.3 * (found[-1] - found[0]), 6))  # above the lowest starts
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        strategy = _fit(WangLandauStrategy(ranges=[(low, None)], **kw))
    assert not [w for w in caught if "outside the grid" in str(w.message)]
    assert strategy.landscape.edges[0][0] == low
    assert strategy.landscape.metadata["start_phase"]["stopped_at_floor"] > 0
