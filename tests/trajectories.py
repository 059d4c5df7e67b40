"""Short fixed-seed trajectories of every sampler, flattened to named numpy arrays, and their recorded references.

Each scenario returns ``{name: array}``: the walkers (positions, velocities, CVs, counters, RNG state), the
landscape's accumulators (bias, visits, observable sums, group statistics, walker steps) with its ``entropy`` and
``histogram``, and the schedule, round-trip, window or trace state, as a checkpoint holds them. ``test_trajectories``
compares a run of today's code with ``tests/data/trajectories.npz`` bit for bit, so a refactor that should change
nothing proves it changed nothing.

Regenerate the references (only at a commit whose trajectories are trusted, e.g. before a refactor)::

    python tests/trajectories.py          # writes tests/data/trajectories.npz (about a minute on a laptop CPU)

The references depend on the platform's floating point (torch version, CPU); the test skips, saying so, where the
recording's environment differs from the one it runs in.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, Trainer

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from toy import RANGES, ToyModule, toy_datamodule, toy_landscape, toy_problem  # noqa: E402

REFERENCE = HERE / "data" / "trajectories.npz"
WHOLE = ("theta", "velocity", "cv", "bias", "entropy", "histogram")  # stored whole besides their digests


def environment() -> dict[str, str]:
    """What the bits of a trajectory depend on besides the code."""
    return {"torch": torch.__version__.split("+")[0], "machine": platform.machine(), "numpy": np.__version__,
            "cpu": torch.backends.cpu.get_cpu_capability(),  # AVX2 and AVX512 kernels round differently
            "cpu_model": _cpu_model()}  # and so do two vendors' AVX512 kernels (seen: 1e-7 on every scenario)


def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def flatten(obj: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Every tensor and number below ``obj`` (dicts, lists, dataclass-like states) as a numpy array by path.
    Strings and ``None`` are left out (names, not trajectories), and so are ``metadata`` records (settings and
    timings of the run)."""
    out: dict[str, np.ndarray] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj.detach().cpu().numpy().copy()
    elif isinstance(obj, np.ndarray):
        out[prefix] = obj.copy()
    elif isinstance(obj, bool | int | float | np.generic):
        out[prefix] = np.asarray(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if k == "metadata":  # what a landscape says of its run (settings, timings), not its trajectory
                continue
            out.update(flatten(v, f"{prefix}/{k}" if prefix else str(k)))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}/{i}"))
    return out


def landscape_arrays(landscape, prefix: str = "landscape") -> dict[str, np.ndarray]:
    state = landscape.state_dict()
    state.pop("config")
    state.pop("metadata")
    out = flatten(state, prefix)
    out[f"{prefix}/entropy"] = landscape.entropy
    out[f"{prefix}/histogram"] = landscape.histogram
    return out


def digest(array: np.ndarray) -> str:
    a = np.ascontiguousarray(array)
    return hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + a.tobytes()).hexdigest()


def _fit(strategy, max_steps: int, module=None, callbacks=(), devices: int = 1):
    trainer = Trainer(strategy=strategy, max_steps=max_steps, accelerator="cpu", devices=devices, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, num_sanity_val_steps=0, callbacks=list(callbacks))
    trainer.fit(module or ToyModule(), datamodule=toy_datamodule())
    return trainer.strategy


def _sampler_state(strategy) -> dict[str, Any]:
    """The strategy's checkpointed sampler state without its ``setup`` record (grid, box, fingerprint of data and
    model: checked on resume, not part of a trajectory)."""
    return {k: v for k, v in strategy.sampler_state_dict().items() if k != "setup"}


def _strategy_arrays(strategy) -> dict[str, np.ndarray]:
    state = _sampler_state(strategy)
    out = flatten({k: v for k, v in state.items() if k != "landscape"}, "sampler")
    out.update(landscape_arrays(strategy.landscape))
    return out


# -- through the strategies -------------------------------------------------------------------------------------------


def wlmd_step() -> dict[str, np.ndarray]:
    """WLMD, the reference study's per-step factor: one 1-D landscape with a recorded observable."""
    from lightning_entropy import FlatnessOneOverT, WangLandauStrategy

    strategy = WangLandauStrategy(fill="step", variables=("train_loss",), observables=("test_loss",), walkers=8,
                                  box=1.0, start="uniform", seed=5, ranges=[RANGES["ln_train_loss"]], bin_width=0.1,
                                  kernel_sigma=0.5, schedule=FlatnessOneOverT(f0=0.1, flatness=0.3),
                                  steps_per_lightning_step=20, observe_every=5, snapshot_every=40)
    return _strategy_arrays(_fit(strategy, 6))


def wlmd_visit() -> dict[str, np.ndarray]:
    """WLMD with the default per-visit fill: replicas, windows, exchanges and a production phase."""
    from lightning_entropy import WangLandauStrategy

    strategy = WangLandauStrategy(variables=("train_loss",), observables=("test_loss",), walkers=16, replicas=2,
                                  windows=2, production=0.5, exchange_every=5, box=1.0, start="uniform", seed=6,
                                  ranges=[RANGES["ln_train_loss"]], bin_width=0.1, steps_per_lightning_step=20,
                                  observe_every=5, snapshot_every=40)
    return _strategy_arrays(_fit(strategy, 6))


def wlmc_2d() -> dict[str, np.ndarray]:
    """WLMC on a 2-D landscape (ranges found automatically), with step-size adaptation inside the run."""
    from lightning_entropy import WangLandauStrategy

    strategy = WangLandauStrategy(sampler="mc", variables=("train_loss", "test_loss"), walkers=8, box=1.0,
                                  start="uniform", seed=7, bin_width=0.2, step_size=0.05, adapt_every=10,
                                  adapt_steps=60, steps_per_lightning_step=20, snapshot_every=40)
    return _strategy_arrays(_fit(strategy, 6))


def entropy_md() -> dict[str, np.ndarray]:
    """Restrained MD from the module's weights (target: its own ln L_train), with the time step adapting."""
    from lightning_entropy import EntropyMDStrategy

    strategy = EntropyMDStrategy(walkers=8, seed=8, strength=100.0, dt=0.01, adapt_steps=60,
                                 steps_per_lightning_step=20, observe_every=5)
    strategy = _fit(strategy, 5)
    out = flatten(_sampler_state(strategy), "sampler")
    out.update({f"trace/{k}": v for k, v in strategy.trace.items()})
    return out


class DumpRank(Callback):
    """Each rank writes its landscape and walker state at the end of the fit (after the final synchronisation)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def on_fit_end(self, trainer, pl_module) -> None:
        strategy = trainer.strategy
        torch.save({"landscape": landscape_arrays(strategy.landscape), "state": flatten(strategy._state.state_dict())},
                   Path(self.directory) / f"rank{trainer.global_rank}.pt")


def ddp() -> dict[str, np.ndarray]:
    """Two spawned CPU processes (gloo) of WLMD walkers sharing one landscape; each rank's copy and walkers, and the
    state the main process received."""
    from lightning_entropy import FlatnessOneOverT, WangLandauDDPStrategy

    with tempfile.TemporaryDirectory() as directory:
        strategy = WangLandauDDPStrategy(variables=("train_loss",), observables=("test_loss",), walkers=8, box=1.0,
                                         start="uniform", seed=9, ranges=[RANGES["ln_train_loss"]], bin_width=0.1,
                                         kernel_sigma=0.5, schedule=FlatnessOneOverT(f0=0.1, flatness=0.3),
                                         steps_per_lightning_step=20, observe_every=5, snapshot_every=40,
                                         sync_every=2)
        strategy = _fit(strategy, 5, callbacks=[DumpRank(directory)], devices=2)
        out: dict[str, np.ndarray] = {}
        for rank in range(2):
            dump = torch.load(Path(directory) / f"rank{rank}.pt", weights_only=False)
            out.update({f"rank{rank}/{k}": v for k, v in dump["landscape"].items()})
            out.update({f"rank{rank}/state/{k}": v for k, v in dump["state"].items()})
    out.update(_strategy_arrays(strategy))
    return out


# -- the core without Lightning (the call shapes of the samplers and the loop) ----------------------------------------


def core_wlmd() -> dict[str, np.ndarray]:
    """``loop.run`` of WLMD on a 1-D toy landscape with an observable, as ``tests/test_correctness.py`` drives it."""
    from lightning_entropy.core import loop
    from lightning_entropy.core.box import uniform
    from lightning_entropy.core.samplers import wlmd
    from lightning_entropy.core.schedule import FlatnessOneOverT

    _, _, evaluate, bound = toy_problem(1, ("test_loss",))
    landscape = toy_landscape(1, kernel_sigma=0.5, observables=("test_loss",))
    theta0 = uniform(8, bound, torch.Generator().manual_seed(2))
    config = wlmd.MDConfig(dt=0.02, friction=0.01, metropolis=True, mass="box")
    schedule = FlatnessOneOverT(f0=0.1, flatness=0.3)
    sampler = wlmd.WLMD(evaluate, landscape, bound, config)
    state, sched = sampler.init(theta0, seed=0), schedule.init()
    for _ in range(3):
        state, sched = loop.run(sampler, state, 25, schedule=schedule, schedule_state=sched, observe_every=5)
    return {**flatten(state.state_dict(), "state"), **flatten(sched, "schedule"), **landscape_arrays(landscape)}


def core_wlmc() -> dict[str, np.ndarray]:
    """``loop.run`` of WLMC on a 2-D toy landscape, with round trips and step-size adaptation."""
    from lightning_entropy.core import loop, round_trips
    from lightning_entropy.core.box import uniform
    from lightning_entropy.core.samplers import wlmc
    from lightning_entropy.core.schedule import FlatnessOneOverT

    _, _, evaluate, bound = toy_problem(2)
    landscape = toy_landscape(2, kernel_sigma=0.0)
    theta0 = uniform(8, bound, torch.Generator().manual_seed(3))
    config = wlmc.MCConfig(step_size=0.05, adapt_every=10, adapt_steps=50)
    schedule = FlatnessOneOverT(f0=1.0, flatness=0.3)
    sampler = wlmc.WLMC(evaluate, landscape, bound, config)
    state, sched = sampler.init(theta0, seed=1), schedule.init()
    trips = round_trips.init(8, RANGES["ln_train_loss"])
    for _ in range(3):
        state, sched = loop.run(sampler, state, 25, schedule=schedule, schedule_state=sched, round_trips=trips)
    return {**flatten(state.state_dict(), "state"), **flatten(sched, "schedule"),
            **flatten(trips.state_dict(), "round_trips"), **landscape_arrays(landscape)}


def core_restrained() -> dict[str, np.ndarray]:
    """Restrained MD driven by ``loop.run`` without a schedule, observing the held-out loss."""
    from lightning_entropy.core import loop
    from lightning_entropy.core.samplers import restrained
    from lightning_entropy.core.samplers.wlmd import MDConfig

    _, layout, evaluate, bound = toy_problem(1, ("test_loss",))
    theta = (0.5 * torch.rand(layout.numel, generator=torch.Generator().manual_seed(4)) - 0.25).repeat(8, 1)
    config = restrained.RestraintConfig(-0.5, 100.0, MDConfig(dt=0.01, friction=0.05))
    sampler = restrained.RestrainedMD(evaluate, bound, config)
    state = restrained.observe(sampler.init(theta, seed=2), evaluate)
    for _ in range(3):
        state, _ = loop.run(sampler, state, 20, observe_every=5)
    return {**flatten(state.state_dict(), "state"),
            **{f"trace/{k}": v for k, v in restrained.trace_arrays(state, ("ln_test_loss",)).items()}}


SCENARIOS: dict[str, Callable[[], dict[str, np.ndarray]]] = {
    "wlmd_step": wlmd_step, "wlmd_visit": wlmd_visit, "wlmc_2d": wlmc_2d, "entropy_md": entropy_md, "ddp": ddp,
    "core_wlmd": core_wlmd, "core_wlmc": core_wlmc, "core_restrained": core_restrained,
}


def run(name: str) -> dict[str, np.ndarray]:
    """One scenario on one intra-op thread (the bits must not depend on the machine's thread count)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return SCENARIOS[name]()
    finally:
        torch.set_num_threads(previous)


def record(path: Path = REFERENCE) -> None:
    """Run every scenario and write the references: every array's digest, the walkers' positions, velocities and
    CVs and the landscapes' bias, entropy and histogram whole (a mismatch then says by how much), the environment."""
    digests, arrays = [], {}
    for name in SCENARIOS:
        for key, value in run(name).items():
            digests.append((f"{name}/{key}", digest(value)))
            if key.rsplit("/", 1)[-1] in WHOLE:
                arrays[f"{name}/{key}"] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, digests=np.array(digests), environment=np.array(sorted(environment().items())),
                        **arrays)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB, {len(SCENARIOS)} scenarios, {len(digests)} arrays)")


def load(path: Path = REFERENCE) -> tuple[dict[str, str], dict[str, str], dict[str, np.ndarray]]:
    """``(environment, digests, whole arrays)`` of the recorded references, by name."""
    with np.load(path, allow_pickle=False) as data:
        env = {str(k): str(v) for k, v in data["environment"]}
        digests = {str(k): str(v) for k, v in data["digests"]}
        arrays = {k: data[k] for k in data.files if k not in ("digests", "environment")}
    return env, digests, arrays


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "disabled")
    import trajectories  # this file as a module: the spawned DDP ranks find DumpRank under its own name

    trajectories.record()
