"""Does MD at fixed train loss raise the held-out accuracy above the optimiser's start? (the paper's MD check)

For each seed: train the task's model with full-batch Adam to a low train loss, then run
``Trainer(strategy=EntropyMDStrategy(...))`` from it, holding that ln L_train (restraint width 0.01 nats), and
compare the held-out accuracy of the start with the MD result: the walker closest to the target (the module after the
fit), the walkers' mean accuracy, and the ensemble (mean probabilities). No held-out label enters the MD.

Run: ``.venv/bin/python benchmarks/entropy_md_gain.py spiral`` or ``... mnist`` (options: ``--seeds 0 1 2``,
``--md-steps``, ``--walkers``, ``--epochs``, ``--lr``, ``--n-test``).
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import numpy as np
import torch
from lightning.pytorch import Trainer

from lightning_entropy import EntropyMDStrategy


def task(name: str, n_test: int | None, seed: int):
    if name == "spiral":
        from lightning_entropy.tasks import SpiralClassifier, SpiralDataModule

        return SpiralDataModule(n_test=n_test or 40), (lambda: SpiralClassifier())
    from lightning_entropy.tasks.mnist import MNISTClassifier, MNISTDataModule

    return MNISTDataModule(n_test=n_test or 250), (lambda: MNISTClassifier(channels=2))


def train(model, dm, epochs: int, lr: float) -> None:
    x, y = dm.train_set.tensors
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        opt.zero_grad()
        model.loss_fn(model(x), y).backward()
        opt.step()


@torch.no_grad()
def evaluate(model, dm) -> tuple[float, float]:
    model.eval()
    (x, y), (xt, yt) = dm.train_set.tensors, dm.test_set.tensors
    return float(model.loss_fn(model(x), y).log()), float((model(xt).argmax(-1) == yt).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("task", choices=("spiral", "mnist"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--walkers", type=int, default=32)
    parser.add_argument("--md-steps", type=int, default=10_000)
    parser.add_argument("--n-test", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    rows = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        dm, make = task(args.task, args.n_test, seed)
        model = make()
        t = time.perf_counter()
        train(model, dm, args.epochs, args.lr)
        t_train = time.perf_counter() - t
        ln0, acc0 = evaluate(model, dm)
        strategy = EntropyMDStrategy(walkers=args.walkers, seed=seed, steps_per_lightning_step=100, observe_every=50)
        t = time.perf_counter()
        Trainer(strategy=strategy, max_steps=args.md_steps // 100, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0).fit(model, dm)
        t_md = time.perf_counter() - t
        ln1, acc1 = evaluate(model, dm)
        trace = strategy.trace
        ens = strategy.ensemble_metrics()
        walkers_mean = float(trace["hard_test_accuracy_mean"][-1])
        rows.append((acc0, acc1, walkers_mean, ens["hard_test_accuracy"]))
        print(f"seed {seed}: start ln L_train {ln0:.3f} acc {acc0:.4f} | MD ({strategy.box}, dt {strategy.dt:.2e},"
              f" x-spread {trace['ln_train_loss_std'][-1]:.4f}) closest walker ln L {ln1:.3f} acc {acc1:.4f};"
              f" walkers' mean acc {walkers_mean:.4f}; ensemble acc {ens['hard_test_accuracy']:.4f}"
              f" (ln L {ens['ln_train_loss']:.3f}) | train {t_train:.0f} s, MD {t_md:.0f} s", flush=True)
        n = len(trace["step"])
        marks = sorted({0, n // 8, n // 4, n // 2, n - 1})
        print("   held-out accuracy (walkers' mean) over MD steps: "
              + ", ".join(f"{trace['step'][i]}: {trace['hard_test_accuracy_mean'][i]:.3f}" for i in marks), flush=True)
    r = np.array(rows)
    print(f"mean over {len(rows)} seeds: start {r[:, 0].mean():.4f}, closest walker {r[:, 1].mean():.4f},"
          f" walkers' mean {r[:, 2].mean():.4f}, ensemble {r[:, 3].mean():.4f}")


if __name__ == "__main__":
    main()
