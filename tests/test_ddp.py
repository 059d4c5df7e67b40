"""``wang_landau_ddp``: two CPU processes (gloo, spawn) share one landscape that matches the exact log-volume; both
ranks hold the same landscape; checkpoints resume exactly on the same ranks and on another layout.

Spawning a process costs seconds, so one spawned run checks several things at once.
"""

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy, StrategyRegistry
from toy import RANGES, ToyModule, rms_error, toy_datamodule

from lightning_entropy import FlatnessOneOverT, WangLandauDDPStrategy, WangLandauStrategy
from lightning_entropy.strategies import wang_landau_ddp
from lightning_entropy.strategies.wang_landau_ddp import RankShare, deal

CHUNK = 250  # sampler steps per Lightning step
STEPS = 16  # Lightning steps: 4,000 sampler steps
WALKERS = 64  # per rank: 2 x 64 walkers, 512,000 walker-steps (the single-process test: 64 x 10,000)
RESUME_AT = 14  # the checkpoint a second run resumes from


class DumpRank(Callback):
    """Each rank writes its landscape and walkers at the end of the fit (after the strategy's final sync)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def on_fit_end(self, trainer, pl_module) -> None:
        strategy = trainer.strategy
        torch.save({"landscape": strategy.landscape.state_dict(), "theta": strategy.walker_parameters.clone(),
                    "rank": trainer.global_rank, "world": trainer.world_size},
                   Path(self.directory) / f"rank{trainer.global_rank}.pt")


class FirstWalkers(Callback):
    """Keeps the walkers as they are before the first step (after a checkpoint was restored)."""

    theta = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.theta is None:
            self.theta = trainer.strategy.walker_parameters.clone()


def _strategy(**kw):  # the single-process accuracy test's settings (tests/test_correctness.py)
    return WangLandauDDPStrategy(
        variables=("train_loss",), observables=("test_loss",), observe_every=5, walkers=WALKERS, box=1.0,
        start="uniform", seed=4, ranges=[RANGES["ln_train_loss"]], bin_width=0.1, kernel_sigma=0.5, dt=0.02,
        friction=0.01, schedule=FlatnessOneOverT(f0=0.1, flatness=0.7), steps_per_lightning_step=CHUNK,
        sync_every=4, **kw,
    )


def _fit(out: Path, max_steps: int, ckpt_dir: Path | None = None, ckpt_path: str | None = None,
         start_method: str = "spawn"):
    out.mkdir(parents=True, exist_ok=True)
    callbacks = [DumpRank(str(out))]
    if ckpt_dir is not None:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=RESUME_AT, save_top_k=-1))
    trainer = Trainer(strategy=_strategy(start_method=start_method), accelerator="cpu", devices=2,
                      max_steps=max_steps, logger=False, enable_checkpointing=ckpt_dir is not None,
                      callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(ToyModule(), datamodule=toy_datamodule(), ckpt_path=ckpt_path)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return trainer.strategy, ranks


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    strategy, ranks = _fit(base / "straight", STEPS, ckpt_dir=base / "ckpt")
    return base, strategy, ranks


def test_two_ranks_share_one_landscape_that_matches_the_exact_log_volume(straight, exact):
    _, strategy, (rank0, rank1) = straight
    assert rank0["world"] == 2 and rank1["rank"] == 1
    for key in ("bias", "visits", "obs_sum", "obs_count", "walker_steps"):  # the same landscape on both ranks
        assert torch.equal(rank0["landscape"][key], rank1["landscape"][key]), key
    assert not torch.equal(rank0["theta"], rank1["theta"])  # each rank has its own walkers
    land = strategy.landscape  # the main process received rank 0's landscape and all walkers
    assert torch.equal(land.bias, rank0["landscape"]["bias"])
    assert land.walker_steps == STEPS * CHUNK * 2 * WALKERS
    assert land.histogram.sum() == STEPS * CHUNK * 2 * WALKERS  # every rank's visits were summed
    assert land.metadata["ranks"] == 2 and land.metadata["walkers"] == 2 * WALKERS
    assert torch.equal(strategy.walker_parameters, torch.cat([rank0["theta"], rank1["theta"]]))
    rms, bins = rms_error(land.entropy, exact["1d"])
    assert bins >= 35
    assert rms < 0.15, f"2-rank WLMD entropy is {rms:.3f} nats RMS from the brute-force log-volume"
    x, mean, _ = land.observable_curve("ln_test_loss")  # observable sums are shared too
    good = exact["1d"] >= 2000
    assert np.abs(mean[good] - exact["mean_test"][good]).max() < 0.1


def test_resume_on_two_ranks_continues_exactly(straight):
    base, _, (rank0, rank1) = straight
    ckpt = next(p for p in (base / "ckpt").glob("*.ckpt") if f"step={RESUME_AT}" in p.name)
    # fork: the processes start without importing torch and Lightning again (spawn is tested above)
    _, (again0, again1) = _fit(base / "resumed", STEPS, ckpt_path=str(ckpt), start_method="fork")
    for key in ("bias", "visits", "obs_sum", "walker_steps"):
        assert torch.equal(again0["landscape"][key], rank0["landscape"][key]), key
    assert torch.equal(again0["theta"], rank0["theta"]) and torch.equal(again1["theta"], rank1["theta"])


def test_ddp_checkpoint_resumes_on_one_process_with_all_walkers(straight):
    base, _, _ = straight
    ckpt = next(p for p in (base / "ckpt").glob("*.ckpt") if f"step={RESUME_AT}" in p.name)
    saved = torch.load(ckpt, weights_only=False)["optimizer_states"][0]["sampler"]
    assert saved["walkers"] == 2 * WALKERS and saved["ddp"]["ranks"] == 2
    assert saved["state"]["theta"].shape[0] == 2 * WALKERS
    kw = dict(fill="step", variables=("train_loss",), observables=("test_loss",), walkers=2 * WALKERS, box=1.0, start="uniform",
              ranges=[RANGES["ln_train_loss"]], bin_width=0.1, kernel_sigma=0.5, steps_per_lightning_step=10)
    strategy = WangLandauStrategy(**kw)
    trainer = Trainer(strategy=strategy, accelerator="cpu", max_steps=RESUME_AT + 1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0)
    trainer.fit(ToyModule(), datamodule=toy_datamodule(), ckpt_path=str(ckpt))
    assert strategy.landscape.walker_steps == (RESUME_AT * CHUNK + 10) * 2 * WALKERS
    assert strategy.landscape.histogram.sum() == (RESUME_AT * CHUNK + 10) * 2 * WALKERS


def test_ddp_checkpoint_resumes_on_one_rank_with_the_walkers_dealt_out(straight):
    """One DDP rank of 48 walkers (in this process: start_method="popen" starts no other process) takes walkers
    0-47 of the 128 saved; the landscape and schedule continue."""
    base, _, _ = straight
    ckpt = next(p for p in (base / "ckpt").glob("*.ckpt") if f"step={RESUME_AT}" in p.name)
    saved = torch.load(ckpt, weights_only=False)["optimizer_states"][0]["sampler"]
    strategy = _strategy(start_method="popen")
    strategy.walkers = 48
    first = FirstWalkers()
    with pytest.warns(UserWarning, match="128 checkpointed walkers .* dealt out again .some are left out"):
        _fit_in_process(strategy, RESUME_AT + 1, callbacks=[first], ckpt_path=str(ckpt))
    assert torch.equal(first.theta, saved["state"]["theta"][:48])
    assert strategy.landscape.walker_steps == saved["landscape"]["walker_steps"] + CHUNK * 48


def _trained_toy_state():
    """The toy network after 300 full-batch Adam steps: its weights (and the grid found from them) differ from the
    weights a checkpoint restores into the module (walker 0's)."""
    from toy import toy_data

    torch.manual_seed(0)
    model = ToyModule()
    x, y = toy_data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        model.loss_fn(model(x[:12]), y[:12].unsqueeze(1)).backward()
        opt.step()
    return model.state_dict()


def _small(start="module", **kw):
    return WangLandauDDPStrategy(walkers=4, box=3.0, seed=2, start=start, start_steps=30, steps_per_lightning_step=20,
                                 observe_every=5, sync_every=1, **kw)


def test_resume_from_a_trained_module_on_two_ranks_continues_exactly(tmp_path):
    """start="module" from a trained module (grid ranges found from its weights): 4 Lightning steps straight against
    2 + checkpoint + 2 on two gloo processes, bit for bit on both ranks."""
    state = _trained_toy_state()

    def fit(out, ckpt_dir=None, ckpt_path=None):
        out.mkdir()
        callbacks = [DumpRank(str(out))]
        if ckpt_dir is not None:
            callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=2, save_top_k=-1))
        trainer = Trainer(strategy=_small(start_method="fork"), accelerator="cpu", devices=2, max_steps=4,
                          logger=False, enable_checkpointing=ckpt_dir is not None, callbacks=callbacks,
                          enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                          num_sanity_val_steps=0)
        model = ToyModule()
        model.load_state_dict(state)
        trainer.fit(model, datamodule=toy_datamodule(), ckpt_path=ckpt_path)
        return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]

    straight = fit(tmp_path / "straight", ckpt_dir=tmp_path / "ckpt")
    ckpt = next(p for p in (tmp_path / "ckpt").glob("*.ckpt") if "step=2" in p.name)
    saved = torch.load(ckpt, weights_only=False)["optimizer_states"][0]["sampler"]
    assert saved["setup"]["grid"]["ranges"] == saved["landscape"]["config"]["ranges"]
    resumed = fit(tmp_path / "resumed", ckpt_path=str(ckpt))
    for rank in range(2):
        for key in ("bias", "visits", "obs_sum", "walker_steps"):
            assert torch.equal(straight[rank]["landscape"][key], resumed[rank]["landscape"][key]), (rank, key)
        assert straight[rank]["landscape"]["config"] == resumed[rank]["landscape"]["config"]  # the same grid
        assert torch.equal(straight[rank]["theta"], resumed[rank]["theta"])


# -- no other processes: one rank in this process (start_method="popen" starts no other process) ---------------------


@pytest.mark.parametrize("start", ["module", "uniform", "adam", "sgd"])
def test_one_rank_resumes_exactly_from_a_trained_module_for_every_start(tmp_path, start):
    state = _trained_toy_state()

    def fit(**kw):
        model = ToyModule()
        model.load_state_dict(state)
        environ = dict(os.environ)
        try:
            trainer = Trainer(strategy=_small(start, start_method="popen"), accelerator="cpu", devices=1, max_steps=4,
                              logger=False, enable_progress_bar=False, enable_model_summary=False,
                              limit_val_batches=0, num_sanity_val_steps=0, **{k: v for k, v in kw.items()
                                                                              if k != "ckpt_path"})
            trainer.fit(model, datamodule=toy_datamodule(), ckpt_path=kw.get("ckpt_path"))
        finally:
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
            os.environ.clear()
            os.environ.update(environ)
        return trainer.strategy

    straight = fit(enable_checkpointing=True,
                   callbacks=[ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)])
    resumed = fit(enable_checkpointing=False,
                  ckpt_path=str(next(p for p in tmp_path.glob("*.ckpt") if "step=2" in p.name)))
    assert torch.equal(straight.walker_parameters, resumed.walker_parameters)
    assert torch.equal(straight.landscape.bias, resumed.landscape.bias)
    assert torch.equal(straight.landscape.visits, resumed.landscape.visits)
    for a, b in zip(straight.landscape.edges, resumed.landscape.edges):
        np.testing.assert_array_equal(a, b)


def test_a_windowed_checkpoint_does_not_resume_on_ddp_and_says_where_it_does(tmp_path):
    state = _trained_toy_state()
    model = ToyModule()
    model.load_state_dict(state)
    single = WangLandauStrategy(walkers=4, box=3.0, fill="visit", replicas=2, windows=1, steps_per_lightning_step=5)
    Trainer(strategy=single, accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path).fit(model,
                                                                                           datamodule=toy_datamodule())
    ckpt = next(tmp_path.rglob("*.ckpt"))
    with pytest.raises(ValueError, match=r"fill='visit'.*Resume it with strategy='wang_landau'"):
        _fit_in_process(_small(start_method="popen"), 2, ckpt_path=str(ckpt))



def _fit_in_process(strategy, max_steps, **kw):
    environ = dict(os.environ)  # the popen launcher exports rank variables; later tests must not see them
    try:
        trainer = Trainer(strategy=strategy, accelerator="cpu", devices=1, max_steps=max_steps, logger=False,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                          limit_val_batches=0, **{k: v for k, v in kw.items() if k != "ckpt_path"})
        trainer.fit(ToyModule(), datamodule=toy_datamodule(), ckpt_path=kw.get("ckpt_path"))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(environ)
    return trainer.strategy


def test_two_identical_ranks_deposit_like_one_process(monkeypatch):
    """Rank 0 of a pretended 2-rank run whose twin rank does exactly what it does: each rank deposits f_t / 2 per step
    and the sync sums both, so the landscape equals the one-process run's (which deposits f_t per step) and the
    walkers move identically; visits and walker steps count both ranks."""
    kw = dict(variables=("train_loss",), walkers=8, box=1.0, start="uniform", seed=3, ranges=[RANGES["ln_train_loss"]],
              bin_width=0.1, kernel_sigma=0.5, schedule={"name": "constant", "f": 0.05}, steps_per_lightning_step=1)
    single = _fit_in_process(WangLandauStrategy(**kw), 30)

    def twin_all_reduce(tensor):
        tensor.mul_(2)  # the other rank's change is the same

    def twin_all_gather_object(parts, obj):
        parts[:] = [obj] * len(parts)

    twin = SimpleNamespace(all_reduce=twin_all_reduce, all_gather_object=twin_all_gather_object)
    monkeypatch.setattr(wang_landau_ddp, "dist", twin)  # the strategy's collectives only, not Lightning's
    monkeypatch.setattr(WangLandauDDPStrategy, "_distributed", property(lambda self: True))
    monkeypatch.setattr(WangLandauDDPStrategy, "ranks", property(lambda self: 2))
    ddp = _fit_in_process(WangLandauDDPStrategy(start_method="popen", **kw), 30)
    assert torch.allclose(ddp.landscape.bias, single.landscape.bias, rtol=1e-12, atol=1e-12)
    assert float(ddp.landscape.bias.sum()) == pytest.approx(30 * 0.05)  # f_t in total per step, not N f_t
    assert torch.equal(ddp.landscape.visits, 2 * single.landscape.visits)
    assert ddp.landscape.walker_steps == 2 * single.landscape.walker_steps == 2 * 30 * 8
    assert torch.allclose(ddp.walker_parameters, single.walker_parameters)


# -- no processes needed ----------------------------------------------------------------------------------------------


def test_registered_and_not_a_single_device_strategy():
    assert StrategyRegistry["wang_landau_ddp"]["strategy"] is WangLandauDDPStrategy
    trainer = Trainer(strategy="wang_landau_ddp", accelerator="cpu", devices=2, logger=False)
    strategy = trainer.strategy
    assert isinstance(strategy, WangLandauDDPStrategy) and strategy.num_processes == 2
    assert strategy._start_method == "spawn" and strategy.launcher is not None
    # every method SingleDeviceStrategy defines is taken from DDPStrategy instead (rank 1 is not "global zero"):
    # composed from DDPStrategy, not a single-device strategy with methods pointed back by hand
    assert not issubclass(WangLandauDDPStrategy, SingleDeviceStrategy)
    for name, value in vars(SingleDeviceStrategy).items():
        if not name.startswith("__") and name not in ("register_strategies", "strategy_name", "_abc_impl"):
            assert getattr(WangLandauDDPStrategy, name) is getattr(DDPStrategy, name), name
            assert name not in vars(WangLandauDDPStrategy), name
    strategy.configure_ddp()  # never wraps the module in DistributedDataParallel
    assert strategy.model is None


def test_each_rank_deposits_its_share_of_the_factor():
    share = RankShare(FlatnessOneOverT(f0=0.4), ranks=4)
    state = share.init()
    t = torch.tensor(10)
    assert float(share.factor(state, t)) == pytest.approx(0.1)
    assert share.update(state, None, 10) is state  # decisions are taken on the shared landscape, after a sync


def test_walkers_are_dealt_out_again_on_another_layout():
    assert deal(8, 1, 4).tolist() == [4, 5, 6, 7]  # same total: each rank gets its own block
    assert deal(4, 1, 4).tolist() == [0, 1, 2, 3]  # more walkers than saved: repeat
    assert deal(16, 1, 4).tolist() == [4, 5, 6, 7]  # fewer: the rest are left out
    with pytest.raises(ValueError, match="0 walkers"):
        deal(0, 0, 4)


@pytest.mark.parametrize(("kwargs", "match"), [({"device": "cpu"}, "takes no `device`"),
                                               ({"sync_every": 0}, "sync_every=0"),
                                               ({"start_method": "thread"}, "start_method='thread'")])
def test_bad_arguments_name_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WangLandauDDPStrategy(**kwargs)


def test_command_line_runs_one_landscape_on_two_processes(tmp_path):
    """``lightning-entropy trainer.devices=2``: wang_landau_ddp with sampler.walkers on each process, the baseline
    trained in this process first (its Trainer must not travel to the spawned processes)."""
    from lightning_entropy.cli import compose_config, run

    overrides = ["trainer.devices=2", "sampler.walkers=4", "trainer.max_steps=4", "sampler.steps_per_lightning_step=5",
                 "sampler.start_steps=10", "baseline.epochs=10", "baseline.seeds=[0]", "baseline.parallel=false",
                 "trainer.progress_bar=false", "trainer.threads=1"]
    summary = run(compose_config(overrides), tmp_path, echo=lambda _: None)
    assert summary["devices"] == 2 and summary["walkers"] == 8
    assert summary["walker_steps"] == 8 * 20  # both processes' walkers deposited into the one landscape
    assert (tmp_path / "landscape.npz").is_file() and (tmp_path / "summary.json").is_file()
    assert [h["step"] for h in summary["convergence"]["history"]] == [5, 10, 15, 20]


def test_command_line_rejects_processes_for_monte_carlo(tmp_path):
    from lightning_entropy.cli import ConfigError, compose_config, run

    with pytest.raises(ConfigError, match="trainer.devices=2.*sampler=wang_landau"):
        run(compose_config(["trainer.devices=2", "sampler=wang_landau_mc"]), tmp_path)
