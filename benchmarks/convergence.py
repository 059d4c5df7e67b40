"""Time to accuracy on steep problems with a known density of states: the sampler against the previous default and
against nested sampling, at equal wall time.

The problems are the quadratic losses of :mod:`lightning_entropy.tasks.quadratic` (P parameters, S(ln L) = (P/2) ln L
exactly on the grid ln L in [-4.5, 0), 45 bins of 0.1: S spans 54 / 108 / 216 nats at P = 24 / 48 / 96). Each
method gets the same wall-clock budget, through its public API, with no environment variable set:

- ``windows``: ``WangLandauStrategy`` with its defaults (replica-exchange WL, per-visit factor, production phase);
- ``step``: the previous default, ``fill="step"`` (one landscape, factor per step shared by the walkers);
- ``dynesty``: nested sampling with the box as a uniform prior and log-likelihood ``-ln L``; the dead points'
  prior volumes give ln X(L), hence the bins' log-volumes ``ln(X(hi) - X(lo))``.

Printed: one row per method and problem (RMS and worst error over every bin of the grid after removing the free
constant, bins reached, work done), the ratio of errors at equal time, and a figure of RMS error against time for
the sampler (``benchmarks/convergence.png``). Ratios are from one run; the machine is shared, so absolute times are
indicative only.

Usage:
    .venv/bin/python benchmarks/convergence.py                       # P = 48, 120 s per method
    .venv/bin/python benchmarks/convergence.py --params 24 48 96 --seconds 120 --curve 30 60
"""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings

import numpy as np

GRID = (-4.5, 0.0)
BINS = 45


def _error(entropy: np.ndarray, truth: np.ndarray) -> tuple[float, float, int]:
    """RMS and worst error (nats) over the bins reached, after removing the constant; bins reached."""
    ok = np.isfinite(entropy) & np.isfinite(truth)
    if ok.sum() < 2:
        return math.nan, math.nan, int(ok.sum())
    d = entropy[ok] - truth[ok]
    d -= d.mean()
    return float(np.sqrt(np.mean(d**2))), float(np.abs(d).max()), int(ok.sum())


def run_sampler(params: int, seconds: float, fill: str, seed: int) -> dict:
    from lightning.pytorch import Trainer

    from lightning_entropy import WangLandauStrategy
    from lightning_entropy.tasks.quadratic import QuadraticModule, exact_entropy, quadratic_datamodule

    strategy = WangLandauStrategy(walkers=64, box=1.0, variables=("train_loss",), ranges=[GRID], seed=seed,
                                  fill=fill)
    trainer = Trainer(strategy=strategy, max_time={"seconds": seconds}, max_steps=-1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(QuadraticModule(params), datamodule=quadratic_datamodule(params))
    land = strategy.landscape
    rms, worst, reached = _error(land.entropy, exact_entropy(land.edges[0], params))
    stated = land.entropy_error
    return {"method": "windows" if fill == "visit" else "step", "params": params,
            "seconds": time.perf_counter() - start,
            "work": f"{land.walker_steps:,} walker-steps", "rms": rms, "worst": worst, "bins": reached,
            "stated": float(np.sqrt(np.nanmean(stated**2))) if np.isfinite(stated).any() else math.nan}


def run_dynesty(params: int, seconds: float, seed: int, live: int = 500) -> dict:
    import dynesty

    from lightning_entropy.tasks.quadratic import exact_entropy, quadratic_data

    x, _ = quadratic_data(params)
    a = (x.double().T @ x.double()).numpy() / params

    def loglike(theta: np.ndarray) -> float:
        return -math.log(float(theta @ a @ theta) + 1e-300)

    sampler = dynesty.NestedSampler(loglike, lambda u: 2.0 * u - 1.0, params, nlive=live,
                                    rstate=np.random.default_rng(seed))
    start = time.perf_counter()
    for _ in sampler.sample(dlogz=0.0):
        if time.perf_counter() - start > seconds or sampler.results.logl[-1] > -GRID[0] + 0.2:
            break
    res = sampler.results
    x_dead = -np.asarray(res.logl)  # ln L of each dead point, decreasing
    ln_x = np.asarray(res.logvol)  # ln of the prior volume with a lower loss
    edges = np.linspace(GRID[0], GRID[1], BINS + 1)
    order = np.argsort(x_dead)
    xs, lv = x_dead[order], ln_x[order]
    inside = (edges >= xs[0]) & (edges <= xs[-1])
    ln_edge = np.where(inside, np.interp(edges, xs, lv), np.nan)
    with np.errstate(invalid="ignore"):
        hi, lo = ln_edge[1:], ln_edge[:-1]
        s = hi + np.log1p(-np.exp(lo - hi))
    rms, worst, reached = _error(s, exact_entropy(edges, params))
    return {"method": f"dynesty/{live}", "params": params, "seconds": time.perf_counter() - start,
            "work": f"{int(np.sum(res.ncall)):,} likelihood calls", "rms": rms, "worst": worst, "bins": reached,
            "stated": math.nan}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=int, nargs="+", default=[48])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--curve", type=float, nargs="*", default=[30.0, 60.0],
                        help="shorter budgets for the sampler's error-against-time curve (the full budget is added)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", nargs="*", default=[], choices=["windows", "step", "dynesty"])
    parser.add_argument("--live", type=int, default=500, help="dynesty's live points")
    args = parser.parse_args()
    print(f"convergence benchmark: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, {args.seconds:g} s per"
          f" method, grid ln L in {GRID} x {BINS} bins", flush=True)
    rows, curve = [], {}
    for p in args.params:
        found = [] if "windows" in args.skip else [run_sampler(p, args.seconds, "visit", args.seed)]
        if "step" not in args.skip:
            found.append(run_sampler(p, args.seconds, "step", args.seed))
        if "dynesty" not in args.skip:
            found.append(run_dynesty(p, args.seconds, args.seed, live=args.live))
        if "windows" not in args.skip:
            for budget in args.curve:
                curve.setdefault(p, []).append(run_sampler(p, budget, "visit", args.seed))
            curve.setdefault(p, []).append(found[0])
        for r in found:
            print(f"P={r['params']:3d} {r['method']:8s} {r['seconds']:6.0f} s  {r['bins']:2d}/{BINS} bins  RMS"
                  f" {r['rms']:.3f}  worst {r['worst']:.3f}  stated {r['stated']:.3f}  ({r['work']})", flush=True)
        rows += found
    print("\nRESULT ratios at equal wall time (error of the other method / error of windows; > 1: windows ahead)")
    for p in args.params if "windows" not in args.skip else ():
        mine = next(r for r in rows if r["params"] == p and r["method"] == "windows")
        for r in rows:
            if r["params"] == p and r is not mine:
                print(f"  P={p}: {r['method']}: RMS x{r['rms'] / mine['rms']:.1f}, bins {r['bins']} vs {mine['bins']}")
        target = "met" if mine["rms"] <= 0.15 and mine["bins"] == BINS else "MISSED"
        print(f"  P={p}: windows {mine['rms']:.3f} nats RMS over {mine['bins']}/{BINS} bins: target <= 0.15 {target}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        for p, runs in curve.items():
            runs = sorted(runs, key=lambda r: r["seconds"])
            ax.plot([r["seconds"] for r in runs], [r["rms"] for r in runs], "o-", label=f"windows, P={p}")
        for r in rows:
            if r["method"] != "windows":
                ax.plot([r["seconds"]], [r["rms"]], "s" if r["method"] == "step" else "^",
                        label=f"{r['method']}, P={r['params']}")
        ax.set(xlabel="wall time (s)", ylabel="RMS error of S (nats)", yscale="log")
        ax.axhline(0.15, color="grey", lw=0.8, ls="--")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "convergence.png")
        fig.savefig(path, dpi=120)
        print(f"figure: {path}")
    except ImportError:
        pass


if __name__ == "__main__":
    main()
