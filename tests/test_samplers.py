"""The one sampler shape (``init``/``step``/``finish`` over an explicit state), the state helper the walker states
share, the landscape's public accumulators, and the core's import floors."""

import ast
from pathlib import Path

import pytest
import torch
from toy import toy_landscape, toy_problem

import lightning_entropy.core
from lightning_entropy.core import loop
from lightning_entropy.core.box import uniform
from lightning_entropy.core.samplers import RestrainedMD, WLMC, WLMD, restrained, wlmc, wlmd
from lightning_entropy.core.samplers.wlmd import MDConfig, MDState
from lightning_entropy.core.schedule import Constant

pytestmark = pytest.mark.usefixtures("one_thread")

CORE = Path(lightning_entropy.core.__file__).parent


def _samplers():
    """One of each sampler on the toy problem (1-D, an observable), and walkers inside the grid."""
    _, _, evaluate, bound = toy_problem(1, ("test_loss",))
    theta0 = uniform(6, bound, torch.Generator().manual_seed(0))
    config = restrained.RestraintConfig(-0.5, 100.0, MDConfig(dt=0.01))
    return theta0, {
        "wlmd": WLMD(evaluate, toy_landscape(1, observables=("test_loss",)), bound, MDConfig()),
        "wlmc": WLMC(evaluate, toy_landscape(1, kernel_sigma=0.0, observables=("test_loss",)), bound),
        "restrained": RestrainedMD(evaluate, bound, config),
    }


@pytest.mark.parametrize("name", ["wlmd", "wlmc", "restrained"])
def test_every_sampler_has_the_one_shape_and_resumes_from_its_state_dict(name):
    theta0, samplers = _samplers()
    sampler = samplers[name]
    state = sampler.init(theta0, seed=3)
    assert state.step == 0 and torch.equal(state.theta, theta0) and state.cv.shape == (6, 1)
    factor = torch.tensor(0.1, dtype=torch.float64)
    new = sampler.step(state, factor=factor, observe=True)
    assert new is not state and new.step == 1 and state.step == 0  # a new state; the old one's tensors untouched
    saved = sampler.state_type.from_state_dict(new.state_dict(), "cpu")
    a = sampler.finish(sampler.step(new, factor=factor), 2)
    b = sampler.finish(sampler.step(saved, factor=factor), 2)
    assert torch.equal(a.theta, b.theta) and torch.equal(a.cv, b.cv)  # the state holds everything, RNG included
    if sampler.landscape is not None:  # the landscape is the in-place accumulator
        assert sampler.landscape.walker_steps == 3 * 6 and sampler.landscape.metadata["steps"] == 2
        assert float(sampler.landscape.obs_count.sum()) == 6  # the one observing step


def test_the_loop_drives_every_sampler_the_same_way():
    theta0, samplers = _samplers()
    for name, sampler in samplers.items():
        schedule = Constant(f=0.05) if sampler.landscape is not None else None
        state, schedule_state = loop.run(sampler, sampler.init(theta0, seed=0), 10, schedule=schedule,
                                         schedule_state=schedule.init() if schedule else None, observe_every=5)
        assert state.step == 10, name
        if schedule is None:
            assert schedule_state is None
    assert "isinstance" not in (CORE / "loop.py").read_text()


def test_restrained_observations_of_one_call_are_one_chunk():
    theta0, samplers = _samplers()
    sampler = samplers["restrained"]
    state = restrained.observe(sampler.init(theta0, seed=0), sampler.evaluate)  # the start: one observation
    state, _ = loop.run(sampler, state, 20, observe_every=5)
    state, _ = loop.run(sampler, state, 5, observe_every=5)
    assert [o.dim() for o in state.observed] == [2, 3, 2]  # start, the first call's four, the second call's one
    assert state.observed_steps == [0, 5, 10, 15, 20, 25]
    assert state.observations().shape == (6, 2, 6)


def test_walker_states_pool_and_take_walkers():
    theta0, samplers = _samplers()
    states = [samplers["wlmd"].init(theta0[:3], seed=1).state_dict(), samplers["wlmd"].init(theta0[3:], seed=2)
              .state_dict()]
    pooled = MDState.pool(states)
    assert MDState.walker_fields() == ("theta", "velocity", "cv", "bias_grad", "accepted", "reverted", "nonfinite")
    assert torch.equal(pooled["theta"], theta0) and torch.equal(pooled["rng"], states[0]["rng"])
    back = MDState.take(pooled, torch.tensor([3, 4, 5]), rng=states[1]["rng"])
    assert torch.equal(back["velocity"], states[1]["velocity"]) and torch.equal(back["rng"], states[1]["rng"])
    assert set(wlmc.MCState.walker_fields()) == set(samplers["wlmc"].init(theta0, seed=0).state_dict()) - {"step", "rng"}


def test_landscape_accumulators_round_trip_and_add_up():
    theta0, samplers = _samplers()
    sampler = samplers["wlmd"]
    land = sampler.landscape
    base = land.accumulator_vector()
    loop.run(sampler, sampler.init(theta0, seed=0), 10, schedule=Constant(f=0.1), schedule_state={},
             observe_every=2)
    names = list(land.accumulators())
    assert names == [*land.ACCUMULATORS, "walker_steps"]
    current = land.accumulator_vector()
    assert current.dtype == torch.float64 and current[-1] == 60
    twin = toy_landscape(1, observables=("test_loss",))
    twin.load_accumulator_vector(base + 2 * (current - base))  # two copies' changes summed, as the DDP sync does
    assert twin.walker_steps == 120 and torch.equal(twin.visits, 2 * land.visits)
    assert torch.equal(twin.obs_sum, 2 * land.obs_sum) and torch.allclose(twin.bias, 2 * land.bias)
    with pytest.raises(ValueError, match="accumulators"):
        twin.load_accumulator_vector(current[:-1])


def test_the_replaced_call_shapes_name_their_replacement():
    for module, name in ((wlmd, "init"), (wlmd, "step"), (wlmc, "init"), (wlmc, "step"), (restrained, "run")):
        with pytest.raises(AttributeError, match="one sampler shape.*use "):
            getattr(module, name)
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        wlmd.nothing  # noqa: B018


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_core_imports_only_downwards_and_has_no_circle():
    """The core imports neither Lightning nor the floors above it (strategies, callbacks, cli, the package root),
    and its modules import no circle (package ``__init__`` files only re-export: they are left out as targets)."""
    modules = {}
    for path in CORE.rglob("*.py"):
        parts = ("lightning_entropy", *path.relative_to(CORE.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        imported = _imports(path)
        above = sorted(i for i in imported if i.split(".")[0] == "lightning"
                       or (i.split(".")[0] == "lightning_entropy" and not i.startswith("lightning_entropy.core")))
        assert not above, f"{name} imports from above the core: {above}"
        graph[name] = {m for m in modules if m in imported and m != name and modules[m].name != "__init__.py"}
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, f"import circle: {' -> '.join([*trail, node, nxt])}"
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
