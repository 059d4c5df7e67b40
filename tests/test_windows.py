"""Replica-exchange Wang-Landau with a production phase: known densities of states, honest errors, exact resume."""

import math

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from toy import RANGES, ToyModule, rms_error, toy_datamodule

from lightning_entropy import WangLandauStrategy, analysis
from lightning_entropy.core import combine
from lightning_entropy.core.landscape import Landscape
from lightning_entropy.core.windows import REFINE_MIN_TILT, Windows, auto_windows, window_bounds
from lightning_entropy.tasks.quadratic import QuadraticModule, exact_entropy, quadratic_data, quadratic_datamodule


def _fit(strategy, module, datamodule, max_steps):
    trainer = Trainer(strategy=strategy, max_steps=max_steps, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, enable_checkpointing=False)
    trainer.fit(module, datamodule=datamodule)
    return trainer.strategy


@pytest.fixture(scope="module")
def toy_walk():
    # 256 walkers cost about what 64 do here (a step of this 13-parameter net is kernel launches, not arithmetic):
    # seeds 0-3 end 0.016-0.024 nats RMS from the brute force, where 64 walkers ended 0.034-0.086 around the bar
    strategy = WangLandauStrategy(walkers=256, windows=4, box=1.0, variables=("train_loss",),
                                  observables=("test_loss",), ranges=[RANGES["ln_train_loss"]], bin_width=0.1,
                                  start="uniform", seed=0)
    return _fit(strategy, ToyModule(), toy_datamodule(), 150)


def test_windowed_walk_matches_brute_force_to_005_nats(toy_walk, exact):
    land = toy_walk.landscape
    rms, bins = rms_error(land.entropy, exact["1d"])
    assert bins >= 40
    assert rms < 0.05, f"replica-exchange WLMD is {rms:.3f} nats RMS from the brute-force log-volume"
    meta = land.metadata
    assert meta["fill"] == "visit" and meta["replicas"] == 4 and meta["windows"]["windows"] == 4
    assert land.history[-1]["production"] == 1.0 and land.history[-1]["production_blocks"] >= 20


def test_production_measures_how_often_walkers_cross_their_windows(toy_walk):
    """The toy's 13 parameters diffuse across their windows many times in production (the verdict has nothing to
    say); the estimate is production steps times the per-step mean squared x displacement over the width squared."""
    run = toy_walk._run
    crossings = run.window_crossings()
    assert crossings.shape == (16,) and (crossings >= 5).all(), crossings
    total, walker_steps, chunks = run.displacement.numpy()
    width2 = ((run.windows.x_hi - run.windows.x_lo) ** 2).numpy()
    steps = run.state.step - run.production_start
    direct = steps * total / walker_steps / width2
    assert np.all(np.isclose(crossings, direct) | (crossings == len(run.blocks)))  # saturated: one per chunk
    last = toy_walk.landscape.history[-1]
    assert last["window_crossings"] == pytest.approx(crossings.min())
    assert "slow diffusion" not in analysis.convergence(toy_walk.landscape, walkers=256).tags


def test_windows_that_sampled_one_s_fit_on_their_overlaps(toy_walk):
    """A converged windowed walk records how far its neighbouring windows disagree in shape where they overlap:
    noise, far below the verdict's 0.3 nats, and the overlap it names is one of the replica's overlaps."""
    run = toy_walk._run
    misfit, lo, hi = run.overlap_misfit()
    last = toy_walk.landscape.history[-1]
    assert 0.0 < misfit < 0.2 and last["overlap_misfit"] == pytest.approx(misfit)
    x_lo, x_hi = run.windows.x_lo.numpy(), run.windows.x_hi.numpy()
    assert any(lo == pytest.approx(x_lo[k + 1]) and hi == pytest.approx(x_hi[k]) for k in range(len(x_lo) - 1))
    assert "windows disagree" not in analysis.convergence(toy_walk.landscape, walkers=256).tags


def test_default_production_is_longer_for_a_1d_walk(toy_walk):
    """production=None: the last 60 % of a 1-D walk (the toy: 15,000 steps, frozen at step 6,000), 30 % of a 2-D
    walk; an explicit fraction is kept."""
    run = toy_walk._run
    # frozen at step 6,000; the first third of the 9,000 production steps (up to 4 rounds of 750, each ending at
    # the next 100-step chunk) refines the biases before production counts; a round that finds no window tilted
    # by REFINE_MIN_TILT ends the refinement early
    rounds = len(run.refinements)
    assert 1 <= rounds <= 4 and not run.refining
    assert toy_walk.production is None and run.production_start == 6000 + rounds * 800
    assert rounds == 4 or max(run.refinements[-1]) < REFINE_MIN_TILT
    meta = toy_walk.landscape.metadata["refinement"]
    assert meta["rounds"] == rounds and meta["steps"] == rounds * 800 and len(meta["largest_tilt"]) == rounds
    assert toy_walk.landscape.metadata["production"] == 0.6
    assert WangLandauStrategy()._production(2) == 0.3 and WangLandauStrategy(production=0.5)._production(1) == 0.5


def test_stated_errors_cover_the_true_error(toy_walk, exact):
    """The replicas' standard error is honest: the deviation from exact is within 3 stated errors in most bins,
    and the RMS deviation is not larger than twice the RMS stated error."""
    land = toy_walk.landscape
    good = (exact["1d"] >= 2000) & np.isfinite(land.entropy)
    diff = land.entropy[good] - np.log(exact["1d"][good])
    diff -= diff.mean()
    err = land.entropy_error[good]
    assert np.isfinite(err).all() and (err > 0).all()
    assert np.mean(np.abs(diff) <= 3 * err) >= 0.9
    assert np.sqrt(np.mean(diff**2)) <= 2 * np.sqrt(np.mean(err**2))
    assert land.replica_entropy.shape == (4, land.shape[0])


def test_label_free_readout_errors_come_from_replicas(toy_walk, exact):
    land = toy_walk.landscape
    readout = analysis.readouts(land)["label_free"]
    assert readout.per_replica is not None and readout.per_replica.shape == (4, land.shape[0])
    good = (exact["1d"] >= 2000) & ~readout.undersampled
    assert good.sum() >= 30
    assert np.abs(readout.value[good] - exact["mean_test"][good]).max() < 0.1


def test_readouts_count_production_only(toy_walk):
    """The per-bin observables start anew with production (the Wang-Landau phase's walkers still remember their
    starts): every recorded observation is one of the production blocks', and there are no more of them than the
    production steps allow."""
    run, land = toy_walk._run, toy_walk.landscape
    assert run.production_start < land.metadata["observables_from_step"] <= run.production_start + run.observe_every
    blocks = np.stack(run.observable_blocks)  # (blocks, 2, replicas, nx): sums and counts per production chunk
    assert land.group_obs_count.sum().item() == pytest.approx(blocks[:, 1].sum())
    assert land.obs_count.sum().item() == pytest.approx(blocks[:, 1].sum())
    most = (run.state.step - run.production_start) // run.observe_every * run.windows.walkers
    assert 0 < land.obs_count.sum().item() <= most
    readout = analysis.readouts(land)["label_free"]
    with np.errstate(invalid="ignore"):
        from_blocks = blocks[:, 0].sum((0, 1)) / blocks[:, 1].sum((0, 1))
    seen = np.isfinite(from_blocks)
    np.testing.assert_allclose(readout.value[seen], from_blocks[seen])


def test_steep_quadratic_is_accurate_and_its_errors_honest():
    """24 parameters, S spanning 54 nats over 45 bins, known in closed form: every bin reached, the error within a
    small multiple of the replicas' stated error, and a verdict of converged only if the error is small
    (benchmarks/convergence.py runs 48 and 96 parameters for two minutes)."""
    p = 24
    strategy = WangLandauStrategy(walkers=32, box=1.0, variables=("train_loss",), ranges=[(-4.5, 0.0)], seed=1)
    _fit(strategy, QuadraticModule(p), quadratic_datamodule(p), 100)
    land = strategy.landscape
    truth = exact_entropy(land.edges[0], p)
    ok = np.isfinite(truth) & np.isfinite(land.entropy)
    assert ok.sum() == land.shape[0] == 45
    d = land.entropy[ok] - truth[ok]
    d -= d.mean()
    rms = float(np.sqrt(np.mean(d**2)))
    stated = float(np.sqrt(np.nanmean(land.entropy_error[ok] ** 2)))
    # 10 seeds of this run gave 0.13-0.35 nats (before soft walls and the spread of time steps: 0.12-1.9)
    assert rms < 0.45, f"{rms:.3f} nats RMS off the closed form"
    assert rms <= 3 * stated, f"error {rms:.3f} nats RMS, but the replicas state {stated:.3f}"
    verdict = analysis.convergence(land, walkers=32)
    assert rms < 0.15 or not verdict.converged, (rms, verdict.reasons)
    # R-hat of S per bin, published with the last snapshot: its worst is the snapshot's, and the range where the
    # replicas agree lies on the grid's edges within the bins that have one
    r_hat = land.entropy_r_hat
    assert r_hat.shape == (45,) and np.nanmax(r_hat) == pytest.approx(land.history[-1]["r_hat"])
    assert verdict.rhat_bins == int(np.isfinite(r_hat).sum()) > 0
    if verdict.agreement is not None:
        lo, hi = verdict.agreement
        inside = (land.centers[0] > lo) & (land.centers[0] < hi)
        assert inside.sum() == verdict.agreement_bins and np.isfinite(r_hat[inside]).all()
        assert r_hat[inside].max() < analysis.THRESHOLDS["r_hat_max"]


def test_short_run_says_it_had_no_production():
    strategy = WangLandauStrategy(walkers=16, box=1.0, variables=("train_loss",), ranges=[RANGES["ln_train_loss"]],
                                  start="uniform", production=0.1)
    _fit(strategy, ToyModule(), toy_datamodule(), 4)
    verdict = analysis.convergence(strategy.landscape, walkers=16)
    assert not verdict.converged and "no production" in verdict.tags


@pytest.mark.parametrize("variables,at", [(("train_loss",), 6), (("train_loss", "test_loss"), 6),
                                          (("train_loss",), 2), (("train_loss",), 7)],
                         ids=["1d", "2d", "1d-before-the-move", "1d-while-refining"])
def test_windowed_resume_is_exact(tmp_path, variables, at):
    ranges = [RANGES["ln_train_loss"], RANGES["ln_test_loss"]][:len(variables)]

    def fit(max_steps, ckpt_path=None, every=None):
        callbacks = [ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=every, save_top_k=-1)] if every else []
        strategy = WangLandauStrategy(walkers=32, replicas=2, windows=4, box=1.0, variables=variables,
                                      ranges=ranges, start="uniform", seed=3,
                                      steps_per_lightning_step=20, production=0.5)
        trainer = Trainer(strategy=strategy, max_steps=max_steps, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, limit_val_batches=0, enable_checkpointing=bool(every),
                          callbacks=callbacks)
        trainer.fit(ToyModule(), datamodule=toy_datamodule(), ckpt_path=ckpt_path)
        return strategy

    # the checkpoint at 2 comes before the windows move (at 3: half the Wang-Landau phase), the one at 6 right at
    # the freeze, the one at 7 between the two rounds that refine the frozen biases (steps 7 and 8; production from
    # step 9): the diffusion measured so far, the moved windows, the refinement and the production state must
    # round-trip
    straight = fit(12, every=1)
    ckpt = next(p for p in tmp_path.glob("*.ckpt") if f"step={at}" in p.name)
    resumed = fit(12, ckpt_path=str(ckpt))
    a, b = straight._run, resumed._run
    assert a.frozen and b.frozen and a.production_start == b.production_start == 8 * 20
    assert a.refinements == b.refinements and len(a.refinements) == 2
    assert a.windows.relayouts == b.windows.relayouts == 1 and a.windows.config() == b.windows.config()
    assert torch.equal(a.mobility, b.mobility)
    for name in ("bias", "production", "reweighted", "slots", "log_f", "exchange_accepted"):
        assert torch.equal(getattr(a.windows, name), getattr(b.windows, name)), name
    assert torch.equal(straight.walker_parameters, resumed.walker_parameters)
    assert torch.equal(a.dt, b.dt)
    assert torch.equal(a.displacement, b.displacement) and float(a.displacement[1].sum()) > 0
    assert np.array_equal(straight.landscape.entropy, resumed.landscape.entropy, equal_nan=True)
    assert len(a.blocks) == len(b.blocks) and all(np.array_equal(x, y) for x, y in zip(a.blocks, b.blocks))
    assert len(a.grid_blocks) == (len(a.blocks) if len(variables) == 2 else 0) == len(b.grid_blocks)
    assert all(np.array_equal(x, y) for x, y in zip(a.grid_blocks, b.grid_blocks))


def test_the_1d_potential_equals_the_general_one_inside_outside_and_after_swaps():
    """The 1-D walk's potential (per-walker window bounds kept between reassignments) gives the same numbers as the
    general one on any grid: inside the windows, near their edges (flat bias), outside them (pull), and with the
    walkers reassigned by an exchange."""
    grid = Landscape([(-3.0, 2.0)], [50], ["ln_train_loss"], kernel_sigma=1.0)
    win = Windows(grid, 48, replicas=2, windows=3, overlap=0.5, pull=7.0)
    gen = torch.Generator().manual_seed(1)
    win.bias.copy_(torch.randn(win.bias.shape, generator=gen, dtype=torch.float64).cumsum(1) * 3.0)
    cv = (torch.rand(48, 1, generator=gen, dtype=torch.float64) * 7.0 - 4.0)  # beyond the grid on both sides
    owners = win.owner.clone()
    for _ in range(2):
        fast, fast_slope = win.potential(cv)
        slow, slow_slope = win._potential_any(cv)
        assert torch.equal(fast, slow) and torch.equal(fast_slope, slow_slope)
        assert (fast_slope.abs() <= win.max_slope + win.pull).all()
        for _ in range(4):
            win.exchange(cv.clamp(-3.0, 1.99), gen)
    assert (win.owner != owners).any()  # the second comparison ran with walkers in other windows


def test_exchange_accepts_with_the_wang_landau_probability():
    """Two windows with linear biases: a swap of walkers at x_a, x_b changes the weight by
    exp(S_a(x_a) + S_b(x_b) - S_a(x_b) - S_b(x_a)), here exp(-1) for every pair."""
    grid = Landscape([(0.0, 2.0)], [20], ["ln_train_loss"], kernel_sigma=0.0)
    m = 4000
    win = Windows(grid, 2 * m, replicas=1, windows=2, overlap=0.9, pull=1.0)
    x = grid.centers[0]
    win.bias[0] = torch.from_numpy(2.0 * x)  # slope 2 in window 0
    win.bias[1] = torch.from_numpy(1.0 * x)  # slope 1 in window 1
    cv = torch.empty(2 * m, 1, dtype=torch.float64)
    cv[win.slots[0]] = 1.05  # walkers of window 0 at x = 1.05 (bin centre), of window 1 at x = 0.05 below
    cv[win.slots[1]] = 0.05 + 0.1 * 9  # 0.95: both inside the overlap, one bin apart
    gen = torch.Generator().manual_seed(0)
    before = win.slots.clone()
    win.exchange(cv, gen)
    moved = (win.slots[0] != before[0]).float().mean().item()
    # S_0(1.05) + S_1(0.95) - S_0(0.95) - S_1(1.05) = 2.1 + 0.95 - 1.9 - 1.05 = 0.1 -> accepted always;
    assert moved == pytest.approx(1.0)
    win.bias[0] = torch.from_numpy(-8.0 * x)  # now the log ratio is -0.8 - 0.1 = -0.9
    cv2 = cv.clone()
    cv2[win.slots[0]] = 1.05
    cv2[win.slots[1]] = 0.95
    before = win.slots.clone()
    win.exchanges = 0
    win.exchange(cv2, gen)
    rate = (win.slots[0] != before[0]).float().mean().item()
    expected = math.exp(-8.0 * 1.05 + 1.0 * 0.95 + 8.0 * 0.95 - 1.0 * 1.05)
    assert rate == pytest.approx(expected, abs=0.03)
    assert sorted(win.owner.tolist()) == [0] * m + [1] * m  # swaps keep m walkers per window


def test_refine_takes_the_tilt_of_the_production_histogram_out_of_the_frozen_bias():
    """A frozen bias that is off by a linear tilt makes the production histogram exp(tilt): refine adds the fitted
    ln H to that window's bias (so the next production is flat), leaves a window whose histogram is flat alone,
    gives the thin edge bins the fit's value, clears the production and refuses an unfrozen bias."""
    grid = Landscape([(0.0, 2.0)], [20], ["ln_train_loss"], kernel_sigma=0.0)
    win = Windows(grid, 4, replicas=1, windows=2, overlap=0.5, pull=1.0)
    with pytest.raises(RuntimeError, match="freeze"):
        win.refine()
    win.bias[:] = torch.from_numpy(3.0 * grid.centers[0])
    win.freeze()
    (a0, a1), (b0, b1) = win.bin_lo[:, 0].tolist(), win.bin_hi[:, 0].tolist()  # window k: bins [a_k, b_k)
    x = grid.centers[0]
    tilted = np.exp(8.0 - 6.0 * (x[a0:b0] - x[a0]))  # 6 nats per CV unit: the low end over-visited
    tilted[-1] = 0.0  # the top bin never reached
    win.production[0, a0:b0] = torch.from_numpy(tilted)
    win.production[1, a1:b1] = 500.0
    before = win.bias.clone()
    tilt = win.refine()
    change = (win.bias - before).numpy()
    span = 6.0 * (x[b0 - 2] - x[a0])
    assert tilt[0] == pytest.approx(6.0 * (x[b0 - 1] - x[a0]), rel=0.02) and tilt[1] < 1e-6
    slope = np.diff(change[0, a0:b0]) / np.diff(x[a0:b0])
    assert np.allclose(slope, -6.0, atol=0.05), slope  # the next production: exp(-6 x) exp(6 x), flat
    assert np.allclose(change[0, :a0], 0) and np.allclose(change[0, b0:], 0)
    assert np.allclose(change[1], 0)
    assert span > 1.0 and float(win.production.sum()) == 0 and float(win.reweighted.sum()) == 0
    masks = win.window_masks()
    assert torch.equal(win.reference, torch.where(masks, win.bias, torch.tensor(-math.inf)).amax(1))


def test_refine_takes_out_a_trap_narrower_than_the_window():
    """A frozen bias with a hole of 6 nats in one bin makes production pile up there (exp(6) times the other bins):
    the quadratic fit of ln H cannot follow one bin, so the well-visited bin's own ln H corrects it, and the next
    production is flat to within what the thin bins' fit leaves."""
    grid = Landscape([(0.0, 2.0)], [20], ["ln_train_loss"], kernel_sigma=0.0)
    win = Windows(grid, 2, replicas=1, windows=1, pull=1.0)
    win.freeze()
    hist = np.full(20, 400.0)
    hist[13] = 400.0 * math.exp(6.0)
    win.production[0] = torch.from_numpy(hist)
    before = win.bias.clone()
    tilt = win.refine()
    correction = (win.bias - before)[0].numpy()
    following = np.log(hist) - correction  # ln H of the next production, up to a constant
    assert tilt[0] > 5.0 and correction[13] - np.median(correction) > 5.0
    assert np.ptp(following) < 1.0, following


def test_exchanges_keep_the_joint_distribution_of_windows_and_positions():
    """Detailed balance of the exchange: two walkers that only exchange (no moves) between two windows with different
    linear biases, both inside the overlap, spend the exact share of
    attempts in the arrangement that exp(-S_0) favours (the lower walker in window 0). 500 replicas of that pair
    run side by side (independent chains in one call), 40 exchanges each after 5 to forget the start."""
    grid = Landscape([(0.0, 2.0)], [20], ["ln_train_loss"], kernel_sigma=0.0)
    r = 500
    win = Windows(grid, 2 * r, replicas=r, windows=2, overlap=0.9, pull=1.0)
    x = grid.centers[0]
    win.bias[0::2] = torch.from_numpy(3.0 * x)
    win.bias[1::2] = 0.0
    cv = torch.tensor([[0.55], [1.45]], dtype=torch.float64).repeat(r, 1)  # per replica: walker 2i low, 2i+1 high
    assert torch.equal(win.owner[0::2] % 2, torch.zeros(r, dtype=torch.int64))  # the low walkers start in window 0
    gen = torch.Generator().manual_seed(2)
    low_in_window_0, samples = 0, 0
    for step in range(45):
        win.exchanges = 0  # the pair of windows 0 and 1 every time
        win.exchange(cv, gen)
        if step >= 5:
            low_in_window_0 += int((win.owner[0::2] % 2 == 0).sum())
            samples += r
    # weight of (low in 0, high in 1) against (high in 0, low in 1): exp(-S_0(0.55)) / exp(-S_0(1.45)) = exp(2.7)
    expected = 1 / (1 + math.exp(-3.0 * 0.9))
    assert low_in_window_0 / samples == pytest.approx(expected, abs=0.01)


def test_windows_are_laid_out_from_walkers_and_bins():
    assert auto_windows(16, 45) == 4 and auto_windows(64, 45) == 8 and auto_windows(4, 45) == 1
    assert auto_windows(12, 45) == 3  # a divisor of the walkers of a replica
    bounds = window_bounds(45, 4, 0.5)
    assert bounds[0][0] == 0 and bounds[-1][1] == 45
    assert all(b[0] < a[1] - 1 for a, b in zip(bounds, bounds[1:]))  # neighbours share at least two bins


def test_stitch_recovers_pieces_up_to_their_constants():
    truth = np.linspace(0, 30, 40)
    masks = np.zeros((3, 40), bool)
    masks[0, :16], masks[1, 12:28], masks[2, 24:] = True, True, True
    pieces = np.stack([truth + 5.0, truth - 3.0, truth + 100.0])
    joined = combine.stitch(pieces, masks, weights=np.ones((3, 40)))
    assert np.allclose(joined - joined[0], truth - truth[0])


def test_overlap_misfit_tells_a_constant_from_a_window_off_in_shape():
    """Windows that sampled one S (up to their constants and a little noise) fit on their overlaps; a window whose
    estimate bends away from S over the overlap (walkers caught at its top) does not, by about the bend's RMS."""
    rng = np.random.default_rng(0)
    truth = np.linspace(0, 30, 40)
    masks = np.zeros((3, 40), bool)
    masks[0, :16], masks[1, 12:28], masks[2, 24:] = True, True, True
    counts = np.full((3, 40), 1000.0)
    pieces = np.stack([truth + 5.0, truth - 3.0, truth + 100.0]) + rng.normal(0, 0.05, (3, 40))
    good = combine.overlap_misfit(pieces, masks, counts)
    assert good.shape == (2,) and np.all(good < 0.1)
    bent = pieces.copy()
    bent[1, 24:28] -= np.array([2.0, 5.0, 9.0, 14.0])  # window 1 off at its top, where window 2 joins it
    bad = combine.overlap_misfit(bent, masks, counts)
    d = np.array([2.0, 5.0, 9.0, 14.0])
    assert bad[0] < 0.1 and bad[1] == pytest.approx(np.std(d), abs=0.1)
    masks[2, :27] = False  # one shared bin: no shape to compare
    assert np.isnan(combine.overlap_misfit(pieces, masks, counts)[1])
    # 2-D (x-major, 6 test-axis bins): compared on x-marginals over the test bins both windows hold
    ny = 6
    masks2 = np.repeat(np.stack([np.arange(40) < 16, (np.arange(40) >= 12) & (np.arange(40) < 28),
                                 np.arange(40) >= 24]), ny, axis=1)
    shape = truth[:, None] + np.linspace(0, -3, ny)[None, :]
    flat = np.stack([(shape + c).reshape(-1) for c in (5.0, -3.0, 100.0)])
    flat[1].reshape(40, ny)[12:28, 4] = np.nan  # window 1 never reached one test bin
    weights = np.full(flat.shape, 50.0)
    assert np.all(combine.overlap_misfit(flat, masks2, weights, columns=40) < 1e-9)
    flat[1].reshape(40, ny)[24:28] -= np.array([2.0, 5.0, 9.0, 14.0])[:, None]
    bent2 = combine.overlap_misfit(flat, masks2, weights, columns=40)
    assert bent2[0] < 1e-9 and bent2[1] == pytest.approx(np.std(d), abs=0.1)


def test_rhat_separates_agreeing_and_disagreeing_replicas():
    rng = np.random.default_rng(0)
    same = rng.normal(size=(5, 4, 200))
    shifted = same.copy()
    shifted[:, 0] += 2.0
    assert np.all(combine.rhat(same) < 1.02)
    assert np.all(combine.rhat(shifted) > 1.1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(walkers=10, replicas=4), "multiple of 4"),
    (dict(replicas=0), "replicas=0"),
    (dict(windows="many"), "windows='many'"),
    (dict(production=1.0), "production=1.0"),
    (dict(fill="sometimes"), "fill='sometimes'"),
    (dict(log_f0=-1.0), "log_f0=-1.0"),
])
def test_bad_window_settings_are_refused_with_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WangLandauStrategy(**kwargs)


def test_quadratic_task_loss_is_the_stated_quadratic_form():
    x, y = quadratic_data(12, seed=3)
    module = QuadraticModule(12)
    theta = module.net[0].weight.detach().reshape(-1)
    loss = module.loss_fn(module(x), y)
    a = (x.T.double() @ x.double()) / 12
    assert float(loss) == pytest.approx(float(theta.double() @ a @ theta.double()), rel=1e-4)
    eig = torch.linalg.eigvalsh(a)
    assert float(eig.min()) == pytest.approx(1.0, rel=1e-4) and float(eig.max()) == pytest.approx(4.0, rel=1e-4)


def test_holes_inside_production_are_interpolated_and_edge_holes_take_the_shifted_bias():
    """A bin that production skipped between visited neighbours is off in the frozen bias (walkers sample
    exp(S - bias)): on a line it takes its neighbours' interpolation; a hole at a window's edge, which production
    says nothing against, takes the bias shifted onto production; both weigh next to nothing."""
    truth = np.linspace(0.0, 9.0, 10)  # S, linear in x
    bias = truth + 5.0
    bias[4] += 12.0  # one bin over-filled while ln f was large
    counts = np.array([0, 30, 40, 50, 0, 60, 70, 80, 90, 0.0])
    pieces = np.where(counts > 0, truth + 2.0, np.nan)  # production: S up to the window's constant
    reached = np.ones(10, dtype=bool)
    reached[9] = False  # never visited: stays empty
    filled, weights = combine.fill_holes(pieces[None], counts[None], reached[None], bias[None], line=True)
    assert filled[0, 4] == pytest.approx(truth[4] + 2.0)  # interpolated, not bias + shift (12 nats off)
    assert filled[0, 0] == pytest.approx(truth[0] + 2.0)  # edge hole: the bias shifted onto production
    assert np.isnan(filled[0, 9]) and weights[0, 4] == weights[0, 0] == combine.HOLE_WEIGHT
    grid, _ = combine.fill_holes(pieces[None], counts[None], reached[None], bias[None])  # 2-D grids: the bias
    assert grid[0, 4] == pytest.approx(truth[4] + 14.0)


def test_stitch_leaves_out_a_window_that_shares_no_bin():
    """A window beyond an empty one has no overlap with the joined pieces: its constant is unknown, so its bins stay
    unknown instead of being tied by a guess."""
    truth = np.linspace(0, 30, 40)
    masks = np.zeros((3, 40), bool)
    masks[0, :16], masks[1, 12:28], masks[2, 24:] = True, True, True
    pieces = np.stack([truth, np.full(40, np.nan), truth + 7.0])
    joined = combine.stitch(pieces, masks)
    assert np.allclose(joined[:16], truth[:16]) and np.isnan(joined[16:]).all()


def test_stitch_ties_2d_windows_by_their_x_marginal_when_they_share_no_bin():
    """Two 2-D windows (6 x columns, 4 test bins) overlapping on columns 2-3, where window 0's walkers visited only
    test bins 0-1 and window 1's only bins 2-3: no common bin, but the same x-marginal there. Joined by bins alone
    window 1 would be left out; by columns it is placed at its true constant."""
    x, y = np.meshgrid(np.arange(6.0), np.arange(4.0), indexing="ij")
    truth = 3.0 * x - 0.5 * (y - 1.5) ** 2  # the same test-axis shape in every column
    masks = np.zeros((2, 6, 4), bool)
    masks[0, :4, :2] = True
    masks[0, :2, :] = True  # below the overlap window 0 saw every test bin
    masks[1, 2:, 2:] = True
    masks[1, 4:, :] = True
    pieces = np.stack([truth, truth + 11.0]).reshape(2, -1)
    flat = masks.reshape(2, -1)
    assert np.isnan(combine.stitch(pieces, flat).reshape(6, 4)[4:]).all()  # bins alone: window 1 left out
    joined = combine.stitch(pieces, flat, columns=6).reshape(6, 4)
    seen = masks.any(0)
    # columns 2-3 hold half the test axis in each window: their marginals differ by the symmetric half, i.e. not at
    # all here, so the shift is exact
    assert np.allclose(joined[seen], truth[seen])


def test_label_free_picture_of_a_1d_walk_is_a_2d_landscape_without_test_labels():
    from lightning_entropy.tasks.spiral import SpiralClassifier, SpiralDataModule

    strategy = WangLandauStrategy(walkers=16, variables=("train_loss",), start="uniform", seed=0, observe_every=2,
                                  steps_per_lightning_step=50)
    _fit(strategy, SpiralClassifier(), SpiralDataModule(), 12)
    picture = strategy.picture
    assert picture is not None and picture.ndim == 2
    assert picture.names == ("ln_train_loss", "hard_test_accuracy")
    assert picture.metadata["test_labels_in_dynamics"] is False and picture.metadata["label_free_picture"]
    s = picture.entropy
    assert np.isfinite(s).sum() > 10
    # in every replica, each column's volume adds up to that replica's 1-D S of the x bin
    for grid, s1 in zip(picture.replica_entropy, strategy.landscape.replica_entropy):
        cols = np.isfinite(grid).any(1) & np.isfinite(s1)
        total = np.log(np.nansum(np.exp(np.where(np.isfinite(grid), grid, -np.inf)), axis=1))
        assert cols.sum() > 3 and np.allclose(total[cols], s1[cols], atol=1e-9)
    x, y = analysis.readouts(picture)["max_s"].x, analysis.readouts(picture)["max_s"].value
    assert x.shape == y.shape and np.isfinite(y).any()


def test_label_free_picture_of_a_regression_spans_the_held_out_losses_its_walkers_reach():
    """A loss observable (ln test MSE) gets the picture too: 0.1-nat bins, cut to the rows the walkers reached with
    an empty row on each side, so every loss recorded during the walk lies inside its axis."""
    from lightning_entropy.core import label_free
    from lightning_entropy.tasks.spiral_regression import SpiralRegressionDataModule, SpiralRegressor

    strategy = WangLandauStrategy(walkers=16, variables=("train_loss",), start="uniform", seed=0, observe_every=2,
                                  steps_per_lightning_step=50)
    _fit(strategy, SpiralRegressor(width=8), SpiralRegressionDataModule(n_points=60), 12)
    picture = strategy.picture
    assert picture is not None and picture.names == ("ln_train_loss", "ln_test_loss")
    # which observables get a picture: an accuracy, the ln of a loss; not a raw logged value (its scale is unknown)
    assert label_free.axis("hard_test_accuracy") == ((0.0, 1.0), label_free.PICTURE_BINS)
    assert label_free.axis("ln_test_loss") == (label_free.LOSS_RANGE, label_free.LOSS_BINS)
    assert label_free.axis("val_loss") is None and label_free.axis("val_mae") is None
    assert picture.metadata["test_labels_in_dynamics"] is False
    edges = picture.edges[1]
    assert np.allclose(np.diff(edges), 0.1) and 3 < len(edges) - 1 < label_free.LOSS_BINS
    assert np.allclose((edges[:-1] + 0.05) * 10, np.round((edges[:-1] + 0.05) * 10))  # centred on multiples of 0.1
    recorded = strategy.landscape.mean_curve()[1]  # the losses the walk recorded, per train-loss bin
    recorded = recorded[np.isfinite(recorded)]
    assert recorded.size > 3 and edges[0] < recorded.min() and recorded.max() < edges[-1]
    known = np.isfinite(picture.entropy)
    assert known.any() and not known[:, 0].any() and not known[:, -1].any()  # the empty rows at both ends
    # in every replica, each column's volume adds up to that replica's 1-D S of the x bin
    for grid, s1 in zip(picture.replica_entropy, strategy.landscape.replica_entropy):
        cols = np.isfinite(grid).any(1) & np.isfinite(s1)
        total = np.log(np.nansum(np.exp(np.where(np.isfinite(grid), grid, -np.inf)), axis=1))
        assert cols.sum() > 3 and np.allclose(total[cols], s1[cols], atol=1e-9)


def test_replicas_get_the_same_spread_of_starts_and_every_window_holds_starts():
    # starts as the Adam start makes them: ln L falls with the walker index (longer runs), unevenly
    grid = Landscape([(-7.0, 2.0)], [90], ["ln_train_loss"])
    x = 1.9 - 8.8 * torch.linspace(0.0, 1.0, 64) ** 2
    w = Windows(grid, 64, replicas=4, windows=4, placement="starts")
    w.assign(x)
    replica = w.replica_of
    for r in range(4):  # each replica holds the lowest, middle and highest starts alike
        mine = x[replica == r]
        assert float(mine.min()) < float(torch.quantile(x, 0.1)) and float(mine.max()) > float(torch.quantile(x, 0.9))
    inside = w.inside(x.unsqueeze(1))
    held = torch.zeros(16, dtype=torch.bool).index_put_((w.owner,), inside, accumulate=True)
    assert bool(held.all()), "placement='starts': every window (of every replica) holds walkers from the start"
    assert float(inside.double().mean()) > 0.7
    bounds = w.config()["bounds"]
    assert all(b[0] < a[1] for a, b in zip(bounds, bounds[1:])), "neighbouring windows overlap"
    assert bounds[0][0] == 0 and bounds[-1][1] == 90


def test_bunched_starts_fall_back_to_even_windows():
    grid = Landscape([(-7.0, 2.0)], [90], ["ln_train_loss"])
    w = Windows(grid, 32, replicas=2, windows=4, placement="starts")
    w.assign(torch.full((32,), 1.0))  # every walker at the module's weights
    assert w.config()["bounds"] == [list(b) for b in window_bounds(90, 4, 0.5)]
    with pytest.raises(ValueError, match="placement="):
        Windows(grid, 32, replicas=2, windows=4, placement="quantile")


def test_soft_walls_let_a_walker_out_without_depositing_and_pull_it_back():
    grid = Landscape([(0.0, 2.0)], [20], ["ln_train_loss"], kernel_sigma=0.0)
    soft = Windows(grid, 2, replicas=1, windows=2, overlap=0.5, pull=3.0, placement="even")
    hard = Windows(grid, 2, replicas=1, windows=2, overlap=0.5, pull=3.0, placement="even", walls="hard")
    x = torch.from_numpy(grid.centers[0])
    for w in (soft, hard):
        w.bias[0] = 2.0 * x  # window 0 (bins 0..13): S rising with slope 2
    inside = torch.tensor([[0.55], [1.55]], dtype=torch.float64)  # walker 0 in window 0, walker 1 in window 1
    below = torch.tensor([[-0.3], [1.55]], dtype=torch.float64)  # walker 0 below the grid, out of its window
    assert soft.admissible(below, inside).tolist() == [True, True]
    assert hard.admissible(below, inside).tolist() == [False, True]
    assert soft.deposit(below, torch.ones(2, dtype=torch.bool)).tolist() == [0.0, 1.0]  # outside: no deposit
    assert float(soft.visits[0].sum()) == 0.0
    value, slope = soft.potential(below)
    # outside: the bias flat at the first bin centre (value 2 * 0.05) plus the pull, whose slope is the only force
    assert float(value[0]) == pytest.approx(2 * 0.05 + 3.0 * 0.3)
    assert float(slope[0, 0]) == pytest.approx(-3.0)
    with pytest.raises(ValueError, match="walls='sideways'.*'soft'"):
        Windows(grid, 2, replicas=1, windows=2, walls="sideways")


def test_forces_follow_the_window_a_walker_holds_after_exchanges():
    """Every step the integrator's force must be the gradient of the potential the Metropolis test uses: after
    exchanges (and at the end of any chunk) a walker's stored force equals a fresh evaluation under its window."""
    run, evaluator, windows = _toy_run(exchange_every=1)
    assert float(windows.exchange_accepted.sum()) > 0  # walkers did change windows
    _, _, fresh = evaluator.value_and_grad(run.state.theta, windows.potential)
    torch.testing.assert_close(run.state.bias_grad, fresh, rtol=1e-4, atol=1e-6)
    from lightning_entropy.core.run import Run
    from lightning_entropy.core.samplers.wlmd import MDConfig

    grid = run.landscape
    with pytest.raises(ValueError, match="dt_spread=0.5"):
        Run(evaluator, grid, run.bound, run.state.theta, windows=Windows(grid, 16, replicas=2, windows=4),
            config=MDConfig(), seed=0, dt_spread=0.5)


def test_a_checkpoint_from_before_soft_walls_resumes_with_hard_walls():
    grid = Landscape([(0.0, 2.0)], [20], ["ln_train_loss"], kernel_sigma=0.0)
    old = Windows(grid, 8, replicas=2, windows=2, walls="hard")
    state = old.state_dict()
    del state["config"]["walls"]  # as written before the option existed
    new = Windows(grid, 8, replicas=2, windows=2)
    assert new.walls == "soft"
    new.load_state_dict(state)
    assert new.walls == "hard" and torch.equal(new.bias, old.bias)


def test_crossing_bounds_put_narrow_windows_where_crossing_is_slow():
    """Cores hold equal shares of the per-bin crossing cost: where a bin costs 10x, cores are 10x narrower."""
    from lightning_entropy.core.placement import crossing_bounds

    cost = np.r_[np.full(20, 10.0), np.ones(80)]  # 200 + 80 = 280: four cores of 70
    bounds = crossing_bounds(cost, 4, 0.5)
    assert bounds[0][0] == 0 and bounds[-1][1] == 100
    cores = [7, 14, 20 + 50]  # core edges at 70, 140 (bins 7, 14) and 210 (bin 20 + 70)
    assert bounds[0][1] == pytest.approx(cores[0] + 0.5 * (cores[1] - cores[0]), abs=1)
    assert bounds[1][0] == pytest.approx(cores[0] - 0.5 * cores[0], abs=1)
    widths = [b - a for a, b in bounds]
    assert widths[0] < widths[-1] / 3, bounds
    with pytest.raises(ValueError, match="5 windows of at least 2 bins do not fit in 8 bins"):
        crossing_bounds(np.ones(8), 5, 0.5)


def test_crossing_cost_is_the_width_over_the_root_of_the_mean_squared_displacement_per_step():
    """Chunk displacements with a drift and a known spread: the cost is width / sqrt(D), D the mean squared
    displacement per step (a drift counts as motion)."""
    from lightning_entropy.core.placement import crossing_cost

    rng = np.random.default_rng(0)
    steps, n = 100, 4000
    d_true = np.array([1e-4, 1e-2])  # per step
    moved, squared, walker_steps, chunks = (np.zeros(3) for _ in range(4))
    for b, d in enumerate(d_true):
        shift = 0.5 + rng.normal(0.0, math.sqrt(d * steps), n)  # drift 0.5 per chunk
        moved[b], squared[b], walker_steps[b], chunks[b] = shift.sum(), (shift**2).sum(), n * steps, n
    cost = crossing_cost(moved, squared, walker_steps, chunks, width=0.1)
    assert cost[:2] == pytest.approx(0.1 / np.sqrt(d_true + 0.25 / steps), rel=0.05)
    assert cost[2] == pytest.approx(cost[1])  # an unmeasured bin takes its nearest neighbour's D
    assert crossing_cost(moved[:1], squared[:1], walker_steps[:1], chunks[:1], width=0.1) is None


def test_windows_move_to_equal_crossing_times_and_replicas_stay_apart():
    """`place` moves every replica's windows to one new layout; each window's walkers are copies of walkers of its
    own replica that lay near it, its bias comes from its own replica's S, and its stage starts anew."""
    run, evaluator, windows = _toy_run(exchange_every=5)
    before = {r: run.state.theta[windows.replica_of == r].clone() for r in range(2)}
    shapes, _ = run.replica_shapes()
    bounds = run.place()
    assert windows.relayouts == 1 and len(bounds) == 4
    assert [(int(a), int(b)) for a, b in zip(windows.bin_lo[:4, 0], windows.bin_hi[:4, 0])] == bounds
    assert windows.replica_of.tolist() == [0] * 8 + [1] * 8
    for r in range(2):  # every walker of replica r is one of replica r's walkers before the move
        mine = run.state.theta[windows.replica_of == r]
        assert all((before[r] == row).all(1).any() for row in mine)
    masks = windows.window_masks()
    for e in range(8):
        inside = masks[e]
        expected = torch.from_numpy(shapes[e // 4]).to(windows.bias)
        torch.testing.assert_close(windows.bias[e][inside], expected[inside])
        assert float(windows.bias[e][~inside].abs().sum()) == 0.0
    assert float(windows.visits.sum()) == 0.0 and (windows.log_f == windows.log_f0).all()
    _, _, fresh = evaluator.value_and_grad(run.state.theta, windows.potential)  # forces follow the new windows
    torch.testing.assert_close(run.state.bias_grad, fresh, rtol=1e-4, atol=1e-6)
    run.chunk(25)
    run.freeze()
    with pytest.raises(RuntimeError, match="already frozen"):
        windows.relayout(bounds, shapes)


@pytest.mark.parametrize("bad", [1.0, -0.1, "half", True])
def test_refine_is_checked_and_zero_keeps_the_wang_landau_biases(bad):
    with pytest.raises(ValueError, match=rf"refine={bad!r}.*\[0, 1\)"):
        WangLandauStrategy(refine=bad)
    assert WangLandauStrategy().refine == pytest.approx(1 / 3)
    strategy = WangLandauStrategy(walkers=16, box=1.0, variables=("train_loss",), ranges=[RANGES["ln_train_loss"]],
                                  start="uniform", production=0.5, steps_per_lightning_step=20, refine=0)
    _fit(strategy, ToyModule(), toy_datamodule(), 8)
    run = strategy._run
    assert run.refinements == [] and run.production_start == 4 * 20 and len(run.blocks) == 4
    assert "refinement" not in strategy.landscape.metadata


def test_window_placement_is_checked_and_starts_keeps_the_windows():
    with pytest.raises(ValueError, match="window_placement='moving'.*'crossing'.*'starts'"):
        WangLandauStrategy(window_placement="moving")
    strategy = WangLandauStrategy(walkers=32, replicas=2, windows=4, box=1.0, variables=("train_loss",),
                                  ranges=[RANGES["ln_train_loss"]], start="uniform", seed=3,
                                  steps_per_lightning_step=20, window_placement="starts")
    _fit(strategy, ToyModule(), toy_datamodule(), 6)
    assert strategy._run.windows.relayouts == 0


def test_stitch_keeps_the_widest_run_of_tied_windows():
    truth = np.linspace(0, 30, 40)
    masks = np.zeros((3, 40), bool)
    masks[0, :8], masks[1, 10:30], masks[2, 26:] = True, True, True  # window 0 shares no bin with window 1
    pieces = np.stack([truth, truth + 3.0, truth - 5.0])
    joined = combine.stitch(pieces, masks)
    assert np.isnan(joined[:10]).all()
    d = joined[10:] - truth[10:]
    assert np.allclose(d, d[0])


def _toy_run(exchange_every: int):
    """A windowed run (2 replicas x 4 windows, 16 walkers) on the toy after 100 steps from uniform starts; the run,
    its evaluator and its windows."""
    from lightning_entropy.core.run import Run
    from lightning_entropy.core.samplers.wlmd import MDConfig
    from toy import toy_landscape, toy_problem

    _, _, evaluator, bound = toy_problem(1)
    grid = toy_landscape(1, groups=2)
    gen = torch.Generator().manual_seed(0)
    theta0 = (torch.rand(16, bound.numel(), generator=gen) * 2 - 1) * bound
    windows = Windows(grid, 16, replicas=2, windows=4, exchange_every=exchange_every)
    run = Run(evaluator, grid, bound, theta0, windows=windows, config=MDConfig(), seed=0)
    for _ in range(4):
        run.chunk(25)
    return run, evaluator, windows
