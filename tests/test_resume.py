"""Exact resume from trained modules for every strategy x start mode; a checkpoint carries its grid, box and a
fingerprint of the data and model, and a resume with another box, model or data is refused naming what differs.

The module is the toy network (13 parameters) after 300 full-batch Adam steps, so that its weights, and with them the
grid ranges found from the starting walkers, differ from the weights Lightning restores with a checkpoint (walker 0's).
Each case compares N Lightning steps straight against N/2, a checkpoint, and N/2 resumed: bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from toy import ToyModule, toy_data, toy_datamodule

from lightning_entropy import EntropyMDStrategy, WangLandauStrategy
from lightning_entropy.core import fingerprint
from lightning_entropy.tasks.common import TensorDataModule

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 4  # Lightning steps; the checkpoint is taken after STEPS // 2
STARTS = ("module", "uniform", "adam", "sgd")


@pytest.fixture(scope="module")
def trained():
    """The toy network after 300 full-batch Adam steps on its 12 train points (its state dict)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ToyModule()
    x, y = toy_data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        model.loss_fn(model(x[:12]), y[:12].unsqueeze(1)).backward()
        opt.step()
    torch.set_num_threads(previous)
    return model.state_dict()


def _module(state):
    model = ToyModule()
    model.load_state_dict(state)
    return model


def _fit(strategy, state, steps, *, ckpt_dir=None, ckpt_path=None, datamodule=None, model=None):
    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=STEPS // 2, save_top_k=-1)] if ckpt_dir else []
    trainer = Trainer(strategy=strategy, max_steps=steps, accelerator="cpu", logger=False,
                      enable_checkpointing=ckpt_dir is not None, callbacks=callbacks, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(model if model is not None else _module(state), datamodule=datamodule or toy_datamodule(),
                ckpt_path=ckpt_path)
    return strategy


def _halfway(ckpt_dir):
    return str(next(p for p in ckpt_dir.glob("*.ckpt") if f"step={STEPS // 2}" in p.name))


def _same_landscape(a, b) -> None:
    for edges_a, edges_b in zip(a.edges, b.edges):
        np.testing.assert_array_equal(edges_a, edges_b)
    np.testing.assert_array_equal(a.histogram, b.histogram)
    np.testing.assert_array_equal(a.entropy, b.entropy)
    assert torch.equal(a.bias, b.bias)
    assert a.walker_steps == b.walker_steps
    if a.replica_entropy is not None or b.replica_entropy is not None:
        np.testing.assert_array_equal(a.replica_entropy, b.replica_entropy)


WL_CASES = {  # fill="visit" is the default windowed replica-exchange path (2 replicas x 2 windows of 2 walkers)
    "visit": dict(fill="visit", replicas=2, windows=2, production=0.25),
    "step": dict(fill="step"),
    "mc": dict(sampler="mc"),
}


def _wl(case: str, start: str, **kw):
    kw = {**dict(walkers=8, box=3.0, seed=7, start=start, start_steps=40, steps_per_lightning_step=15,
                 observe_every=5), **WL_CASES[case], **kw}
    return WangLandauStrategy(**kw)


@pytest.mark.parametrize("start", STARTS)
@pytest.mark.parametrize("case", list(WL_CASES))
def test_wang_landau_resumes_exactly_from_a_trained_module(tmp_path, trained, case, start):
    straight = _fit(_wl(case, start), trained, STEPS, ckpt_dir=tmp_path)
    resumed = _fit(_wl(case, start), trained, STEPS, ckpt_path=_halfway(tmp_path))
    assert torch.equal(straight.walker_parameters, resumed.walker_parameters)
    _same_landscape(straight.landscape, resumed.landscape)
    np.testing.assert_equal(resumed.landscape.history, straight.landscape.history)  # NaN equal to NaN
    if case == "visit":
        assert straight._run.frozen and resumed._run.frozen  # the production phase was reached in both


def test_the_checkpoint_carries_the_grid_box_and_fingerprint(tmp_path, trained):
    straight = _fit(_wl("step", "module"), trained, STEPS, ckpt_dir=tmp_path)
    saved = torch.load(_halfway(tmp_path), weights_only=False)["optimizer_states"][0]["sampler"]["setup"]
    land = straight.landscape
    assert saved["grid"]["names"] == list(land.names) and saved["grid"]["bins"] == list(land.shape)
    np.testing.assert_array_equal(saved["grid"]["ranges"], [[e[0], e[-1]] for e in land.edges])
    np.testing.assert_allclose(saved["grid"]["widths"], [np.diff(e).mean() for e in land.edges])
    assert saved["box"] == {"rule": "constant", "c": 3.0}
    assert saved["half_widths"] == [["net.0.weight", 3.0], ["net.0.bias", 3.0], ["net.2.weight", 3.0],
                                    ["net.2.bias", 3.0]]
    assert saved["fingerprint"]["model"]["parameters"][0] == ["net.0.weight", [3, 2], "torch.float32", True]
    assert saved["fingerprint"]["data"]["train"]["shapes"] == [[[12, 2], "torch.float32"], [[12, 1], "torch.float32"]]


def test_entropy_md_resumes_exactly_from_a_trained_module_with_an_explicit_box(tmp_path, trained):
    def md():
        return EntropyMDStrategy(walkers=8, box=3.0, seed=3, steps_per_lightning_step=15, observe_every=5,
                                 adapt_steps=1000, dt=0.02)

    straight = _fit(md(), trained, STEPS, ckpt_dir=tmp_path)
    resumed = _fit(md(), trained, STEPS, ckpt_path=_halfway(tmp_path))
    assert resumed.dt == straight.dt and resumed.target == straight.target
    assert torch.equal(straight.walker_parameters, resumed.walker_parameters)
    for key, value in straight.trace.items():
        np.testing.assert_array_equal(value, resumed.trace[key])


# -- refusals: another box, model or data --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, trained):
    """A wang_landau (fill="step", start="module") checkpoint after STEPS // 2 Lightning steps."""
    out = tmp_path_factory.mktemp("ckpt")
    _fit(_wl("step", "module"), trained, STEPS // 2 + 1, ckpt_dir=out)
    return _halfway(out)


def _other_data(scale: float = 1.0, train: int = 12, dtype=torch.float32) -> TensorDataModule:
    x, y = (t.to(dtype) for t in toy_data())
    return TensorDataModule((scale * x[:train], y[:train].unsqueeze(1)), (x[12:], y[12:].unsqueeze(1)))


def test_resume_with_another_box_is_refused(checkpoint, trained):
    with pytest.raises(ValueError, match=r"box.*constant, c=3.*this run.*constant, c=2.*box=3"):
        _fit(_wl("step", "module", box=2.0), trained, STEPS, ckpt_path=checkpoint)


def test_resume_with_another_box_rule_is_refused(checkpoint, trained):
    with pytest.raises(ValueError, match=r"box.*fan_out"):
        _fit(_wl("step", "module", box="fan_out:3"), trained, STEPS, ckpt_path=checkpoint)


def test_resume_with_other_data_values_is_refused(checkpoint, trained):
    with pytest.raises(ValueError, match=r"train data differ.*same shapes.*other values.*same data"):
        _fit(_wl("step", "module"), trained, STEPS, ckpt_path=checkpoint, datamodule=_other_data(scale=1.5))


def test_resume_with_other_data_shapes_is_refused(checkpoint, trained):
    with pytest.raises(ValueError, match=r"train data differ.*\[12, 2\].*\[10, 2\]"):
        _fit(_wl("step", "module"), trained, STEPS, ckpt_path=checkpoint, datamodule=_other_data(train=10))


class ReluToy(ToyModule):
    """The toy network's parameters with another activation: the same state dict, another landscape."""

    def __init__(self) -> None:
        super().__init__()
        self.net[1] = torch.nn.ReLU()


def test_resume_with_another_model_is_refused(checkpoint, trained):
    wider = ToyModule()
    wider.net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    with pytest.raises(ValueError, match=r"model differs.*net.0.weight is \[3, 2\].*in the checkpoint, \[4, 2\]"):
        _fit(_wl("step", "module"), trained, STEPS, ckpt_path=checkpoint, model=wider)  # before Lightning loads it
    with pytest.raises(ValueError, match=r"model differs.*sampled from a ToyModule, this run has a ReluToy"):
        _fit(_wl("step", "module"), trained, STEPS, ckpt_path=checkpoint, model=ReluToy())
    with pytest.raises(ValueError, match=r"model differs.*net.0.weight is \[3, 2\] torch.float32.*torch.float64"):
        _fit(_wl("step", "module"), trained, STEPS, ckpt_path=checkpoint, model=_module(trained).double(),
             datamodule=_other_data(dtype=torch.float64))


def test_resume_with_a_frozen_parameter_is_refused(checkpoint, trained):
    model = _module(trained)
    model.net[2].bias.requires_grad_(False)
    with pytest.raises(ValueError, match=r"model differs.*net.2.bias"):
        _fit(_wl("step", "module"), trained, STEPS, ckpt_path=checkpoint, model=model)


def test_resume_with_other_explicit_ranges_is_refused(checkpoint, trained):
    with pytest.raises(ValueError, match=r"grid.*ranges"):
        _fit(_wl("step", "module", ranges=[(-5.0, 1.0), (-5.0, 3.0)]), trained, STEPS, ckpt_path=checkpoint)


def test_an_open_end_of_ranges_is_found_and_a_resume_keeps_the_checkpoints(tmp_path, trained):
    """ranges=[(lo, None), None]: the low end of ln L_train as given, its high end and the test-loss axis found from
    the starts as without ranges; a resume with the same open ranges takes the checkpoint's ends and continues
    exactly; another given end is refused."""
    found = _fit(_wl("step", "module"), trained, STEPS).landscape
    width = float(np.diff(found.edges[0]).mean())
    low = float(np.round(found.edges[0][0] + 10 * width, 6))  # ten bins above the automatic low end
    open_ranges = [(low, None), None]
    straight = _fit(_wl("step", "module", ranges=open_ranges), trained, STEPS, ckpt_dir=tmp_path)
    edges = straight.landscape.edges
    assert edges[0][0] == low and abs(edges[0][-1] - found.edges[0][-1]) < width + 1e-9
    np.testing.assert_array_equal(edges[1], found.edges[1])
    resumed = _fit(_wl("step", "module", ranges=open_ranges), trained, STEPS, ckpt_path=_halfway(tmp_path))
    _same_landscape(straight.landscape, resumed.landscape)
    with pytest.raises(ValueError, match=r"grid.*ranges"):
        _fit(_wl("step", "module", ranges=[(low - 1.0, None), None]), trained, STEPS, ckpt_path=_halfway(tmp_path))


def test_a_given_end_the_walkers_cannot_meet_is_refused_naming_the_axis(trained):
    with pytest.raises(ValueError, match=r"ranges=.*ln_train_loss axis.*do not reach the given range.*both ends"):
        _fit(_wl("step", "module", ranges=[(40.0, None), None]), trained, STEPS)


def test_resume_with_another_variable_is_refused(checkpoint, trained):
    with pytest.raises(ValueError, match=r"grid.*ln_train_loss.*ln_test_loss.*ln_train_loss"):
        _fit(_wl("step", "module", variables=("train_loss",)), trained, STEPS, ckpt_path=checkpoint)


def test_entropy_md_resume_with_another_explicit_box_is_refused(tmp_path, trained):
    _fit(EntropyMDStrategy(walkers=4, box=3.0, steps_per_lightning_step=5), trained, STEPS // 2, ckpt_dir=tmp_path)
    with pytest.raises(ValueError, match=r"box.*constant, c=3.*this run.*constant, c=4"):
        _fit(EntropyMDStrategy(walkers=4, box=4.0, steps_per_lightning_step=5), trained, STEPS,
             ckpt_path=_halfway(tmp_path))
    with pytest.raises(ValueError, match=r"train data differ"):
        _fit(EntropyMDStrategy(walkers=4, box=3.0, steps_per_lightning_step=5), trained, STEPS,
             ckpt_path=_halfway(tmp_path), datamodule=_other_data(scale=0.5))


# -- the fingerprint itself -------------------------------------------------------------------------------------------


def test_the_data_fingerprint_sees_values_shapes_dtypes_and_nesting():
    x = torch.arange(12.0).reshape(6, 2)
    base = fingerprint.of_batch((x, x[:, 0].long()))
    assert base == fingerprint.of_batch((x.clone(), x[:, 0].long()))
    changed = x.clone()
    changed[3, 1] += 1e-6
    assert base["digest"] != fingerprint.of_batch((changed, x[:, 0].long()))["digest"]
    assert base["shapes"] != fingerprint.of_batch((x, x[:, 0].int()))["shapes"]
    assert base["shapes"] != fingerprint.of_batch((x.reshape(3, 4), x[:, 0].long()))["shapes"]
    assert base["digest"] != fingerprint.of_batch([(x, x[:, 0].long())])["digest"]
    nested = fingerprint.of_batch({"x": x, "y": [x[:, 0]], "n": 3})
    assert nested == fingerprint.of_batch({"n": 3, "y": [x[:, 0].clone()], "x": x.clone()})
    assert fingerprint.of_batch(x.T)["digest"] == fingerprint.of_batch(x.T.contiguous())["digest"]


def test_the_data_fingerprint_ignores_the_order_of_the_samples_only():
    x, y = toy_data()
    base = fingerprint.of_batch((x, y))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    assert fingerprint.of_batch((x[order], y[order])) == base  # a shuffled loader reads the same data
    assert fingerprint.of_batch((x[order], y))["digest"] != base["digest"]  # but inputs and targets stay paired
    assert fingerprint.of_batch((x[:, [1, 0]], y))["digest"] != base["digest"]  # features keep their order
    flags = torch.tensor([True, False, True])
    assert fingerprint.of_batch(flags)["digest"] != fingerprint.of_batch(~flags)["digest"]
