"""Readouts with uncertainties, the advantage against a baseline, and convergence figures (lightning_entropy.analysis)."""

import json
import math

import numpy as np
import pytest
import torch

from lightning_entropy import analysis
from lightning_entropy.baseline import pool
from lightning_entropy.core import round_trips
from lightning_entropy.core.landscape import Landscape


def _grid(groups=4, observables=()):
    # x: ln L_train in [-5, -1) by 0.5 (8 bins); y: accuracy in [0, 1) by 0.1 (10 bins)
    return Landscape([(-5.0, -1.0), (0.0, 1.0)], [8, 10], ["ln_train_loss", "test_accuracy"], kernel_sigma=0.0,
                     groups=groups, observables=observables)


def _fill(land, s, visits_per_group):
    """Set S and the visit histograms directly (as a converged run would leave them)."""
    land.bias.copy_(torch.as_tensor(s, dtype=torch.float64))
    v = torch.as_tensor(visits_per_group, dtype=torch.float64)
    land.recent_visits[0].copy_(v)
    land.visits.copy_(v.sum(0))


def test_round_trips_count_end_to_end_crossings():
    state = round_trips.init(3, (0.0, 10.0), end_fraction=0.1)  # ends: x <= 1 and x >= 9
    path = [
        [0.5, 5.0, 9.5],
        [5.0, 5.0, 5.0],
        [9.5, 5.0, 0.5],  # walker 0 crosses up; walker 2 crosses down
        [0.5, 9.5, 0.5],  # walker 0 back down: one round trip; walker 1 now at the high end (first end: no crossing)
        [0.8, 0.2, 9.9],  # walker 1 crosses down; walker 2 up again: a round trip
    ]
    for x in path:
        round_trips.update(state, torch.tensor(x))
    assert state.crossings.tolist() == [2, 1, 2]
    assert state.round_trips.tolist() == [1, 0, 1]
    again = round_trips.RoundTripState.from_state_dict(state.state_dict(), "cpu")
    assert again.crossings.tolist() == [2, 1, 2] and again.last_end.tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="x_range"):
        round_trips.init(2, (1.0, 1.0))


def test_deposits_count_visits_per_walker_group():
    land = Landscape([(0.0, 1.0)], [4], ["ln_train_loss"], kernel_sigma=0.0, groups=2)
    cv = torch.tensor([[0.1], [0.1], [0.9], [0.6]])  # walkers 0, 2 -> group 0; walkers 1, 3 -> group 1
    land.deposit(cv, 1.0, torch.ones(4, dtype=torch.bool))
    assert land.recent_visits[0].tolist() == [[1, 0, 0, 1], [1, 0, 1, 0]]
    assert land.visits.tolist() == [2, 0, 1, 1]
    with pytest.raises(ValueError, match="groups=0"):
        Landscape([(0.0, 1.0)], [4], ["x"], groups=0)


def test_snapshot_measures_the_change_of_s_and_rolls_the_recent_histograms():
    land = Landscape([(0.0, 1.0)], [4], ["ln_train_loss"], kernel_sigma=0.0, groups=2)
    land.visits.fill_(5)
    land.recent_visits[0].fill_(3)
    first = land.snapshot(100)
    assert math.isnan(first["s_change"]) or first["s_change"] == 0.0
    land.bias += 7.0  # a constant shift is no change of S
    assert land.snapshot(200)["s_change"] == pytest.approx(0.0)
    land.bias += torch.tensor([0.0, 0.2, 0.0, 0.2], dtype=torch.float64)
    entry = land.snapshot(300, round_trips=4)
    assert entry["s_change"] == pytest.approx(0.1)  # deviations +-0.1 around the mean shift
    assert entry["round_trips"] == 4 and entry["step"] == 300
    assert land.recent_visits[0].sum() == 0 and land.recent_visits[1].sum() == 0  # rolled twice since filled
    assert [h["step"] for h in land.history] == [100, 200, 300]
    again = Landscape.from_state_dict(land.state_dict())
    assert again.history == land.history and again.groups == 2


def test_save_load_keeps_group_statistics_and_history(tmp_path):
    land = _grid(groups=3, observables=("hard_test_accuracy",))
    land.deposit(torch.tensor([[-4.2, 0.55], [-2.1, 0.75], [-2.1, 0.75]]), 0.5, torch.ones(3, dtype=torch.bool))
    land.record(torch.tensor([[-4.2, 0.55], [-2.1, 0.75], [-2.1, 0.75]]), torch.tensor([[0.5], [0.7], [0.9]]),
                torch.ones(3, dtype=torch.bool))
    land.snapshot(10, round_trips=1)
    land.entropy_r_hat = np.array([np.nan, 1.2, 1.01, np.nan, 1.0, 1.03, np.nan, np.nan])  # as a run publishes it
    back = Landscape.load(land.save(tmp_path / "l.npz"))
    for key in ("recent_visits", "group_obs_sum", "group_obs_count", "snapshot_bias"):
        assert torch.equal(getattr(back, key), getattr(land, key)), key
    np.testing.assert_array_equal(back.entropy_r_hat, land.entropy_r_hat)  # NaN where unknown, kept as NaN
    assert json.dumps(back.history) == json.dumps(land.history)  # NaN-safe
    assert float(back.group_obs_sum[0, 2].sum()) == pytest.approx(0.9)  # walker 2 is group 2


def test_readouts_find_max_s_and_eq1_with_error_bars_and_flag_thin_columns():
    land = _grid(groups=4)
    y = land.centers[1]
    peak = np.linspace(0.25, 0.85, 8)  # the max-S test accuracy rises as the train loss falls... per x bin
    s = -((y[None, :] - peak[:, None]) ** 2) / (2 * 0.1**2)
    rng = np.random.default_rng(0)
    visits = rng.poisson(200, size=(4, 8, 10)).astype(float)
    visits[:, 7, :] = 0  # the last column: only one group, few visits
    visits[0, 7, 4] = 3
    _fill(land, s, visits)
    reads = analysis.readouts(land, exclude=1)
    max_s, eq1 = reads["max_s"], reads["mean_curve"]
    well = ~max_s.undersampled
    assert well[:7].all() and max_s.undersampled[7]
    nearest = y[np.argmin(np.abs(y[None, :] - peak[:, None]), axis=1)]
    assert np.allclose(max_s.value[:7], nearest[:7])
    w = np.exp(s - s.max(axis=1, keepdims=True))
    w[:, [0, 9]] = 0  # the excluded outer rows
    assert np.allclose(eq1.value[:7], ((w * y).sum(1) / w.sum(1))[:7])
    # group errors exist, are small for well-sampled columns, and shrink with more visits
    assert np.isfinite(eq1.error[:7]).all() and (eq1.error[:7] < 0.02).all()
    land2 = _grid(groups=4)
    more = rng.poisson(20000, size=(4, 8, 10)).astype(float)  # 100x the visits: relative noise 10x smaller
    _fill(land2, s, more)
    assert np.nanmean(analysis.readouts(land2)["mean_curve"].error[:7]) < 0.3 * np.nanmean(eq1.error[:7])
    assert np.isnan(max_s.drift).all()  # no snapshot yet


def test_readout_drift_is_the_change_since_the_last_snapshot():
    land = _grid(groups=2)
    y = land.centers[1]
    s = -((y[None, :] - 0.45) ** 2) / 0.02 + np.zeros((8, 1))
    _fill(land, s, np.full((2, 8, 10), 50.0))
    land.snapshot(100)
    moved = -((y[None, :] - 0.65) ** 2) / 0.02 + np.zeros((8, 1))
    land.bias.copy_(torch.as_tensor(moved))
    land.add_walker_steps(50)
    drift = analysis.readouts(land)["max_s"].drift
    assert np.allclose(drift, 0.2)
    # a snapshot taken at the end of the run: the drift is against the snapshot before it, not zero
    land.snapshot(150)
    assert np.allclose(analysis.readouts(land)["max_s"].drift, 0.2)


def _records(values_by_seed, xs):
    return [{"seed": seed, "ln_train_loss": x, "test_metric": v} for seed, vals in enumerate(values_by_seed)
            for x, v in zip(xs, vals)]


def test_advantage_is_signed_by_the_metric_and_uses_only_bins_both_cover():
    land = _grid(groups=4)
    x = land.centers[0]
    readout = analysis.Readout("max_s", x, np.full(8, 0.8), np.full(8, 0.01), np.full(8, np.nan),
                               np.array([False] * 6 + [True, False]))
    # three seeds with records only in bins 2..7
    recs = _records([[0.70] * 6, [0.72] * 6, [0.74] * 6], x[2:])
    base = pool(recs, metric="test_metric", edges=land.edges[0])
    assert base.seeds[2:].tolist() == [3] * 6 and base.sem[2] == pytest.approx(0.02 / math.sqrt(3))
    acc = analysis.advantage(readout, base, higher_is_better=True)
    assert acc.used.tolist() == [False, False, True, True, True, True, False, True]  # bin 6 under-sampled
    assert acc.mean_advantage == pytest.approx(0.08)
    assert acc.mean_advantage_drift is None  # no snapshot: the drift is unknown
    drifting = analysis.Readout("max_s", x, readout.value, readout.error, np.full(8, 0.03), readout.undersampled)
    assert analysis.advantage(drifting, base, higher_is_better=True).mean_advantage_drift == pytest.approx(0.03)
    assert analysis.advantage(drifting, base, higher_is_better=False).mean_advantage_drift == pytest.approx(-0.03)
    per_bin_err = math.sqrt(0.01**2 + (0.02 / math.sqrt(3)) ** 2)
    assert acc.mean_advantage_error == pytest.approx(per_bin_err / math.sqrt(5))
    loss = analysis.advantage(readout, base, higher_is_better=False)  # e.g. ln test loss: lower is better
    assert loss.mean_advantage == pytest.approx(-0.08)
    window = x < -2.5
    assert analysis.advantage(readout, base, higher_is_better=True, in_window=window).used.sum() == 3
    summary = acc.summary()
    assert summary["bins"] == 5 and len(summary["per_bin"]) == 5 and summary["metric"] == "test_metric"
    one_seed = pool(_records([[0.7] * 6], x[2:]), metric="test_metric", edges=land.edges[0])
    assert any("fewer than two seeds" in n for n in analysis.advantage(readout, one_seed,
                                                                       higher_is_better=True).notes)
    wrong = pool(recs, metric="test_metric", width=0.1)
    with pytest.raises(ValueError, match="edges=landscape.edges"):
        analysis.advantage(readout, wrong, higher_is_better=True)


def test_convergence_verdict_lists_every_failed_test():
    land = _grid(groups=2)
    _fill(land, np.zeros((8, 10)), np.full((2, 8, 10), 10.0))
    verdict = analysis.convergence(land, walkers=8)
    assert not verdict.converged and any("fewer than two snapshots" in r for r in verdict.reasons)
    land.snapshot(100, round_trips=2, walkers_with_round_trip=2)
    land.bias += torch.linspace(0, 1, 80, dtype=torch.float64).reshape(8, 10)
    land.snapshot(200, round_trips=3, walkers_with_round_trip=3)
    verdict = analysis.convergence(land, walkers=8)
    text = " ".join(verdict.reasons)
    assert "S still moves" in text and "3 of 8 walkers" in text and "flat" not in text
    land.snapshot(300, round_trips=9, walkers_with_round_trip=6)
    verdict = analysis.convergence(land, walkers=8)
    assert verdict.converged and verdict.reasons == [] and verdict.snapshots == 3
    assert verdict.summary()["history"][-1]["walkers_with_round_trip"] == 6


def test_verdict_says_how_much_longer_a_slowly_diffusing_production_must_be():
    land = _grid(groups=2)
    _fill(land, np.zeros((8, 10)), np.full((2, 8, 10), 10.0))
    windowed = dict(round_trips=9, walkers_with_round_trip=8, flatness=0.5, r_hat=1.01, r_hat_above=0.0,
                    production=1.0, production_blocks=10.0, empty_windows=0.0)
    land.snapshot(100, **windowed, window_crossings=0.25, slowest_window_lo=-4.0, slowest_window_hi=-3.0)
    land.snapshot(200, **windowed, window_crossings=0.5, slowest_window_lo=-4.0, slowest_window_hi=-3.0)
    verdict = analysis.convergence(land, walkers=8)
    assert not verdict.converged and verdict.tags == ["slow diffusion"]
    assert "-4.00 to -3.00" in verdict.reasons[0] and "0.5 times" in verdict.reasons[0]
    assert "10x longer" in verdict.reasons[0]
    land.snapshot(300, **windowed, window_crossings=6.0, slowest_window_lo=-4.0, slowest_window_hi=-3.0)
    assert analysis.convergence(land, walkers=8).converged


def test_verdict_names_windows_whose_s_disagree_in_shape_on_their_overlap():
    land = _grid(groups=2)
    _fill(land, np.zeros((8, 10)), np.full((2, 8, 10), 10.0))
    windowed = dict(round_trips=9, walkers_with_round_trip=8, flatness=0.5, r_hat=1.01, r_hat_above=0.0,
                    production=1.0, production_blocks=10.0, empty_windows=0.0, window_crossings=6.0,
                    slowest_window_lo=-4.0, slowest_window_hi=-3.0)
    land.snapshot(100, **windowed, overlap_misfit=2.66, misfit_lo=-1.2, misfit_hi=0.0)
    land.snapshot(200, **windowed, overlap_misfit=2.66, misfit_lo=-1.2, misfit_hi=0.0)
    verdict = analysis.convergence(land, walkers=8)
    assert not verdict.converged and verdict.tags == ["windows disagree"]
    assert "2.7 nats RMS over ln L_train -1.20 to 0.00" in verdict.reasons[0] and "(> 0.3)" in verdict.reasons[0]
    land.snapshot(300, **windowed, overlap_misfit=0.11, misfit_lo=-1.2, misfit_hi=0.0)
    assert analysis.convergence(land, walkers=8).converged


def test_width_table_sorts_runs_by_size():
    rows = analysis.width_table([
        {"task": "mnist", "parameters": 1002, "advantage": {"mean_advantage": 0.01}, "convergence": {"converged": 0}},
        {"task": "mnist", "parameters": 362, "advantage": {"mean_advantage": 0.06, "mean_advantage_error": 0.01},
         "convergence": {"converged": True}},
    ])
    assert [r["parameters"] for r in rows] == [362, 1002]
    assert rows[0]["mean_advantage"] == 0.06 and rows[0]["converged"] is True


def _label_free(blocks):
    """A 1-D landscape of 4 replicas whose label-free sums per production block are ``blocks`` (B, 2, 4, 8)."""
    land = Landscape([(-5.0, -1.0)], [8], ["ln_train_loss"], kernel_sigma=0.0, groups=4,
                     observables=("test_accuracy",))
    sums = blocks.sum(0)  # (2, R, nx)
    land.group_obs_sum[0].copy_(torch.as_tensor(sums[0]))
    land.group_obs_count.copy_(torch.as_tensor(sums[1]))
    land.obs_sum[0].copy_(torch.as_tensor(sums[0].sum(0)))
    land.obs_count.copy_(torch.as_tensor(sums[1].sum(0)))
    land.recent_visits[0].copy_(torch.as_tensor(sums[1]))
    land.visits.copy_(torch.as_tensor(sums[1].sum(0)))
    land.replica_entropy = np.zeros((4, 8))
    land.replica_blocks = blocks
    return land


def _flat_baseline():
    """A baseline of three seeds at 0.70-0.72 on 8 bins of ln L_train -5..-1, and the bins' centres."""
    x = np.linspace(-4.75, -1.25, 8)
    return x, pool(_records([[0.70] * 8, [0.72] * 8, [0.71] * 8], x), metric="test_metric",
                   edges=np.linspace(-5.0, -1.0, 9))


def _accuracy_blocks(rng, offsets, blocks=64):
    """``(B, 2, R, nx)`` label-free production sums and counts: accuracy 0.8 plus each replica's offset plus noise."""
    count = np.full((blocks, 4, 8), 50.0)
    accuracy = 0.8 + np.asarray(offsets)[None, :, None] + rng.normal(0, 0.02, (blocks, 4, 8))
    return np.stack([accuracy * count, count], axis=1)


def test_advantage_over_a_fixed_range_compares_runs_whose_grids_start_apart():
    land = _grid(groups=4)
    x = land.centers[0]  # -4.75 ... -1.25
    base = pool(_records([[0.70] * 8, [0.72] * 8, [0.74] * 8], x), metric="test_metric", edges=land.edges[0])
    # the advantage is larger at the lowest train losses, as on the spiral; run "far" reached the two lowest bins,
    # run "near" did not (its grid started higher): the same landscape otherwise
    value = np.where(x < -4.0, 0.82, 0.74)
    far = analysis.Readout("label_free", x, value, np.full(8, 0.01), np.full(8, np.nan), np.zeros(8, dtype=bool))
    near = analysis.Readout("label_free", x, value, np.full(8, 0.01), np.full(8, np.nan), x < -4.0)
    everywhere = [analysis.advantage(r, base, higher_is_better=True).mean_advantage for r in (far, near)]
    assert everywhere[0] == pytest.approx(0.04) and everywhere[1] == pytest.approx(0.02)  # the bins, not the runs
    fixed = [analysis.advantage(r, base, higher_is_better=True, x_range=[-4.0, None]) for r in (far, near)]
    assert [a.mean_advantage for a in fixed] == pytest.approx([0.02, 0.02])
    assert [int(a.used.sum()) for a in fixed] == [6, 6] and not fixed[0].notes
    assert fixed[0].summary()["x_range"] == [-4.0, None]
    lower = analysis.advantage(near, base, higher_is_better=True, x_range=[-5.0, -2.0])
    assert lower.used.sum() == 4  # -3.75 ... -2.25
    assert any("start at -3.75: the mean covers less than asked" in n for n in lower.notes), lower.notes
    with pytest.raises(ValueError, match="lo must be below hi"):
        analysis.advantage(far, base, higher_is_better=True, x_range=[-2.0, -3.0])
    # a range from a grid's own edge covers its first bin, whose centre is a float sum (-2.4 + 0.05 bins: the edge
    # came out 4e-16 above -2.4 and the run said it covered less than asked)
    edges = -2.4 + 0.1 * np.arange(9)
    x = 0.5 * (edges[1:] + edges[:-1])
    grid = pool(_records([[0.70] * 8, [0.72] * 8, [0.74] * 8], x), metric="test_metric", edges=edges)
    readout = analysis.Readout("label_free", x, np.full(8, 0.8), np.full(8, 0.01), np.full(8, np.nan),
                               np.zeros(8, dtype=bool))
    assert not analysis.advantage(readout, grid, higher_is_better=True, x_range=[-2.4, edges[-1]]).notes


def test_advantage_r_hat_comes_from_replicas_and_production_blocks():
    """Replicas that sample the same conditional means give R-hat near 1; one replica stuck elsewhere (its own,
    wrong bias) gives a large R-hat, although each replica's blocks agree with each other."""
    rng = np.random.default_rng(0)
    _, base = _flat_baseline()

    def blocks(offsets):
        return _accuracy_blocks(rng, offsets)

    agree = analysis.readouts(_label_free(blocks([0, 0, 0, 0]))).get("label_free")
    assert agree.per_block.shape == (4, min(analysis.BLOCK_DRAWS, 64), 8)
    fine = analysis.advantage(agree, base, higher_is_better=True)
    assert fine.mean_advantage == pytest.approx(0.09, abs=0.01)
    assert fine.mean_advantage_r_hat < 1.05
    assert fine.summary()["mean_advantage_r_hat"] == fine.mean_advantage_r_hat
    stuck = analysis.advantage(analysis.readouts(_label_free(blocks([0, 0, 0, 0.05])))["label_free"], base,
                               higher_is_better=True)
    assert stuck.mean_advantage_r_hat > 1.2
    few = _label_free(blocks([0, 0, 0, 0])[:3])  # three blocks: no R-hat, and no claim of one
    assert analysis.advantage(analysis.readouts(few)["label_free"], base,
                              higher_is_better=True).mean_advantage_r_hat is None


def test_2d_readouts_r_hat_comes_from_each_replicas_production_mass():
    """A 2-D walk's max-S line and Eq. (1) per replica and group of production blocks depend on each column's
    p(y | x) only: arbitrary constants per block, replica and column change nothing; replicas whose conditionals
    agree give R-hat near 1, one replica whose conditional sits 0.1 higher gives a large one."""
    rng = np.random.default_rng(1)
    x = np.linspace(-4.75, -1.25, 8)
    y = np.linspace(0.05, 0.95, 10)
    base = pool(_records([[0.60] * 8, [0.62] * 8, [0.61] * 8], x), metric="test_metric",
                edges=np.linspace(-5.0, -1.0, 9))

    def landscape(offsets):
        land = _grid()
        centre = 0.7 + np.asarray(offsets)[None, :, None, None]  # (1, R, 1, 1)
        p = np.exp(-0.5 * ((y - centre) / 0.12) ** 2) * rng.gamma(50.0, 1 / 50.0, (16, 4, 8, 10))
        scale = np.exp(rng.normal(0, 5.0, (16, 4, 8, 1)))  # reweighting constants per block, replica, column
        land.replica_grid_blocks = p * scale  # (B, R, nx, ny)
        total = np.log((p * scale).sum(0))
        land.replica_entropy = total
        _fill(land, total.mean(0), np.full((4, 8, 10), 10.0))
        return land

    agree = analysis.readouts(landscape([0, 0, 0, 0]))
    for name in ("max_s", "mean_curve"):
        assert agree[name].per_block.shape == (4, min(analysis.BLOCK_DRAWS, 16), 8)
        fine = analysis.advantage(agree[name], base, higher_is_better=True)
        assert fine.mean_advantage_r_hat is not None and fine.mean_advantage_r_hat < 1.05, name
    assert np.allclose(agree["mean_curve"].per_block, 0.7, atol=0.03)
    stuck = analysis.readouts(landscape([0, 0, 0, 0.1]))
    for name in ("max_s", "mean_curve"):
        assert analysis.advantage(stuck[name], base, higher_is_better=True).mean_advantage_r_hat > 1.2, name


def test_a_readout_whose_replicas_have_not_mixed_fails_the_verdict():
    """with_readouts adds each advantage's R-hat across replicas to a verdict: a readout at or above the threshold
    turns a converged landscape's verdict into NOT converged, naming the readout; one below it, or without an
    R-hat (no replicas), changes nothing."""
    rng = np.random.default_rng(1)
    x, base = _flat_baseline()

    def label_free(offsets):
        land = _label_free(_accuracy_blocks(rng, offsets))
        return analysis.advantage(analysis.readouts(land)["label_free"], base, higher_is_better=True)

    converged = analysis.Convergence(0.5, 0.01, 100.0, 64.0, 64, 20, True, [], [], dict(analysis.THRESHOLDS), [])
    mixed, stuck = label_free([0, 0, 0, 0]), label_free([0, 0, 0, 0.03])
    assert mixed.mean_advantage_r_hat < 1.05 <= stuck.mean_advantage_r_hat
    assert analysis.with_readouts(converged, {"label_free": mixed}).converged
    verdict = analysis.with_readouts(converged, {"label_free": stuck})
    assert not verdict.converged and verdict.tags == ["readout not mixed"]
    assert "label-free Eq. (1)" in verdict.reasons[0] and f"{stuck.mean_advantage_r_hat:.3f}" in verdict.reasons[0]
    no_replicas = analysis.Advantage("label_free", "m", True, x, x, x, x > 0, 0.1, 0.01, None, [], None)
    assert analysis.with_readouts(converged, {"label_free": no_replicas}).converged


def test_a_readout_that_disagrees_bin_by_bin_fails_the_verdict_though_its_mean_passes():
    """One replica reads 0.03 high in the four lowest bins and 0.03 low in the four highest: the mean over the bins
    agrees across replicas (its R-hat passes), the curve does not. with_readouts applies S's per-bin test to each
    readout's per-bin R-hat (no bin at 1.1, at most 5 % at 1.05) and names the readout; agreeing replicas pass."""
    rng = np.random.default_rng(2)
    x, base = _flat_baseline()
    count = np.full((64, 4, 8), 50.0)
    offsets = np.zeros((4, 8))
    offsets[3, :4], offsets[3, 4:] = 0.03, -0.03
    accuracy = 0.8 + offsets[None] + rng.normal(0, 0.02, (64, 4, 8))
    tilted = analysis.readouts(_label_free(np.stack([accuracy * count, count], axis=1)))["label_free"]
    adv = analysis.advantage(tilted, base, higher_is_better=True)
    assert adv.mean_advantage_r_hat < 1.05 and np.nanmax(tilted.r_hat) >= 1.1
    converged = analysis.Convergence(0.5, 0.01, 100.0, 64.0, 64, 20, True, [], [], dict(analysis.THRESHOLDS), [])
    assert analysis.with_readouts(converged, {"label_free": adv}).converged  # the mean alone: passes
    verdict = analysis.with_readouts(converged, {"label_free": adv}, {"label_free": tilted})
    assert not verdict.converged and verdict.tags == ["readout not mixed"]
    assert "label-free Eq. (1) disagrees across replicas bin by bin" in verdict.reasons[0]
    assert "of 8 bins" in verdict.reasons[0]
    mixed = analysis.readouts(_label_free(_accuracy_blocks(rng, [0, 0, 0, 0])))["label_free"]
    assert analysis.with_readouts(converged, {}, {"label_free": mixed}).converged


def test_the_per_bin_r_hat_test_passes_mixed_readouts_and_fails_a_persistent_offset():
    """Perfectly mixed readouts (independent draws, 4 replicas x 32 draws, 52 bins) pass the per-bin test in nearly
    every run: a fixed 5 % share at 1.05 failed about one in five of them, so the allowance counts what chance
    alone reaches with so few draws. A replica that keeps an offset of one noise sigma in every bin still fails."""
    from lightning_entropy.core.combine import rhat

    rng = np.random.default_rng(7)
    th = dict(analysis.THRESHOLDS)
    runs, bins = 60, 52
    mixed = rhat(rng.normal(size=(runs * bins, 4, 32))).reshape(runs, bins)
    passed = [analysis.bin_test(r, 4, 32, th).passed for r in mixed]
    fixed_share = [np.mean(r >= 1.05) <= 0.05 and r.max() < 1.1 for r in mixed]
    assert sum(passed) >= 57, sum(passed)
    assert sum(fixed_share) <= 56  # what the allowance corrects (about 49 of 60)
    offset = rng.normal(size=(runs * bins, 4, 32))
    offset[:, 0] += 1.0
    failed = [not analysis.bin_test(r, 4, 32, th).passed for r in rhat(offset).reshape(runs, bins)]
    assert sum(failed) >= 59
    # with many draws chance is negligible and the fixed share is the rule
    assert analysis.bin_test(mixed[0], 4, 200, th).allowed == int(0.05 * bins)


def test_a_failed_r_hat_test_says_how_much_longer_production_must_be_at_least():
    """The factor brings the bins that must fall (the third worst of 54 below 1.05, the worst below 1.1) there if
    R-hat - 1 fell as 1 / length; replicas that mix slowly (AR(1) chains, correlation time 1,000 draws' worth of
    samples) fall more slowly, so a production half that much longer still fails: the factor is a lower bound."""
    from scipy.signal import lfilter

    from lightning_entropy.core.combine import rhat

    th = dict(analysis.THRESHOLDS)
    r = np.full(54, 1.01)
    r[:8] = [1.207, 1.16, 1.147, 1.134, 1.133, 1.122, 1.11, 1.08]
    test = analysis.bin_test(r, 4, None, th)
    assert not test.passed and test.allowed == 2
    assert test.longer == pytest.approx(0.147 / 0.05)
    assert "at least 2.9x this production" in test.describe(th, None)
    fine = analysis.bin_test(np.full(54, 1.01), 4, None, th)
    assert fine.passed and fine.longer == 1.0 and "at least" not in fine.describe(th, None)

    rng = np.random.default_rng(3)
    a = np.exp(-1.0 / 1000)

    def block_means(samples: int) -> np.ndarray:  # (52 bins, 4 replicas, 32 draws), stationary AR(1) chains
        noise = rng.normal(size=(52, 4, samples)) * np.sqrt(1 - a * a)
        start = a * rng.normal(size=(52, 4, 1))
        chains = lfilter([1.0], [1.0, -a], noise, axis=-1, zi=start)[0]
        return chains[..., : samples // 32 * 32].reshape(52, 4, 32, -1).mean(-1)

    short = analysis.bin_test(rhat(block_means(6400)), 4, 32, th)
    assert not short.passed and short.longer > 4
    half = analysis.bin_test(rhat(block_means(int(6400 * short.longer / 2))), 4, 32, th)
    assert not half.passed


def test_r_hat_chance_rate_matches_simulation_and_too_few_draws_are_named():
    """The chance that a mixed quantity's R-hat reaches a level, from the F distribution of split R-hat, against
    simulated independent draws; with 8 draws per replica the per-bin test cannot judge, and the verdict says why."""
    from lightning_entropy.core.combine import rhat, rhat_null_rate

    rng = np.random.default_rng(3)
    for chains, draws in ((2, 32), (4, 16)):
        simulated = np.mean(rhat(rng.normal(size=(3000, chains, draws))) >= 1.05)
        assert abs(simulated - rhat_null_rate(1.05, chains, draws)) < 0.03, (chains, draws, simulated)
    assert rhat_null_rate(1.05, 4, 200) < 1e-6
    short = analysis.readouts(_label_free(_accuracy_blocks(rng, [0, 0, 0, 0], blocks=8)))["label_free"]
    assert short.per_block.shape[:2] == (4, 8)
    converged = analysis.Convergence(0.5, 0.01, 100.0, 64.0, 64, 20, True, [], [], dict(analysis.THRESHOLDS), [])
    verdict = analysis.with_readouts(converged, {}, {"label_free": short})
    assert not verdict.converged
    assert "8 production draws per replica are too few to judge" in verdict.reasons[0]
    assert "more steps or a larger `production`" in verdict.reasons[0]


def test_not_converged_mark_is_never_under_a_legend():
    """A 1-D landscape with its per-bin observable draws on a twin axes whose legend used to cover the mark in the
    corner: the mark is then the legend's title; without a legend it is a box on the topmost axes."""
    from lightning_entropy import plotting

    land = Landscape([(-3.0, 2.0)], [50], ["ln_train_loss"], observables=["hard_test_accuracy"])
    x = torch.tensor(land.centers[0], dtype=torch.float64).unsqueeze(1)
    land.bias += torch.linspace(-60.0, 0.0, 50, dtype=torch.float64)
    land.visits += 10.0
    land.record(x, torch.linspace(0.9, 0.5, 50, dtype=torch.float64).unsqueeze(1), torch.ones(50, dtype=torch.bool))
    verdict = analysis.convergence(land, walkers=8)
    assert not verdict.converged
    for legend in (True, False):
        fig = plotting.Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        plotting.draw_landscape(fig, ax, land, convergence=verdict, legend=legend)
        twin = [a for a in fig.axes if a is not ax][-1]
        legends = [a.get_legend() for a in fig.axes if a.get_legend() is not None]
        boxes = [t for a in fig.axes for t in a.texts if t.get_text().startswith("NOT CONVERGED")]
        if legend:
            assert len(legends) == 1 and legends[0].get_title().get_text().startswith("NOT CONVERGED")
            assert boxes == []
        else:
            assert legends == [] and len(boxes) == 1 and boxes[0].axes is twin


def test_the_verdict_names_the_range_where_the_replicas_agree():
    """Per-bin R-hat of S (published by the run) and of the readout (from the replicas' production blocks) give the
    longest run of bins where the replicas agree: a readout stuck apart in the two lowest bins, and then S
    disagreeing in one bin, each narrow it; without a per-bin R-hat there is no range to claim."""
    rng = np.random.default_rng(2)
    offsets = np.zeros((4, 8))
    offsets[3, :2] = 0.05  # replica 3 reads 0.05 higher in the two lowest bins for the whole production
    accuracy = 0.8 + offsets[None] + rng.normal(0, 0.02, (64, 4, 8))
    count = np.full((64, 4, 8), 50.0)
    land = _label_free(np.stack([accuracy * count, count], axis=1))
    reads = analysis.readouts(land)
    r_hat = reads["label_free"].r_hat
    assert (r_hat[:2] > 1.2).all() and (r_hat[2:] < 1.05).all()
    edges = land.edges[0]

    assert analysis.convergence(land, walkers=64, readouts=reads).agreement is None  # no R-hat of S published
    land.entropy_r_hat = np.full(8, 1.01)
    assert analysis.agreement(land) == ((0, 8), 8)  # S alone: every bin
    verdict = analysis.convergence(land, walkers=64, readouts=reads)
    assert verdict.agreement == [edges[2], edges[8]] and verdict.agreement_bins == 6 and verdict.rhat_bins == 8
    land.entropy_r_hat[5] = 1.3  # S disagrees in bin 5: bins 2-4 are the longest run left
    assert analysis.agreement(land, reads) == ((2, 5), 8)
    land.entropy_r_hat[5] = 1.07  # one bin of six at 1.05-1.1 is more than the 5 % the verdict allows ...
    assert analysis.agreement(land, reads) == ((2, 5), 8)
    land.entropy_r_hat[:] = np.nan  # ... and bins without an R-hat of S are never claimed
    assert analysis.agreement(land, reads) == (None, 0)
    assert analysis.convergence(land, walkers=64, readouts=reads).summary()["agreement"] is None
