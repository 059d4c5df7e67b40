"""Peak resident memory of WLMD on the largest spiral-regression network of the paper.

Network: 2 -> 1000 -> 1000 -> 1 ReLU (1,005,001 parameters). Data: 250 train / 250 test points, X ~ U([-5, 5]^2),
target y = sin(2 r) x1 / r + N(0, 0.05^2) (a smooth spiral-like surface; r = |X|). CVs: (ln train MSE, ln test MSE).
Fan-out box, walkers drawn uniformly in the box, the default integrator (Metropolis, dt 0.02).

Each walker count runs in a fresh subprocess (``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is a per-process peak):
it builds the data, network, evaluator and landscape, records the resident set before the sampler exists
("baseline": the interpreter, torch, the network and the data), runs a few WLMD steps, and reports the peak.
The sampler's share is peak - baseline; its growth with walkers gives the rule of thumb in bytes per walker per
parameter.

Target (issue): peak resident memory < 4 GiB with 16 walkers.
Run: ``.venv/bin/python benchmarks/memory.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  (first: sets the OpenMP policy before torch loads)

TARGET_GIB = 4.0
WALKERS = (1, 4, 8, 16)
STEPS = 4
GIB = 1024**3


def rss_now() -> int:
    """Current resident set size in bytes (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak() -> int:
    import resource

    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * 1024 if sys.platform != "darwin" else kib


def child(walkers: int, steps: int) -> None:
    import torch
    from torch import nn

    from lightning_entropy.core.box import Box
    from lightning_entropy.core.evaluator import Evaluator, FullBatch
    from lightning_entropy.core.landscape import Landscape
    from lightning_entropy.core.variables import resolve
    from lightning_entropy.core.walkers import ParameterLayout

    C.set_threads()
    g = torch.Generator().manual_seed(0)
    x = 10 * torch.rand(500, 2, generator=g) - 5
    r = x.norm(dim=1).clamp(min=1e-6)
    y = torch.sin(2 * r) * x[:, 0] / r + 0.05 * torch.randn(500, generator=g)
    net = nn.Sequential(nn.Linear(2, 1000), nn.ReLU(), nn.Linear(1000, 1000), nn.ReLU(), nn.Linear(1000, 1))
    layout = ParameterLayout.of(net)
    cvs = [resolve("train_loss", loss="mse"), resolve("test_loss", loss="mse")]
    data = FullBatch(train=(x[:250], y[:250]), test=(x[250:], y[250:]))
    ev = Evaluator(net, layout, data, cvs, vectorize=True)
    bound = Box.parse("fan_out").bounds(layout)
    base = rss_now()
    base_peak = peak()
    theta0 = C.uniform_walkers(walkers, bound, seed=1)
    with torch.no_grad():
        cv0 = ev(theta0).values
    lo, hi = float(cv0.min()), float(cv0.max())
    ranges = [(lo - 3.0, hi + 3.0)] * 2
    bins = [int(round((hi - lo + 6.0) / 0.1))] * 2
    land = Landscape(ranges, bins, [c.name for c in cvs], kernel_sigma=1.0)
    md = C.MDLoop(ev, land, bound, theta0)
    md.step()  # the first step allocates everything the steady state uses
    start = time.perf_counter()
    for _ in range(steps):
        md.step()
    sec = (time.perf_counter() - start) / steps
    print(json.dumps({
        "walkers": walkers, "params": layout.numel, "baseline": base, "baseline_peak": base_peak, "peak": peak(),
        "rss_end": rss_now(), "sec_per_step": sec, "accepted": float(md.state.accepted.mean() / md.state.step),
        "cv_range": [lo, hi],
    }))


def main() -> None:
    C.set_threads()
    print("== memory: spiral regression 2 -> 1000 -> 1000 -> 1 ReLU, 250/250 points, CVs (ln train MSE, ln test MSE),"
          f" {STEPS + 1} WLMD steps per run ==")
    print("machine:", C.machine())
    results = []
    for w in WALKERS:
        out = subprocess.run([sys.executable, __file__, "--child", str(w), str(STEPS)], capture_output=True, text=True,
                             check=False, env=os.environ.copy())
        if out.returncode != 0:
            print(out.stdout, out.stderr)
            raise SystemExit(f"child with {w} walkers failed (exit {out.returncode})")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    params = results[0]["params"]
    rows = []
    for r in results:
        sampler = r["peak"] - r["baseline"]
        rows.append([r["walkers"], f"{r['baseline'] / GIB:.2f}", f"{r['peak'] / GIB:.2f}", f"{sampler / GIB:.2f}",
                     f"{sampler / (r['walkers'] * params):.1f}", f"{r['sec_per_step']:.2f}",
                     f"{r['walkers'] / r['sec_per_step']:.1f}"])
    print(f"parameters: {params:,}")
    print(C.table(rows, ["walkers", "baseline GiB", "peak GiB", "peak - baseline GiB", "B/walker/param",
                         "s/step", "walker-steps/s"]))
    by_w = {r["walkers"]: r for r in results}
    lo_w, hi_w = WALKERS[1], WALKERS[-1]
    slope = (by_w[hi_w]["peak"] - by_w[lo_w]["peak"]) / ((hi_w - lo_w) * params)
    intercept = by_w[hi_w]["peak"] - slope * hi_w * params
    print(f"\nrule of thumb (slope of peak between {lo_w} and {hi_w} walkers): {slope:.0f} bytes per walker per"
          f" parameter, on top of ~{intercept / GIB:.2f} GiB (interpreter, torch, network, data, one-off buffers)")
    print(f"   e.g. 16 walkers x 1,005,001 parameters -> {16 * params * slope / GIB:.2f} GiB for the walkers")
    p16 = by_w[16]["peak"] / GIB
    print(f"\nRESULT memory: peak resident memory with 16 walkers = {p16:.2f} GiB   target < {TARGET_GIB:.0f} GiB   "
          f"{C.verdict(p16 < TARGET_GIB)}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
