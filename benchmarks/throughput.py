"""Walker-steps per second: a plain per-walker autograd loop against the vectorized WLMD step.

Task: the paper's spiral classifier (ReLU 2 -> 6 -> 6 -> 6 -> 2, 116 parameters), 40 train / 40 test points, the
2-D collective variables (ln train cross-entropy, smoothed test accuracy with k = 5), forward and backward.

(a) loop: for each walker, its parameters go through ``torch.func.functional_call`` (or are loaded into the
    nn.Module), both CVs are computed on the full train / test sets and differentiated. Three flavours are timed and
    the FASTEST is the baseline (the most favourable honest loop):
      loop/2bw     - two backward passes per walker (the full Jacobian, one row per CV)
      loop/1bw     - one backward of the slope-weighted sum (the same single backward the vectorized path does)
      loop/module  - load_into(nn.Module), forward, (s_x x + s_y y).backward(), read .grad
    The loop does only the evaluation: no integrator, no landscape, so it is a lower bound on a real loop sampler.
(b) vectorized: ``WLMD.step`` (vmap evaluator, Metropolis integrator, box reflection, 2-D landscape deposit),
    driven with the WL factor schedule like the Lightning strategy does.
(c) a module written the way Lightning's docs write one (``DocsClassifier``: the same network, no ``loss_fn``
    attribute, ``F.cross_entropy`` inline in ``training_step``, ``self.log`` in both steps, loaders passed to
    ``fit``): the evaluator the strategy builds for it through the module contract (the inline loss found at setup),
    timed in the same WLMD step against (b) at 128 walkers. Printed as ratios: against the module with a ``loss_fn``
    (about 1x when the contract finds the same fast path) and against the per-walker loop.

(d) the roofline: each step's FLOP, output bytes and dispatched operations against the GEMM rate, the copy
    bandwidth and the per-operation floor measured in the same run, and which of them bounds the step.

Target: vectorized(128 walkers) >= 20x the loop, in walker-steps per second (the design's bar; issue 13 asks
50x with one thread each side, ``BENCH_THREADS=1``, and the script prints both verdicts). The verdict uses the less
favourable of the best-block ratio and the median of neighbouring-block ratios (see _common.py).
Run: ``.venv/bin/python benchmarks/throughput.py [--profile]``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  (first: sets the OpenMP policy before torch loads)

import copy  # noqa: E402

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.func import functional_call  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

TARGET = 20.0  # the design's quality bar (DESIGN.md, "Fast")
ISSUE_TARGET = 50.0  # issue 13: the spiral classifier at 128 walkers, one thread each side (BENCH_THREADS=1)
WALKERS = (1, 16, 64, 128, 256)


def make_loops(s, theta: torch.Tensor):
    net, layout, (cv_x, cv_y) = s["net"], s["layout"], s["cvs"]
    (xtr, ytr), (xte, yte) = s["train"], s["test"]
    slope = (0.7, -1.3)  # constant stand-ins for dS/dx, dS/dy (their values do not change the cost)
    walkers = theta.shape[0]
    out = torch.empty_like(theta)

    def two_backward():
        for w in range(walkers):
            leaf = theta[w].detach().requires_grad_(True)
            params = layout.unflatten(leaf)
            x = cv_x.fn(functional_call(net, params, (xtr,)), ytr)
            y = cv_y.fn(functional_call(net, params, (xte,)), yte)
            (gx,) = torch.autograd.grad(x, leaf, retain_graph=True)
            (gy,) = torch.autograd.grad(y, leaf)
            out[w] = slope[0] * gx + slope[1] * gy

    def one_backward():
        for w in range(walkers):
            leaf = theta[w].detach().requires_grad_(True)
            params = layout.unflatten(leaf)
            x = cv_x.fn(functional_call(net, params, (xtr,)), ytr)
            y = cv_y.fn(functional_call(net, params, (xte,)), yte)
            (g,) = torch.autograd.grad(slope[0] * x + slope[1] * y, leaf)
            out[w] = g

    module_params = [p for p in net.parameters()]

    def module_loop():
        for w in range(walkers):
            layout.load_into(net, theta[w])
            for p in module_params:
                p.grad = None
            x = cv_x.fn(net(xtr), ytr)
            y = cv_y.fn(net(xte), yte)
            (slope[0] * x + slope[1] * y).backward()
            out[w] = torch.cat([p.grad.reshape(-1) for p in module_params])

    return {"loop/2bw": two_backward, "loop/1bw": one_backward, "loop/module": module_loop}


class DocsClassifier(pl.LightningModule):
    """The spiral network written as Lightning's docs write a classifier: no loss_fn, the loss inline, self.log."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = copy.deepcopy(net)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters())


def standard_module_evaluator(s):
    """The evaluator ``WangLandauStrategy`` builds for :class:`DocsClassifier` (loaders passed to ``fit``; one
    Lightning step of one sampler step to run its setup), and the path the contract chose."""
    import logging

    from lightning_entropy import WangLandauStrategy

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    module = DocsClassifier(s["net"])
    assert not hasattr(module, "loss_fn")
    strategy = WangLandauStrategy(walkers=8, steps_per_lightning_step=1, start="module",
                                  variables=("train_loss", "test_accuracy"), threads=C.THREADS)
    trainer = pl.Trainer(strategy=strategy, max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    train = DataLoader(TensorDataset(*s["train"]), batch_size=8, shuffle=True)  # minibatches, as users write them
    trainer.fit(module, train, DataLoader(TensorDataset(*s["test"]), batch_size=8))
    C.set_threads()
    return strategy._evaluator, strategy._contract.loss_origin


def profile_step(s, walkers: int = 128, steps: int = 50) -> None:
    import cProfile
    import pstats

    md = C.MDLoop(s["evaluator"], s["landscape"](), s["bound"], C.uniform_walkers(walkers, s["bound"]))
    md.run(5)
    print(f"\n== cProfile, {steps} WLMD steps at {walkers} walkers (top 15 by own time) ==")
    prof = cProfile.Profile()
    prof.enable()
    md.run(steps)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    from torch.profiler import ProfilerActivity, profile

    print(f"== torch.profiler, {steps} WLMD steps at {walkers} walkers (top 20 ops by self CPU time) ==")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        md.run(steps)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def roofline(mds: dict, seconds: dict[int, float]) -> None:
    """(d) How far each WLMD step is from this machine's limits, measured in the same run: its FLOP (matrix products,
    ``torch.utils.flop_counter``) at the dense-GEMM rate, the bytes its operations return at the copy bandwidth, and
    its dispatched operations at the per-operation floor; each as a share of the measured step time. The largest
    share names what bounds the step."""
    peak, bandwidth, floor = C.gemm_gflops(), C.copy_gbs(), C.op_floor_seconds()
    rows, best = [], None
    for w, md in mds.items():
        if w < 16:
            continue
        flop = C.count_flop(md.step)
        ops, nbytes = C.dispatch_profile(md.step)
        sec = seconds[w]
        shares = (flop / (peak * 1e9) / sec, nbytes / (bandwidth * 1e9) / sec, ops * floor / sec)
        rows.append([w, f"{flop / 1e6:.2f}", f"{flop / sec / 1e9:.2f}", f"{shares[0]:.1%}", ops,
                     f"{nbytes / 1e6:.1f}", f"{nbytes / sec / 1e9:.1f}", f"{shares[1]:.1%}", f"{shares[2]:.0%}"])
        if best is None or flop / sec > best[1]:
            best = (w, flop / sec, shares, ops, sec)
    print(f"\n(d) roofline: dense GEMM {peak:.0f} GFLOP/s, copy {bandwidth:.1f} GB/s, one dispatched operation"
          f" {floor * 1e6:.2f} us (this run, {torch.get_num_threads()} threads)")
    print(C.table(rows, ["walkers", "MFLOP/step", "GFLOP/s", "of GEMM", "ops/step", "MB out/step", "GB/s",
                         "of copy", "ops x floor"]))
    w, rate, shares, ops, sec = best
    print(f"RESULT roofline: at its best walker count ({w}) the MLP step reaches {rate / 1e9:.2f} GFLOP/s,"
          f" {shares[0]:.1%} of the GEMM rate ({'within' if shares[0] >= 1 / 3 else 'not within'} 3x of it);"
          f" bound by {C.bound(*shares, ops, sec, floor)}")


def main() -> None:
    C.set_threads()
    s = C.spiral_setup()
    print("== throughput: spiral classifier,", s["layout"].numel, "parameters, 40 train / 40 test points, CVs",
          [c.name for c in s["cvs"]], "==")
    print("machine:", C.machine())
    assert s["layout"].numel == 116, s["layout"].numel

    # (a) the per-walker loops; their rate does not depend on W, each call does 16 walkers
    theta16 = C.uniform_walkers(16, s["bound"])
    loops = make_loops(s, theta16)
    loop_blocks = C.interleaved(loops, repeats=7, target_s=0.2, budget_s=20)
    loop_rates = {name: 16 / C.best(t) for name, t in loop_blocks.items()}
    best_loop = max(loop_rates, key=loop_rates.get)

    # (b) the vectorized WLMD step, and the bare vectorized evaluation (no integrator / landscape) for reference
    rows, vec_rates, mds = [], {}, {}
    for w in WALKERS:
        md = C.MDLoop(s["evaluator"], s["landscape"](), s["bound"], C.uniform_walkers(w, s["bound"]))
        mds[w] = md
        theta, land = md.state.theta.clone(), md.landscape
        blocks = C.interleaved(
            {"step": md.step, "eval": lambda: s["evaluator"].value_and_grad(theta, land.value_and_slope)},
            repeats=7, target_s=0.2, budget_s=15,
        )
        sec, ev_sec = C.best(blocks["step"]), C.best(blocks["eval"])
        vec_rates[w] = w / sec
        rows.append([w, f"{w / sec:,.0f}", f"{sec * 1e3:.2f}", C.spread(blocks["step"]), f"{w / ev_sec:,.0f}",
                     f"{ev_sec / sec:.0%}", f"{(w / sec) / loop_rates[best_loop]:.1f}x",
                     f"{float(md.state.accepted.mean() / max(md.state.step, 1)):.2f}"])

    # the headline ratio: interleaved blocks of the best loop (16 walkers per call) and the 128-walker WLMD step
    pair = C.interleaved({"loop": loops[best_loop], "vec": mds[128].step}, repeats=11, target_s=0.2, budget_s=30)
    ratio_best = (128 / C.best(pair["vec"])) / (16 / C.best(pair["loop"]))
    ratio_paired = C.paired_median(pair["loop"], pair["vec"]) * 128 / 16
    ratio = min(ratio_best, ratio_paired)

    print("\n(a) per-walker autograd loop, evaluation only (forward train+test, both CVs, backward)")
    print(C.table([[n, f"{r:,.0f}", f"{1e3 / r:.3f}", C.spread(loop_blocks[n]),
                    "<- baseline (fastest)" if n == best_loop else ""]
                   for n, r in loop_rates.items()], ["loop", "walker-steps/s", "ms/walker", "noise", ""]))
    print("\n(b) vectorized WLMD step (vmap evaluator + Metropolis integrator + reflection + 2-D deposit)")
    print(C.table(rows, ["walkers", "walker-steps/s", "ms/step", "noise", "eval-only ws/s", "eval share",
                         "vs loop", "accept"]))
    print("    eval-only = Evaluator.value_and_grad alone (one vmap forward + one backward); eval share = its time"
          " / the full step's time; noise = median block / best block - 1")
    scale = vec_rates[256] / vec_rates[16]
    print(f"\nscaling 16 -> 256 walkers: x{scale:.1f} walker-steps/s (x16 would be linear)")
    print(f"headline (interleaved, best of {len(pair['vec'])} blocks each): vectorized(128) {128 / C.best(pair['vec']):,.0f} ws/s,"
          f" {best_loop} {16 / C.best(pair['loop']):,.0f} ws/s")
    print(f"ratio from the best blocks {ratio_best:.1f}x, median of paired blocks {ratio_paired:.1f}x")
    print(f"RESULT throughput: vectorized(128) / loop = {ratio:.1f}x   target >= {TARGET:.0f}x   "
          f"{C.verdict(ratio >= TARGET)}; issue 13 asks >= {ISSUE_TARGET:.0f}x (one thread each side)   "
          f"{C.verdict(ratio >= ISSUE_TARGET)}")

    roofline(mds, {w: float(r[2]) / 1e3 for w, r in zip(WALKERS, rows)})

    # (c) the module written as Lightning's docs write it, through the contract's evaluator, at 128 walkers
    evaluator, origin = standard_module_evaluator(s)
    std = C.MDLoop(evaluator, s["landscape"](), s["bound"], C.uniform_walkers(128, s["bound"]))
    trio = C.interleaved({"loss_fn": mds[128].step, "docs": std.step, "loop": loops[best_loop]}, repeats=9,
                         target_s=0.2, budget_s=30)
    vs_attr = min(C.best(trio["loss_fn"]) / C.best(trio["docs"]), C.paired_median(trio["loss_fn"], trio["docs"]))
    vs_loop = min((128 / C.best(trio["docs"])) / (16 / C.best(trio["loop"])),
                  C.paired_median(trio["loop"], trio["docs"]) * 128 / 16)
    print(f"\n(c) DocsClassifier (no loss_fn; loss: {origin}; evaluator path: {evaluator.path})")
    print(f"RESULT standard module: vectorized(128) / same network with loss_fn = {vs_attr:.2f}x;"
          f" / loop = {vs_loop:.1f}x   target >= {TARGET:.0f}x   {C.verdict(vs_loop >= TARGET)}")
    print("machine after:", f"load average {C.load():.1f}")
    if "--profile" in sys.argv:
        profile_step(s)


if __name__ == "__main__":
    main()
