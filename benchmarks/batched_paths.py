"""Walker-batched programs against vmap and the per-walker loop, per model family, with the roofline.

Compared, in WLMD steps (``WLMD.step``: evaluator forward and backward, integrator, reflection, landscape deposit)
of one run, interleaved blocks (A B C A B C ...), 2-D CVs (ln train cross-entropy, smoothed test accuracy):
  MNIST CNN, 2 channels, 250/250 images, 32 walkers: batched program vs vmap (the issue's target: >= 5x today's
      walker-steps/s; today = the vmap path)
  char_lm (width 16, 256/256 windows of 16) and modular_arithmetic (p = 23), 16 walkers: batched vs the per-walker
      loop (target: >= 2x) and vs vmap
Each row also prints the achieved GFLOP/s (FLOP of a step counted by torch.utils.flop_counter) against the dense-GEMM
rate measured in the same run. Ratios: the less favourable of best-block/best-block and the median of paired blocks.
Run: ``python benchmarks/batched_paths.py [--quick]`` (BENCH_THREADS=1 for one thread each side).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  (first: sets the OpenMP policy before torch loads)

import torch  # noqa: E402


def setup(name: str, walkers: int, quick: bool):
    from lightning_entropy.core.box import Box
    from lightning_entropy.core.evaluator import Evaluator, FullBatch
    from lightning_entropy.core.landscape import Landscape
    from lightning_entropy.core.variables import resolve
    from lightning_entropy.core.walkers import ParameterLayout

    torch.manual_seed(0)
    if name == "mnist":
        from lightning_entropy.tasks.mnist import MNISTClassifier, mnist_split

        train, test = mnist_split(25, 25) if quick else mnist_split()
        module = MNISTClassifier(2)
    elif name == "char_lm":
        from lightning_entropy.tasks.char_lm import CharDataModule, CharLanguageModel

        dm = CharDataModule(n_train=32 if quick else 256, n_test=32 if quick else 256)
        module, train, test = CharLanguageModel(len(dm.vocab)), dm.train_set.tensors, dm.test_set.tensors
    else:
        from lightning_entropy.tasks.modular_arithmetic import ModularArithmeticDataModule, ModularArithmeticTransformer

        dm = ModularArithmeticDataModule()
        module, train, test = ModularArithmeticTransformer(), dm.train_set.tensors, dm.test_set.tensors
    module.eval()
    layout = ParameterLayout.of(module)
    cvs = [resolve(v, loss="cross_entropy") for v in ("train_loss", "test_accuracy")]
    data = FullBatch(train, test)
    bound = Box.parse("fan_out").bounds(layout)
    noise = torch.randn(walkers, layout.numel, generator=torch.Generator().manual_seed(1))
    theta0 = layout.flatten(module) + 0.01 * noise
    loops, evaluators = {}, {}
    for path in ("batched", "vmap", "loop"):
        ev = Evaluator(module, layout, data, cvs, vectorize=path != "loop")
        if path == "vmap":
            ev._program = None
        if path == "batched" and ev.path != "batched":
            raise SystemExit(f"{name}: the batched program was not selected (path {ev.path})")
        land = Landscape([(-8.0, 3.0), (-0.02, 1.02)], [110, 41], [c.name for c in cvs], kernel_sigma=1.0)
        loops[path] = C.MDLoop(ev, land, bound, theta0.clone())
        evaluators[path] = ev

    def unit(cv):
        return cv.sum(1), torch.ones_like(cv)

    flop = C.count_flop(lambda: evaluators["batched"].value_and_grad(theta0[:1], unit)) * walkers
    return loops, flop


def main() -> None:
    quick = "--quick" in sys.argv
    C.set_threads()
    print("== batched_paths: walker-batched programs vs vmap vs the per-walker loop, WLMD steps ==")
    print("machine:", C.machine())
    peak = C.gemm_gflops(seconds=0.3 if quick else 1.0)
    print(f"dense GEMM (float32, 1024^2, {torch.get_num_threads()} threads): {peak:.0f} GFLOP/s")
    bandwidth, floor = C.copy_gbs(), C.op_floor_seconds()
    print(f"copy bandwidth {bandwidth:.1f} GB/s, one dispatched operation {floor * 1e6:.2f} us")
    rows, bounds = [], []
    cases = [("mnist", 32, ("batched", "vmap")), ("char_lm", 16, ("batched", "vmap", "loop")),
             ("modular_arithmetic", 16, ("batched", "vmap", "loop"))]
    for name, walkers, paths in cases:
        loops, flop = setup(name, walkers, quick)
        blocks = C.interleaved({p: loops[p].step for p in paths}, repeats=3 if quick else 5,
                               target_s=0.05 if quick else 1.0, budget_s=10 if quick else 25)
        for p in paths:
            best = C.best(blocks[p])
            fast = blocks["batched"]
            ratio = "" if p == "batched" else (
                f"{min(C.best(blocks[p]) / C.best(fast), C.paired_median(blocks[p], fast)):.2f}x")
            bound = C.roofline(flop, best, peak) if p == "batched" else ""
            rows.append([name, walkers, p, f"{walkers / best:,.1f}", ratio, bound, C.spread(blocks[p])])
            if p == "batched":
                ops, nbytes = C.dispatch_profile(loops[p].step)
                shares = (flop / (peak * 1e9) / best, nbytes / (bandwidth * 1e9) / best, ops * floor / best)
                bounds.append(f"  {name} ({walkers} walkers): {C.bound(*shares, ops, best, floor)}")
    print()
    print(C.table(rows, ["task", "walkers", "path", "walker-steps/s", "batched speed-up", "roofline (batched)",
                         "noise"]))
    print("    speed-up: walker-steps/s of the batched path over this path (the less favourable estimate)")
    print("what bounds each batched step (its FLOP at the GEMM rate, its output bytes at the copy bandwidth, its"
          " operations at the per-operation floor, as shares of the step):")
    print("\n".join(bounds))
    print("machine after:", f"load average {C.load():.1f}")


if __name__ == "__main__":
    main()
