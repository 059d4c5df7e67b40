"""Box rules, landscape grid operations and schedules."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from lightning_entropy import Box, Landscape
from lightning_entropy.core.box import reflect
from lightning_entropy.core.schedule import Constant, FlatnessOneOverT, RampPlateauDecay, parse
from lightning_entropy.core.walkers import ParameterLayout

# -- box -----------------------------------------------------------------------------------------------------------


def test_fan_out_rule_per_tensor():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 9), nn.LayerNorm(9))
    layout = ParameterLayout.of(net)
    b = Box.parse("fan_out").bounds(layout)
    per = [b[s][0].item() for s in layout.slices]
    assert per == pytest.approx([2 / math.sqrt(4 * 9), 2 / math.sqrt(4), 2 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert Box.parse("fan_out:3").bounds(layout)[layout.slices[2]][0].item() == pytest.approx(1.0)
    assert Box.parse({"rule": "fan_out", "c": 3}) == Box.fan_out(3.0)


def test_constant_and_first_hidden_rules():
    layout = ParameterLayout.of(nn.Sequential(nn.Linear(2, 16), nn.Linear(16, 1)))
    assert torch.all(Box.parse(0.5).bounds(layout) == 0.5)
    assert torch.allclose(Box.parse("first_hidden").bounds(layout), torch.full((layout.numel,), 0.5))
    assert Box.parse(1.0).log_volume(layout) == pytest.approx(layout.numel * math.log(2.0))


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "fan_out:-2", "fan_in", True])
def test_bad_box_is_rejected_with_the_fix(bad):
    with pytest.raises((ValueError, TypeError), match="box|rule|constant"):
        Box.parse(bad)


def test_reflection_keeps_walkers_inside_and_flips_velocity():
    bound = torch.tensor([1.0, 2.0])
    theta = torch.tensor([[1.25, -2.5], [0.5, 0.0]])
    vel = torch.ones(2, 2)
    out, v = reflect(theta, vel, bound)
    assert torch.allclose(out, torch.tensor([[0.75, -1.5], [0.5, 0.0]]))
    assert torch.equal(v, torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))


# -- landscape -----------------------------------------------------------------------------------------------------


def test_deposit_mass_is_conserved_at_edges_and_counts_visits():
    land = Landscape([(0, 1), (0, 1)], [10, 10], ["x", "y"], kernel_sigma=2.0)
    cv = torch.tensor([[0.01, 0.01], [0.55, 0.95], [0.5, 0.5]])
    land.deposit(cv, torch.tensor(0.3), torch.tensor([True, True, False]))
    assert float(land.bias.sum()) == pytest.approx(0.6)
    assert land.histogram.sum() == 2 and land.histogram[0, 0] == 1 and land.histogram[5, 9] == 1
    assert np.isnan(land.entropy[5, 5]) and np.nanmax(land.entropy) == 0.0


def test_slope_is_the_gradient_of_the_interpolated_bias():
    land = Landscape([(-1, 1), (0, 2)], [8, 6], ["x", "y"])
    land.bias.copy_(torch.randn(8, 6, dtype=torch.float64))
    cv = torch.tensor([[0.13, 0.71], [-0.52, 1.33]], dtype=torch.float64)
    value, slope = land.value_and_slope(cv)
    eps = 1e-6
    for k in range(2):
        shift = torch.zeros_like(cv)
        shift[:, k] = eps
        numeric = (land.value_and_slope(cv + shift)[0] - land.value_and_slope(cv - shift)[0]) / (2 * eps)
        assert torch.allclose(slope[:, k], numeric, atol=1e-5)


def _corner_form(grid, table, cv, offset=None, lo=None, hi=None):
    """The d-dimensional corner-product interpolation, written out: the reference for the 2-D hot path."""
    n = torch.tensor(grid.shape)
    u = (cv - grid.lo) / grid.width - 0.5
    low = torch.zeros(2, dtype=u.dtype) if lo is None else lo.to(u.dtype)
    top = (n - 2).to(u.dtype) if hi is None else (hi - 2).to(u.dtype)
    i0 = torch.minimum(torch.maximum(torch.floor(u).nan_to_num(0), low), top)
    t = (u - i0).clamp(0.0, 1.0)
    corners = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    flat = ((i0.long().unsqueeze(1) + corners) * torch.tensor([grid.shape[1], 1])).sum(-1)
    if offset is not None:
        flat = flat + offset.unsqueeze(1)
    s = table[flat]
    w = torch.where(corners.bool(), t.unsqueeze(1), 1 - t.unsqueeze(1))
    sign = corners.to(s.dtype) * 2 - 1
    slope = torch.stack([(s * sign[:, k] * w[..., 1 - k]).sum(-1) / grid.width[k] for k in range(2)], -1)
    return (s * w.prod(-1)).sum(-1), slope


def test_the_2d_interpolation_equals_the_corner_products():
    """The 2-D hot path (two lerps) gives the corner-product form's value and gradient, with stacked grids
    (offsets), per-walker windows of bins, points outside the grid and non-finite CVs."""
    from lightning_entropy.core.grid import Grid

    grid = Grid([(-3.0, 2.0), (0.0, 1.0)], [25, 10], ["x", "y"])
    gen = torch.Generator().manual_seed(5)
    table = torch.randn(3 * 250, dtype=torch.float64, generator=gen)
    cv = torch.rand(64, 2, dtype=torch.float64, generator=gen) * torch.tensor([6.0, 1.4]) + torch.tensor([-3.5, -0.2])
    cv[0, 0], cv[1, 1] = float("nan"), float("inf")
    offset = torch.randint(0, 3, (64,), generator=gen) * 250
    lo = torch.stack([torch.randint(0, 10, (64,), generator=gen), torch.zeros(64, dtype=torch.int64)], -1)
    hi = lo + torch.tensor([12, 10])
    for args in ((None, None, None), (offset, None, None), (offset, lo, hi)):
        value, slope = grid.interpolate(table, cv, *args)
        ref_value, ref_slope = _corner_form(grid, table, cv, *args)
        ok = torch.isfinite(ref_value)
        assert torch.equal(ok, torch.isfinite(value))
        torch.testing.assert_close(value[ok], ref_value[ok], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(slope[ok], ref_slope[ok], rtol=1e-12, atol=1e-12)


def test_hard_wall_and_nonfinite_are_outside():
    land = Landscape([(0, 1)], [4], ["x"])
    inside = land.inside(torch.tensor([[0.5], [1.0], [-0.1], [float("nan")], [float("inf")]]))
    assert inside.tolist() == [True, False, False, False, False]


def test_save_load_round_trip(tmp_path):
    land = Landscape([(0, 1), (0, 1)], [5, 4], ["ln_train_loss", "test_accuracy"], observables=["a"],
                     metadata={"box": {"rule": "constant", "c": 1.0}})
    cv = torch.rand(7, 2)
    land.deposit(cv, torch.tensor(1.0), torch.ones(7, dtype=torch.bool))
    land.record(cv, torch.rand(7, 1), torch.ones(7, dtype=torch.bool))
    land.add_walker_steps(7)
    path = land.save(tmp_path / "l.npz")
    back = Landscape.load(path)
    assert back.names == land.names and back.metadata["box"] == {"rule": "constant", "c": 1.0}
    np.testing.assert_array_equal(back.entropy, land.entropy)
    np.testing.assert_array_equal(back.histogram, land.histogram)
    assert back.walker_steps == 7
    assert [e.tolist() for e in back.edges] == [e.tolist() for e in land.edges]


def test_readout_curves_on_a_known_grid():
    land = Landscape([(0, 2), (0, 1)], [2, 4], ["x", "y"])
    land.visits.fill_(1)
    land.bias.copy_(torch.tensor([[0, 0, 0, 0], [0, math.log(3), 0, 0]], dtype=torch.float64))
    x, ymax = land.max_entropy_curve()
    assert ymax[1] == pytest.approx(0.375)
    _, mean = land.mean_curve()
    centers = np.array([0.125, 0.375, 0.625, 0.875])
    assert mean[0] == pytest.approx(centers.mean())
    assert mean[1] == pytest.approx((centers * [1, 3, 1, 1]).sum() / 6)


def test_landscape_rejects_bad_grids():
    with pytest.raises(ValueError, match="at least 2 bins"):
        Landscape([(0, 1)], [1], ["x"])
    with pytest.raises(ValueError, match="empty or not finite"):
        Landscape([(1, 1)], [3], ["x"])


# -- schedules -----------------------------------------------------------------------------------------------------


def test_ramp_plateau_decay_formula():
    s = RampPlateauDecay(f_max=5, t_rise=100, t_drop=1000, t_off=800)
    f = s.factor({}, torch.tensor([50, 100, 500, 1000, 1800]))
    assert f.tolist() == pytest.approx([2.5, 5, 5, 5, 5 * 200 / 1000])


def test_flatness_halving_then_one_over_t():
    land = Landscape([(0, 1)], [4], ["x"])
    s = FlatnessOneOverT(f0=1.0, flatness=0.8, min_visits=5)
    st = s.init()
    land.visits.copy_(torch.tensor([10.0, 9, 10, 10]))
    st = s.update(st, land, t=100)  # flat: halve; 0.5 is still above N/t = 0.04
    assert float(st["f"]) == 0.5 and not bool(st["one_over_t"])
    land.visits.add_(torch.tensor([1.0, 10, 10, 10]))  # not flat since the halving
    st = s.update(st, land, t=101)
    assert float(st["f"]) == 0.5 and float(s.factor(st, torch.tensor(101))) == 0.5
    land.visits.copy_(torch.tensor([10.0, 9, 10, 10]))
    late = FlatnessOneOverT(f0=0.05, flatness=0.8, min_visits=5)
    st = late.update(late.init(), land, t=100)  # flat, and halving to 0.025 would undercut N/t = 0.04
    assert bool(st["one_over_t"]) and float(late.factor(st, torch.tensor(400))) == pytest.approx(0.01)


def test_flatness_ignores_a_few_rare_edge_bins():
    land = Landscape([(0, 1)], [40], ["x"])
    land.visits.fill_(100.0)
    land.visits[0] = 1
    assert land.flatness() > 0.9
    land.visits[:20] = 10
    assert land.flatness() < 0.2


def test_schedule_parse_errors_name_the_problem():
    assert parse({"name": "constant", "f": 0.5}) == Constant(0.5)
    with pytest.raises(ValueError, match="Unknown schedule 'fast'"):
        parse("fast")
    with pytest.raises(ValueError, match="t_off < t_drop"):
        RampPlateauDecay(t_drop=10, t_off=20)


# -- Monte Carlo step-size adaptation ---------------------------------------------------------------------------------


def test_mc_step_size_adapts_during_burn_in_only():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from toy import toy_landscape, toy_problem

    from lightning_entropy.core.box import uniform
    from lightning_entropy.core.samplers import wlmc

    _, _, evaluate, bound = toy_problem(1)
    landscape = toy_landscape(1, kernel_sigma=0.0)
    config = wlmc.MCConfig(step_size=0.01, adapt_every=50, adapt_steps=200)
    sampler = wlmc.WLMC(evaluate, landscape, bound, config)
    state = sampler.init(uniform(8, bound, torch.Generator().manual_seed(0)), seed=0)
    for _ in range(200):
        state = sampler.step(state, factor=torch.tensor(0.1))
    adapted = state.step_size.clone()
    assert (adapted > 0.01).all()  # tiny steps are accepted almost always: the size grew (x1.1 per window)
    for _ in range(120):
        state = sampler.step(state, factor=torch.tensor(0.1))
    assert torch.equal(state.step_size, adapted)  # production: no more adaptation


# -- the batched Linear-chain fast path of the evaluator -----------------------------------------------------------------


_CV_CASES = [
    ("cross_entropy", ("train_loss", "smooth_test_accuracy", "hard_test_accuracy"), (), 3),
    ("cross_entropy", ("train_loss", "smooth_test_accuracy"), (), 2),
    ("cross_entropy", ("train_loss",), (5,), 7),  # a sequence model: logits (N, T, V), targets (N, T)
    ("binary_cross_entropy", ("train_loss", "smooth_test_accuracy", "hard_test_accuracy"), (), 1),
    ("mse", ("train_loss", "test_loss"), (), 1),
]


@pytest.mark.parametrize("layout", ["contiguous", "class-major"])
def test_two_class_train_loss_stays_finite_below_float32_resolution(layout):
    """Deep in the low-loss region every sample's cross-entropy is below float32's resolution of 1 (margin 30:
    e^-30); the two-class form keeps ln L_train at -30 (and its gradient finite) where a log-softmax rounds every
    sample's loss to 0 and ln L to -inf."""
    from lightning_entropy.core.variables import resolve

    n = 12
    y = torch.arange(n) % 2
    margin = torch.full((2, n), 30.0)
    z1 = torch.where(y == 1, margin / 2, -margin / 2)
    logits = torch.stack([-z1, z1], dim=1)  # (W, C, N): class 1's logit minus class 0's is +-30
    out = logits.transpose(1, 2) if layout == "class-major" else logits.transpose(1, 2).contiguous()
    cv = resolve("train_loss", loss="cross_entropy")
    value, grad = cv.batched_grad(out, y)
    torch.testing.assert_close(value, torch.full((2,), -30.0), rtol=0, atol=1e-5)
    assert torch.isfinite(grad).all() and grad.shape == out.shape
    log_softmax = -torch.log_softmax(out.float(), dim=-1).gather(-1, y.view(1, -1, 1).expand(2, -1, 1)).mean((1, 2))
    assert torch.isinf(torch.log(log_softmax)).all()  # what the general form gives here


# the Linear chain's transposed output (W, N, C), class dimension outermost in storage, for the (N, C) cases
@pytest.mark.parametrize("loss,names,shape,classes,layout", [case + ("contiguous",) for case in _CV_CASES]
                         + [case + ("class-major",) for case in _CV_CASES if not case[2]])
def test_built_in_variables_on_all_walkers_equal_the_per_walker_function(loss, names, shape, classes, layout):
    """The evaluator calls a built-in CV's ``batched`` form on all walkers' outputs at once; it must give what the
    per-walker function gives under vmap, for every output layout the fast paths produce."""
    from torch.func import vmap

    from lightning_entropy.core.variables import resolve

    gen = torch.Generator().manual_seed(3)
    walkers, n = 4, 11
    if layout == "class-major":
        out = torch.randn(walkers, classes, n, generator=gen, dtype=torch.float64).transpose(1, 2)
    else:
        out = torch.randn(walkers, n, *shape, classes, generator=gen, dtype=torch.float64)
    if loss == "cross_entropy":
        y = torch.randint(0, classes, (n, *shape), generator=gen)
    elif loss == "binary_cross_entropy":
        y = torch.randint(0, 2, (n,), generator=gen).double()
    else:
        y = torch.randn(n, generator=gen, dtype=torch.float64)
    for axis in ("linear", "logit"):
        for name in names:
            cv = resolve(name, loss=loss, accuracy_axis=axis)
            assert cv.batched is not None, name
            leaf_a = out.detach().clone().requires_grad_(True)
            leaf_b = out.detach().clone().requires_grad_(True)
            got, want = cv.batched(leaf_a, y), vmap(cv.fn, in_dims=(0, None))(leaf_b, y)
            assert got.shape == (walkers,)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
            if cv.differentiable:
                (ga,) = torch.autograd.grad(got.sum(), leaf_a)
                (gb,) = torch.autograd.grad(want.sum(), leaf_b)
                torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-12)
    assert resolve(lambda out, y: out.mean(), loss=loss).batched is None  # a user's callable keeps vmap


@pytest.mark.parametrize("act", [nn.ReLU(), nn.Tanh(), nn.Sigmoid(), nn.LeakyReLU(0.1), nn.Identity()])
@pytest.mark.parametrize("loss,names", [("cross_entropy", ("train_loss",)),
                                        ("cross_entropy", ("train_loss", "test_loss")),
                                        ("mse", ("train_loss",)),
                                        ("binary_cross_entropy", ("train_loss", "test_loss")),
                                        ("cross_entropy", ("train_loss", "test_accuracy")),
                                        ("binary_cross_entropy", ("train_loss", "test_accuracy")),
                                        ("cross_entropy", ("train_loss", "logit_test_accuracy")),
                                        ("cross_entropy:2", ("train_loss", "test_accuracy")),
                                        ("cross_entropy:2", ("train_loss", "logit_test_accuracy"))])
def test_hand_written_chain_backward_matches_autograd(act, loss, names):
    """The Linear chain's hand-written backward (ln losses and the smoothed accuracy, linear or logit axis, with
    closed-form output gradients) gives the autograd path's CV values to the bit and its gradient to rounding, with
    a frozen bias in the middle of the chain; a CV without a closed form (a callable) and an activation without a
    listed derivative keep autograd."""
    from lightning_entropy.core.evaluator import Evaluator, FullBatch
    from lightning_entropy.core.variables import resolve

    torch.manual_seed(0)
    loss, _, two = loss.partition(":")  # "cross_entropy:2": two classes, whose CVs are functions of the margin
    classes = int(two or 3) if loss == "cross_entropy" else 1
    model = nn.Sequential(nn.Linear(2, 6), act, nn.Linear(6, 5), act, nn.Linear(5, classes))
    model[2].bias.requires_grad_(False)
    x, x_test = torch.randn(40, 2), torch.randn(30, 2)
    if loss == "cross_entropy":
        y, y_test = torch.randint(0, classes, (40,)), torch.randint(0, classes, (30,))
    elif loss == "mse":
        y, y_test = torch.rand(40, 1), torch.rand(30, 1)
    else:
        y, y_test = (torch.rand(40, 1) > 0.5).float(), (torch.rand(30, 1) > 0.5).float()
    layout = ParameterLayout.of(model)
    variables = [resolve(n, loss=loss) if n != "logit_test_accuracy" else
                 resolve("test_accuracy", loss=loss, accuracy_axis="logit") for n in names]
    evaluator = Evaluator(model, layout, FullBatch((x, y), (x_test, y_test)), variables)
    assert evaluator._manual and evaluator.path == "linear chain"
    theta = layout.flatten(model) + 0.3 * torch.randn(16, layout.numel)

    def bias(cv):
        slope = torch.linspace(0.5, 2.0, cv.shape[1], dtype=torch.float64).expand(cv.shape[0], -1)
        return cv.sum(-1).to(torch.float64), slope

    cv, value, grad = evaluator.value_and_grad(theta, bias)
    evaluator._manual = False
    cv_ref, value_ref, grad_ref = evaluator.value_and_grad(theta, bias)
    assert torch.equal(cv, cv_ref) and torch.equal(value, value_ref)
    assert torch.allclose(grad, grad_ref, rtol=1e-5, atol=1e-6 * float(grad_ref.abs().max()))
    assert grad.shape == (16, layout.numel) and float(grad_ref.abs().max()) > 0
    custom = Evaluator(model, layout, FullBatch((x, y), (x_test, y_test)),
                       [resolve("train_loss", loss=loss), resolve(lambda out, t: out.mean(), loss=loss)])
    assert not custom._manual  # a callable CV has no closed form
    gelu = nn.Sequential(nn.Linear(2, 4), nn.GELU(), nn.Linear(4, classes))
    assert not Evaluator(gelu, ParameterLayout.of(gelu), FullBatch((x, y), (x_test, y_test)),
                         [resolve("train_loss", loss=loss)])._manual


def test_linear_chain_fast_path_matches_the_vmap_path():
    from lightning_entropy.core.box import uniform
    from lightning_entropy.core.evaluator import Evaluator, FullBatch, linear_chain
    from lightning_entropy.core.variables import resolve
    from lightning_entropy.tasks import SpiralClassifier, SpiralDataModule

    model, dm = SpiralClassifier(), SpiralDataModule()
    assert [kind for kind, _ in linear_chain(model)] == ["linear", "act"] * 3 + ["linear"]
    assert linear_chain(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())) is None
    layout = ParameterLayout.of(model)
    data = FullBatch(train=dm.train_set.tensors, test=dm.test_set.tensors)
    variables = [resolve("train_loss", loss="cross_entropy"), resolve("test_accuracy", loss="cross_entropy")]
    fast = Evaluator(model, layout, data, variables)
    general = Evaluator(model, layout, data, variables)
    general._chain = None
    assert fast._chain is not None
    theta = uniform(5, Box.parse("fan_out").bounds(layout), torch.Generator().manual_seed(0))
    land = Landscape([(-5, 3), (0, 1)], [8, 4], ["x", "y"])
    land.bias.copy_(torch.randn(8, 4, dtype=torch.float64))
    cv_fast, value_fast, grad_fast = fast.value_and_grad(theta, land.value_and_slope)
    cv_gen, value_gen, grad_gen = general.value_and_grad(theta, land.value_and_slope)
    assert torch.allclose(cv_fast, cv_gen, atol=1e-5)
    assert torch.allclose(grad_fast, grad_gen, atol=1e-4)


def test_automatic_ranges_share_bin_edges_across_seeds():
    """Ranges found from the starts begin an ln-loss axis at a whole multiple of its bin width, so two seeds (whose
    lowest starts differ) bin alike and compare bin for bin; an explicit range and the accuracy axis are kept."""
    from lightning.pytorch import Trainer
    from toy import ToyModule, toy_datamodule

    from lightning_entropy import WangLandauStrategy
    from lightning_entropy.core import setup
    from lightning_entropy.core.variables import resolve

    edges = []
    for seed in (0, 1):
        strategy = WangLandauStrategy(walkers=8, box=1.0, variables=("train_loss",), start="uniform", seed=seed,
                                      bin_width=0.1, replicas=1, windows=1, steps_per_lightning_step=2)
        Trainer(strategy=strategy, max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                limit_val_batches=0, enable_checkpointing=False).fit(ToyModule(), datamodule=toy_datamodule())
        edges.append(strategy.landscape.edges[0])
    for e in edges:  # whatever depth each seed's starts reached
        assert e[0] / 0.1 == pytest.approx(round(e[0] / 0.1), abs=1e-6), e[0]
    shared = np.intersect1d(np.round(edges[0], 6), np.round(edges[1], 6))
    assert shared.size >= min(e.size for e in edges) - 2
    variables = [resolve("train_loss", loss="cross_entropy"), resolve("test_accuracy", loss="cross_entropy")]
    got = setup.aligned(variables, [(-3.27, 2.0), (-0.0125, 1.0125)], [0.1, 1 / 40])
    assert got[0][0] == pytest.approx(-3.3) and got[1] == (-0.0125, 1.0125)
    assert setup.aligned(variables[:1], [(-3.3, 2.0)], 0.1)[0][0] == pytest.approx(-3.3)  # already aligned
