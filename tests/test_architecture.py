"""The architecture's promises, checked without running a sampler: one source of each default (the strategies'
signatures, which the command line's schema matches), configuration errors that name ``sampler.<key>``, and imports
that only go down the floors (core < strategies < cli)."""

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

from lightning_entropy import EntropyMDStrategy, WangLandauDDPStrategy, WangLandauStrategy
from lightning_entropy.cli import ConfigError, compose_config
from lightning_entropy.cli.build import make_strategy, strategy_arguments
from lightning_entropy.cli.config import EntropyMDConfig, WangLandauConfig

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_entropy"

#: Schema fields whose default is the command line's own rule, not the strategy's (said in the schema's comments).
CLI_RULES = {"box": "null: task.box, else the sampler kind's DEFAULT_BOX"}


def _defaults(cls) -> dict:
    return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize(("schema", "strategies"), [
    (WangLandauConfig, (WangLandauStrategy, WangLandauDDPStrategy)),
    (EntropyMDConfig, (EntropyMDStrategy,)),
])
def test_every_config_field_is_a_strategy_argument_with_its_default(schema, strategies):
    signature = {}
    for cls in reversed(strategies):
        signature.update(_defaults(cls))
    for field in dataclasses.fields(schema):
        if field.name == "kind":  # which strategy runs (and, for Wang-Landau, its ``sampler`` argument)
            continue
        assert field.name in signature, f"{schema.__name__}.{field.name} is no argument of {strategies[0].__name__}"
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if field.name in CLI_RULES:
            continue
        assert default == signature[field.name], (
            f"{schema.__name__}.{field.name}={default!r}, but the strategy's default is {signature[field.name]!r}:"
            " the signature is the one source; put the command line's own value in conf/sampler/*.yaml")


def test_the_main_jobs_own_values_are_yaml_overrides():
    cfg = compose_config([])
    assert cfg.sampler.walkers == 256 and cfg.sampler.start == "adam"  # the yaml, not the schema
    assert WangLandauConfig().walkers == _defaults(WangLandauStrategy)["walkers"]


def test_the_strategy_is_built_from_the_node_generically():
    cfg = compose_config(["sampler.walkers=8"])
    arguments = strategy_arguments(cfg)
    assert set(arguments) - {"sampler"} <= set(_defaults(WangLandauStrategy))
    strategy = make_strategy(cfg)
    assert type(strategy) is WangLandauStrategy and strategy.walkers == 8 and strategy.start == "adam"


@pytest.mark.parametrize(("overrides", "key"), [
    (["sampler.threads=0"], r"sampler\.threads: threads=0"),
    (["sampler.walkers=6", "sampler.replicas=4"], r"sampler\.walkers: walkers=6 cannot be split"),
    (["sampler=entropy_md", "sampler.select=best"], r"sampler\.select: select='best'"),
])
def test_constructor_errors_name_the_config_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        make_strategy(compose_config(overrides))


#: Values the command line once checked itself, now checked by the strategy: (argument, bad value, the message's start).
API_ERRORS = [
    ("start_steps", 0, r"start_steps=0: give a positive number of optimiser steps"),
    ("start_lr", 0.0, r"start_lr=0\.0: give a positive learning rate"),
    ("accuracy_slope", -1.0, r"accuracy_slope=-1\.0: give a positive slope"),
    ("accuracy_axis", "log", r"accuracy_axis='log': use 'linear' or 'logit'"),
    ("kernel_sigma", -0.5, r"kernel_sigma=-0\.5: give a deposit width >= 0"),
    ("wall_strength", -1.0, r"wall_strength=-1\.0: give a number >= 0"),
    ("bin_width", [0.0], r"bin_width=\[0\.0\]: give one positive width"),
    ("schedule", 5, r"schedule=5 is not a schedule"),
    ("heldout", "train", r"heldout='train': use 'val'"),
]


@pytest.mark.parametrize(("key", "value", "message"), API_ERRORS)
def test_the_api_user_gets_the_command_lines_error(key, value, message):
    with pytest.raises((ValueError, TypeError), match=message):
        WangLandauStrategy(**{key: value})
    override = f"sampler.{key}={value!r}".replace("'", "").replace(" ", "")
    with pytest.raises(ConfigError, match=rf"sampler\.{key}: {message}"):
        make_strategy(compose_config([override]))


def test_heldout_is_checked_by_every_constructor_that_takes_it():
    from lightning_entropy.baseline import BaselineRecorder

    for build in (WangLandauStrategy, EntropyMDStrategy, BaselineRecorder):
        with pytest.raises(ValueError, match=r"heldout='train': use 'val' \(val_dataloader\) or 'test'"):
            build(heldout="train")


# -- imports only go down ---------------------------------------------------------------------------------------------

#: Floors from the bottom; a module may import its own floor and those below it.
FLOORS = ("core", "strategies", "cli")


def _imports() -> dict[str, set[str]]:
    """Every module of the package (dotted, without ``lightning_entropy.``) and the package modules it imports,
    at module level or inside functions."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in names.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [f"{node.module}.{a.name}" for a in node.names]
                modules = [m if m[len("lightning_entropy."):] in names else node.module for m in modules]
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            else:
                continue
            for module in modules:
                if module == "lightning_entropy":
                    found.add("")
                elif module.startswith("lightning_entropy."):
                    inner = module[len("lightning_entropy."):]
                    while inner and inner not in names:
                        inner = inner.rpartition(".")[0]
                    found.add(inner)
        graph[name] = found - {name}
    return graph


def _floor(module: str) -> int | None:
    top = module.split(".")[0]
    return FLOORS.index(top) if top in FLOORS else None


def test_no_floor_imports_a_higher_one():
    wrong = []
    for module, targets in _imports().items():
        mine = _floor(module)
        if mine is None:
            continue
        for target in targets:
            theirs = _floor(target)
            if target == "" or (theirs is not None and theirs > mine):
                wrong.append(f"{module} imports {target or 'the package root'}")
    assert not wrong, wrong


def test_the_floor_test_would_catch_an_upward_import():
    assert _floor("core.run") < _floor("cli.job")
    assert "strategies.wang_landau" in _imports()["strategies.wang_landau_ddp"]


def test_no_import_circle():
    graph = _imports()
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = set()
            while True:
                w = stack.pop()
                on.discard(w)
                part.add(w)
                if w == v:
                    break
            if len(part) > 1:
                circles.append(part)

    for v in graph:
        if v not in index:
            visit(v)
    assert circles == [], f"import circles (a lazy import inside a function counts too): {circles}"


def test_the_task_registry_arrows_point_down():
    graph = _imports()
    assert "cli.targets" in graph["cli.config"] and "cli.targets" in graph["cli.tasks"]  # both ask the one below
    assert "cli.tasks" not in graph["cli.instantiate"] and "cli.config" not in graph["cli.instantiate"]


def test_the_schema_knows_every_task_of_the_registry():
    from lightning_entropy.cli.targets import TASK_NAMES
    from lightning_entropy.cli.tasks import TASKS

    assert TASK_NAMES == tuple(TASKS)
