"""Shared helpers for the benchmark scripts (timing, the spiral task, driving the WLMD sampler by hand).

Every benchmark prints ratios measured inside one run (the machine is shared and noisy, absolute times are only
indicative). A setup is timed in several blocks of calls, interleaved with the setups it is compared with (A B A B
...). Two estimates of a ratio are printed: from the FASTEST block of each side (best-of-N: load from other
processes only ever adds time, so the fastest block is the least disturbed), and the median over rounds of the
ratio of neighbouring blocks (both sides saw about the same load). Verdicts use the LESS favourable of the two.

Environment:
    BENCH_THREADS     intra-op threads (default 2, the machine's cores), the same for every setup.
    OMP_WAIT_POLICY   defaults to PASSIVE here (set before torch loads). With the default spin-waiting OpenMP
                      threads, a 2-thread process on 2 cores that other processes also use slows down erratically
                      (10-100x on tiny ops); PASSIVE keeps timings meaningful on a shared machine. Set
                      OMP_WAIT_POLICY=ACTIVE to measure the spin policy on a quiet machine.
"""

from __future__ import annotations

import inspect
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the first torch import (see above)

import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402

THREADS = int(os.environ.get("BENCH_THREADS", "2"))


def set_threads() -> None:
    """Use the same number of intra-op threads everywhere (default 2, the machine's cores)."""
    torch.set_num_threads(THREADS)


def load() -> float:
    """1-minute load average (other processes compete for the cores when it exceeds the core count)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def machine() -> str:
    text = (
        f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads,"
        f" OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}), python {platform.python_version()},"
        f" load average {load():.1f}"
    )
    if load() > (os.cpu_count() or 1):
        text += "  [WARNING: machine busy, ratios are noisier than usual]"
    return text


def timed_block(fn: Callable[[], None], calls: int) -> float:
    """Seconds per call of ``fn`` over ``calls`` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def calibrate(fn: Callable[[], None], target_s: float = 0.3, max_calls: int = 100_000) -> int:
    """Number of calls that take about ``target_s`` seconds (after one warm-up call)."""
    fn()
    once = timed_block(fn, 1)
    calls = max(1, int(target_s / max(once, 1e-6)))
    if calls > 3:
        once = timed_block(fn, min(calls, 20))
        calls = max(1, int(target_s / max(once, 1e-6)))
    return min(calls, max_calls)


def seconds_per_call(fn: Callable[[], None], *, repeats: int = 5, target_s: float = 0.3) -> tuple[float, list[float]]:
    """Best (fastest) seconds per call over ``repeats`` blocks (plus all block values)."""
    calls = calibrate(fn, target_s)
    blocks = [timed_block(fn, calls) for _ in range(repeats)]
    return min(blocks), blocks


def interleaved(
    fns: dict[str, Callable[[], None]], *, repeats: int = 5, target_s: float = 0.3, budget_s: float | None = None
) -> dict[str, list[float]]:
    """Seconds per call of each function, measured in interleaved blocks (A B C A B C ...).

    ``budget_s`` caps the wall time on a busy machine: once it is spent, no further round starts (at least two
    rounds always run).
    """
    start = time.perf_counter()
    calls = {name: calibrate(fn, target_s) for name, fn in fns.items()}
    out: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(repeats):
        if budget_s is not None and i >= 2 and time.perf_counter() - start > budget_s:
            break
        for name, fn in fns.items():
            out[name].append(timed_block(fn, calls[name]))
    return out


def best(blocks: list[float]) -> float:
    return min(blocks)


def paired_median(num: list[float], den: list[float]) -> float:
    """Median over interleaved rounds of ``num[i] / den[i]`` (blocks measured next to each other in time)."""
    return statistics.median(a / b for a, b in zip(num, den))


def spread(blocks: list[float]) -> str:
    """How much slower the median block was than the best one (a noise indicator)."""
    return f"+{statistics.median(blocks) / min(blocks) - 1:.0%}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def table(rows: list[list], headers: list[str]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- the WLMD sampler, driven by hand -------------------------------------------------------------------------------


def md_sampler(evaluator, landscape, bound, config):
    """The WLMD sampler across the call shapes the library has had: the ``WLMD`` object, or (before it) the module
    functions ``wlmd.init``/``wlmd.step`` wrapped in the same ``init``/``step`` shape."""
    from lightning_entropy.core.samplers import wlmd

    if hasattr(wlmd, "WLMD"):
        return wlmd.WLMD(evaluator, landscape, bound, config)

    class Functions:
        def init(self, theta, *, seed):
            if "landscape" in inspect.signature(wlmd.init).parameters:
                return wlmd.init(theta, evaluator, landscape, seed=seed)
            return wlmd.init(theta, evaluator, seed=seed)

        def step(self, state, *, factor, observe=False):
            return wlmd.step(state, evaluate=evaluator, landscape=landscape, bound=bound, factor=factor, config=config)

    return Functions()


class MDLoop:
    """The strategy's inner loop without Lightning: schedule factor, ``WLMD.step``, repeated."""

    def __init__(self, evaluator, landscape, bound, theta0, *, seed: int = 0, f0: float = 0.1, config=None):
        from lightning_entropy.core import schedule
        from lightning_entropy.core.samplers import wlmd

        self.evaluator, self.landscape, self.bound = evaluator, landscape, bound
        self.config = config or wlmd.MDConfig()
        self.sampler = md_sampler(evaluator, landscape, bound, self.config)
        self.schedule = schedule.FlatnessOneOverT(f0=f0)
        self.schedule_state = self.schedule.init(theta0.device)
        self.state = self.sampler.init(theta0, seed=seed)

    def step(self) -> None:
        t = torch.tensor(self.state.step + 1)
        factor = self.schedule.factor(self.schedule_state, t)
        self.state = self.sampler.step(self.state, factor=factor)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()

    def chunk(self, steps: int) -> None:
        """``steps`` steps then the schedule update, exactly as the strategy's ``run_chunk`` does."""
        self.run(steps)
        self.schedule_state = self.schedule.update(self.schedule_state, self.landscape, self.state.step)


# -- the spiral task --------------------------------------------------------------------------------------------------


def spiral_setup(variables=("train_loss", "test_accuracy")):
    """The 116-parameter spiral classifier, its 40/40 data, CVs, a vectorized evaluator, the box and a landscape."""
    from lightning_entropy.core.box import Box
    from lightning_entropy.core.evaluator import Evaluator, FullBatch
    from lightning_entropy.core.landscape import Landscape
    from lightning_entropy.core.variables import resolve
    from lightning_entropy.core.walkers import ParameterLayout
    from lightning_entropy.tasks import SpiralClassifier, SpiralDataModule

    torch.manual_seed(0)
    model = SpiralClassifier(width=6, depth=3)
    dm = SpiralDataModule()
    train, test = dm.train_set.tensors, dm.test_set.tensors
    net = model.net
    layout = ParameterLayout.of(net)
    cvs = [resolve(v, loss="cross_entropy") for v in variables]
    evaluator = Evaluator(net, layout, FullBatch(train=train, test=test), cvs, vectorize=True)
    bound = Box.parse("fan_out").bounds(layout)

    def landscape():
        ranges = [(-8.0, 3.0), (-0.5 / 40, 1 + 0.5 / 40)][: len(cvs)]
        bins = [110, 41][: len(cvs)]
        return Landscape(ranges, bins, [c.name for c in cvs], kernel_sigma=1.0)

    return dict(model=model, dm=dm, net=net, layout=layout, cvs=cvs, train=train, test=test, evaluator=evaluator,
                bound=bound, landscape=landscape)


def uniform_walkers(walkers: int, bound: torch.Tensor, seed: int = 1) -> torch.Tensor:
    from lightning_entropy.core.box import uniform

    return uniform(walkers, bound, torch.Generator().manual_seed(seed))


# -- the roofline: this machine's dense-GEMM rate, measured in the same run -----------------------------------------


def gemm_gflops(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, size: int = 1024,
                seconds: float = 0.5) -> float:
    """Dense GEMM rate of this machine (``size`` x ``size`` float32 products, best block), in GFLOP/s, with the
    thread setting in force: the bound a benchmark's achieved GFLOP/s is compared with."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def product() -> None:
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()

    best_s, _ = seconds_per_call(product, repeats=5, target_s=seconds / 5)
    return 2 * size**3 / best_s / 1e9


def count_flop(fn: Callable[[], object]) -> float:
    """Floating-point operations of one call of ``fn``, counted by ``torch.utils.flop_counter`` (matrix products
    and convolutions, forward and backward; elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def roofline(flop: float, seconds: float, peak_gflops: float) -> str:
    """``achieved GFLOP/s (x% of the GEMM peak)`` for ``flop`` done in ``seconds``."""
    achieved = flop / seconds / 1e9 if seconds > 0 else float("nan")
    return f"{achieved:.2f} GFLOP/s ({achieved / peak_gflops:.1%} of the {peak_gflops:.0f} GFLOP/s GEMM peak)"


def dispatch_profile(fn: Callable[[], object]) -> tuple[int, float]:
    """``(operations, bytes)``: the aten operations one call of ``fn`` dispatches (forward, backward and everything
    around them, below autograd) and the bytes of the tensors they return: the work a step is made of when it is
    too small for its arithmetic to matter."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops, self.bytes = 0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.ops += 1
            self.bytes += sum(t.numel() * t.element_size() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
            return out

    with Count() as counter:
        fn()
    return counter.ops, float(counter.bytes)


def op_floor_seconds(calls: int = 2000) -> float:
    """The fixed cost of one dispatched operation on this machine: an in-place add on a one-element tensor (best
    block). A step of ``n`` operations cannot take less than ``n`` times this, whatever its arithmetic."""
    x = torch.zeros(1)

    def ops() -> None:
        for _ in range(calls):
            x.add_(1.0)

    best_s, _ = seconds_per_call(ops, repeats=5, target_s=0.05)
    return best_s / calls


def copy_gbs(elements: int = 8 * 2**20) -> float:
    """Memory bandwidth of a float32 copy (bytes read plus written per second, best block), in GB/s."""
    a, b = torch.randn(elements), torch.empty(elements)
    best_s, _ = seconds_per_call(lambda: b.copy_(a), repeats=5, target_s=0.1)
    return 2 * 4 * elements / best_s / 1e9


def bound(flop_share: float, byte_share: float, dispatch_share: float, ops: int, seconds: float, floor: float) -> str:
    """What bounds a step: the limit whose share of the step's time is largest, if it explains at least half of it
    (its FLOP at the GEMM rate, its output bytes at the copy bandwidth, its operations at the per-operation floor);
    otherwise the operations' own overhead above the floor (allocation, kernel set-up, small-tensor paths)."""
    shares = {"arithmetic (FLOP at the GEMM rate)": flop_share, "memory (output bytes at the copy bandwidth)":
              byte_share, "dispatch (operations at the per-operation floor)": dispatch_share}
    name = max(shares, key=shares.get)
    parts = (f"arithmetic {flop_share:.1%}, memory {byte_share:.0%}, the dispatch floor {dispatch_share:.0%} of the"
             " step")
    if shares[name] >= 0.5:
        return f"{name}, {shares[name]:.0%} of the step ({parts})"
    per_op = seconds / max(ops, 1)
    what = ("per-operation overhead (allocation, set-up, small-tensor paths)" if per_op < 10 * floor else
            "kernel efficiency on these shapes (operations far above the floor, yet neither their FLOP nor their bytes"
            " explain their time)")
    return (f"{what}: {ops} operations at {per_op * 1e6:.1f} us each on average, {per_op / floor:.1f}x the floor of"
            f" a one-element operation ({parts})")
