"""What to do with extra compute after training: ``entropy_md`` against what users pick today for flat minima.

For each task and seed: train the task's model with full-batch Adam (the endpoint), then spend the same wall time
``T`` from that endpoint in each of these ways, and measure the held-out metric of what each returns:

- ``adam``: the endpoint itself (no extra compute);
- ``adam+T``: Adam continued for ``T`` (the control: is more of the same enough?);
- ``swa``: Lightning's ``StochasticWeightAveraging`` callback on the task's own ``training_step``, as many epochs as
  fit in ``T``, averaging from a quarter of them at Adam's learning rate;
- ``sam+T``: :class:`lightning_entropy.optim.SAM` around Adam (``rho``), continued for ``T``;
- ``sam@L``: SAM around Adam from the same initial weights as the endpoint, trained until its ln L_train reaches the
  endpoint's (at most three times Adam's epochs): SAM's solution at equal train loss;
- ``entropy_md``: ``Trainer(strategy=EntropyMDStrategy(...))`` held at the endpoint's ln L_train (``T`` is its wall
  time): the module it returns (the walker closest to the target) and the ensemble of its walkers.

No held-out label enters any method. Printed: per task and method the held-out metric (hard accuracy for
classifiers, ln test MSE for regression: lower is better) and ln L_train, mean and standard error over seeds, and the
paired difference against the endpoint. ``--markdown FILE`` also writes the table and the per-task verdicts as
Markdown (``examples/reproduce.py`` puts ``docs/training_modes.md`` into docs/REPRODUCTION.md).

Run: ``.venv/bin/python benchmarks/training_modes.py`` (every task, 5 seeds, about 45 minutes on one core; the char
LM about 3 minutes per seed) or ``... --tasks spiral --seeds 0 1 2``; each task stops starting seeds at its time box
(``Task.minutes``, or ``--minutes``; the verdict says when it did). ``--data`` is the folder holding
house_prices.npz (default ../shared/data). With ``--markdown FILE`` the per-seed numbers also go to FILE's ``.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import StochasticWeightAveraging

from lightning_entropy import EntropyMDStrategy
from lightning_entropy.optim import SAM

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Task:
    name: str
    make: Callable[[int], tuple[Any, Any]]  # seed -> (datamodule, model)
    epochs: int  # full-batch Adam epochs to the endpoint
    lr: float
    md_steps: int
    minutes: float  # the task's time box: no seed is started that would end past it (see run_seeds)
    walkers: int = 32


def _tasks(data: Path) -> dict[str, Task]:
    def spiral(seed):
        from lightning_entropy.tasks.spiral import SpiralClassifier, SpiralDataModule

        torch.manual_seed(seed)
        return SpiralDataModule(), SpiralClassifier(width=6, depth=3)

    def house_prices(seed):
        from lightning_entropy.tasks.tabular import TabularDataModule, TabularRegressor

        dm = TabularDataModule(path=data / "house_prices.npz", n_train=365, n_test=365)
        torch.manual_seed(seed)
        return dm, TabularRegressor(dm.features, width=10, depth=1)

    def modular_arithmetic(seed):
        from lightning_entropy.tasks.modular_arithmetic import (ModularArithmeticDataModule,
                                                                ModularArithmeticTransformer)

        torch.manual_seed(seed)
        return ModularArithmeticDataModule(), ModularArithmeticTransformer()

    def char_lm(seed):
        from lightning_entropy.tasks.char_lm import CharDataModule, CharLanguageModel

        dm = CharDataModule()
        torch.manual_seed(seed)
        return dm, CharLanguageModel(len(dm.vocab))

    return {
        "spiral": Task("spiral", spiral, epochs=3000, lr=1e-3, md_steps=10_000, minutes=15),
        "house_prices": Task("house_prices", house_prices, epochs=2000, lr=1e-3, md_steps=4_000, minutes=21),
        "modular_arithmetic": Task("modular_arithmetic", modular_arithmetic, epochs=2000, lr=1e-3, md_steps=1_000,
                                   walkers=16, minutes=19),
        "char_lm": Task("char_lm", char_lm, epochs=600, lr=3e-3, md_steps=250, walkers=16, minutes=25),
    }


def _batches(dm) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    dm.setup("fit")
    return dm.train_set.tensors, dm.test_set.tensors


def _loss(model, x, y) -> torch.Tensor:
    return model.compute_loss(model(x), y)


@torch.no_grad()
def evaluate(model, train, test) -> tuple[float, float]:
    """ln L_train and the held-out metric: hard accuracy (classifiers) or ln test MSE (regressors)."""
    model.eval()
    (x, y), (xt, yt) = train, test
    ln_train = float(torch.log(_loss(model, x, y)))
    out = model(xt)
    if yt.dtype in (torch.int64, torch.int32):
        return ln_train, float((out.argmax(-1) == yt).float().mean())
    return ln_train, float(torch.log(_loss(model, xt, yt)))


def run_for(model, optimizer, train, *, steps: int | None = None, seconds: float | None = None) -> int:
    """Full-batch steps of ``optimizer`` (a closure step) for ``steps`` or until ``seconds`` have passed."""
    x, y = train
    model.train()

    def closure():
        optimizer.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        return loss

    done, start = 0, time.perf_counter()
    while (steps is None or done < steps) and (seconds is None or time.perf_counter() - start < seconds):
        optimizer.step(closure)
        done += 1
    return done


def _quiet_trainer(**kwargs) -> Trainer:
    return Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   limit_val_batches=0, num_sanity_val_steps=0, **kwargs)


def swa(model, dm, lr: float, seconds: float) -> tuple[Any, int]:
    """Lightning's StochasticWeightAveraging on the module's own training_step, for about ``seconds``."""
    probe = copy.deepcopy(model)
    t = time.perf_counter()
    _quiet_trainer(max_epochs=20).fit(probe, datamodule=dm)
    per_epoch = (time.perf_counter() - t) / 20
    epochs = max(8, int(seconds / per_epoch))
    averaged = copy.deepcopy(model)
    callback = StochasticWeightAveraging(swa_lrs=lr, swa_epoch_start=0.25, annealing_epochs=1)
    _quiet_trainer(max_epochs=epochs, callbacks=[callback]).fit(averaged, datamodule=dm)
    return averaged, epochs


def one_seed(task: Task, seed: int, rho: float) -> dict[str, tuple[float, float]]:
    dm, model = task.make(seed)
    train, test = _batches(dm)
    model.hparams.lr = task.lr
    init = copy.deepcopy(model)
    run_for(model, torch.optim.Adam(model.parameters(), lr=task.lr), train, steps=task.epochs)
    out = {"adam": evaluate(model, train, test)}
    target = out["adam"][0]

    md_model = copy.deepcopy(model)
    strategy = EntropyMDStrategy(walkers=task.walkers, seed=seed, steps_per_lightning_step=100, observe_every=50)
    t = time.perf_counter()
    _quiet_trainer(strategy=strategy, max_steps=max(1, task.md_steps // 100)).fit(md_model, datamodule=dm)
    budget = time.perf_counter() - t
    out["entropy_md"] = evaluate(md_model, train, test)
    ens = strategy.ensemble_metrics()
    held = ens["hard_test_accuracy"] if math.isfinite(ens["hard_test_accuracy"]) else ens["ln_test_loss"]
    out["entropy_md ensemble"] = (ens["ln_train_loss"], held)

    more = copy.deepcopy(model)
    run_for(more, torch.optim.Adam(more.parameters(), lr=task.lr), train, seconds=budget)
    out["adam+T"] = evaluate(more, train, test)

    averaged, _ = swa(model, dm, task.lr, budget)
    out["swa"] = evaluate(averaged, train, test)

    sharp = copy.deepcopy(model)
    run_for(sharp, SAM(sharp.parameters(), torch.optim.Adam, rho=rho, lr=task.lr), train, seconds=budget)
    out["sam+T"] = evaluate(sharp, train, test)

    opt = SAM(init.parameters(), torch.optim.Adam, rho=rho, lr=task.lr)
    for _ in range(30):  # in tenths of Adam's epochs, until the endpoint's train loss
        run_for(init, opt, train, steps=max(1, task.epochs // 10))
        if evaluate(init, train, test)[0] <= target:
            break
    out["sam@L"] = evaluate(init, train, test)
    out["_budget"] = (budget, budget)
    return out


def run_seeds(run: Callable[[int], dict], seeds: list[int], minutes: float,
              clock: Callable[[], float] = time.perf_counter) -> list[dict]:
    """``run(seed)`` for each seed in turn while the time box holds one more seed of the mean length so far (the
    first two always run: a standard error needs two)."""
    start, results = clock(), []
    for seed in seeds:
        spent = clock() - start
        if len(results) >= 2 and spent + spent / len(results) > 60 * minutes:
            break
        results.append(run(seed))
    return results


TRAIN_LOSS_TOLERANCE = 0.05  # nats of ln L_train: beyond this, entropy_md's rows are not at the endpoint's train loss
METHODS = ("adam", "adam+T", "swa", "sam+T", "sam@L", "entropy_md", "entropy_md ensemble")


def summarize(task: str, results: list[dict], higher_better: bool) -> tuple[list[list[str]], str]:
    rows = []
    base = np.array([r["adam"][1] for r in results])
    gains = {}
    for m in METHODS:
        ln = np.array([r[m][0] for r in results])
        held = np.array([r[m][1] for r in results])
        diff = (held - base) * (1 if higher_better else -1)
        se = lambda a: a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else math.nan  # noqa: E731
        gains[m] = (diff.mean(), se(diff))
        rows.append([task, m, f"{held.mean():.4f} ± {se(held):.4f}", f"{ln.mean():.3f}",
                     "" if m == "adam" else f"{diff.mean():+.4f} ± {se(diff):.4f}"])
    budget = float(np.mean([r["_budget"][0] for r in results]))
    sentence = verdict(task, gains, budget)
    start = np.mean([r["adam"][0] for r in results])
    drift = {m: np.mean([r[m][0] for r in results]) - start for m in ("entropy_md", "entropy_md ensemble")}
    off = [m for m, d in drift.items() if abs(d) > TRAIN_LOSS_TOLERANCE]
    if off:
        why = []
        if any(drift[m] > 0 for m in off):
            why.append("a higher train loss (less fitted) may account for part of a gain")
        if any(drift[m] < 0 for m in off):
            why.append("the ensemble's averaged prediction fits the train set better than any one walker, as an"
                       " ensemble's does")
        sentence += (f"; not at equal train loss: entropy_md's ln L_train sits {drift['entropy_md']:+.3f} (ensemble"
                     f" {drift['entropy_md ensemble']:+.3f}) nats from the endpoint's: " + "; ".join(why))
    return rows, sentence


def verdict(task: str, gains: dict[str, tuple[float, float]], budget: float) -> str:
    """One sentence per task from the gains over the endpoint (mean, standard error): entropy_md (the better of the
    returned walker and the ensemble) against the best alternative, each difference judged at 2 standard errors
    (combined, unpaired: conservative, for the comparison of two methods)."""
    alt = max(("adam+T", "swa", "sam+T", "sam@L"), key=lambda m: gains[m][0])
    md = max(("entropy_md", "entropy_md ensemble"), key=lambda m: gains[m][0])
    (g, s), (a, sa) = gains[md], gains[alt]
    apart = 2 * math.hypot(s, sa)
    if g + 2 * s < 0:
        call = "entropy_md hurts here"
    elif a - g > apart:
        call = f"{alt} is the better use of the time here"
    elif g - 2 * s > 0:
        call = ("entropy_md is worth its cost here" if g >= a else
                f"entropy_md and {alt} both gain beyond 2 standard errors ({alt} more, by less than 2 combined"
                " standard errors)" if a - 2 * sa > 0 else
                f"entropy_md gains beyond 2 standard errors; {alt} gains more on average but not beyond 2 standard"
                " errors (the two differ by less than 2 combined standard errors)")
    elif a - 2 * sa > 0:
        call = (f"{alt} gains beyond 2 standard errors and entropy_md does not, but the two differ by less than 2"
                " combined standard errors")
    else:
        call = "no method beats the endpoint beyond 2 standard errors here"
    return (f"{task}: {call} (T = {budget:.0f} s per seed; {md} {g:+.4f} ± {s:.4f}, best alternative {alt}"
            f" {a:+.4f} ± {sa:.4f})")


def table(rows: list[list[str]], head: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["spiral", "house_prices", "modular_arithmetic", "char_lm"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--md-steps", type=int, default=None, help="MD steps per seed (default: the task's)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="each task's time box in minutes (default: the task's; 0 or less: none)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--markdown", default=None, help="also write the table and verdicts to this file")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reuse", action="store_true",
                        help="rewrite --markdown from its .json (the per-seed numbers) without running anything")
    args = parser.parse_args()
    if args.reuse:
        return rewrite(Path(args.markdown), args.tasks)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    tasks = _tasks(Path(args.data))
    rows, verdicts, raw, done = [], [], {}, {}
    for name in args.tasks:
        task = tasks[name]
        if args.md_steps:
            task.md_steps = args.md_steps
        if args.minutes is not None:
            task.minutes = args.minutes if args.minutes > 0 else math.inf
        if name == "house_prices" and not (Path(args.data) / "house_prices.npz").is_file():
            print(f"{name}: skipped, no {Path(args.data) / 'house_prices.npz'} (give --data)")
            continue

        def run(seed, task=task, name=name):
            t = time.perf_counter()
            r = one_seed(task, seed, args.rho)
            print(f"{name} seed {seed} ({time.perf_counter() - t:.0f} s, T {r['_budget'][0]:.1f} s): "
                  + ", ".join(f"{m} {r[m][1]:.4f} (ln L {r[m][0]:.2f})" for m in METHODS), flush=True)
            return r

        results = run_seeds(run, args.seeds, task.minutes)
        classifier = name != "house_prices"
        task_rows, sentence = summarize(name, results, higher_better=classifier)
        if len(results) < len(args.seeds):
            sentence += (f"; the task's time box of {task.minutes:g} minutes ended it after {len(results)} of"
                         f" {len(args.seeds)} seeds")
            print(f"{name}: time box of {task.minutes:g} minutes reached after {len(results)} seeds", flush=True)
        done[name] = len(results)
        rows += task_rows
        verdicts.append(sentence)
        raw[name] = results
    head = ["task", "method", "held-out metric", "ln L_train", "gain over the endpoint"]
    print()
    print(table(rows, head))
    print("    held-out metric: hard test accuracy, or ln test MSE for house_prices (lower is better); gain signed so"
          " that positive is better; mean ± standard error over seeds")
    for sentence in verdicts:
        print(sentence)
    if args.markdown:
        write_markdown(Path(args.markdown), rows, verdicts, head, done)
        write_results(Path(args.markdown).with_suffix(".json"), raw)
        print(f"wrote {args.markdown}")


def rewrite(markdown: Path, tasks: list[str]) -> None:
    """``markdown``'s sections of ``tasks`` again from the per-seed numbers in its ``.json`` (verdicts recomputed)."""
    raw = json.loads(markdown.with_suffix(".json").read_text())
    rows, verdicts, done = [], [], {}
    for name in (t for t in tasks if t in raw):
        results = [{m: tuple(v) for m, v in r.items()} for r in raw[name]]
        task_rows, sentence = summarize(name, results, higher_better=name != "house_prices")
        rows += task_rows
        verdicts.append(sentence)
        done[name] = len(results)
    head = ["task", "method", "held-out metric", "ln L_train", "gain over the endpoint"]
    write_markdown(markdown, rows, verdicts, head, done)
    print(f"rewrote {markdown} ({', '.join(done)}) from {markdown.with_suffix('.json').name}")


def write_markdown(path: Path, rows: list[list[str]], verdicts: list[str], head: list[str],
                   seeds: dict[str, int]) -> None:
    """One ``### task`` section per task measured (``seeds``: how many seeds each task ran), replacing that task's
    section in ``path`` and keeping the others (tasks can be rerun one at a time)."""
    sections: dict[str, str] = {}
    if path.exists():
        for chunk in path.read_text().split("\n### ")[1:]:
            name, _, body = chunk.partition("\n")
            sections[name.strip()] = body.strip()
    for verdict in verdicts:
        task = verdict.split(":", 1)[0]
        body = [table([r for r in rows if r[0] == task], head), "",
                f"Mean ± standard error over {seeds[task]} seeds (gains paired with the endpoint of the same seed)."
                f" {verdict}."]
        sections[task] = "\n".join(body)
    lines = ["Held-out metric: hard test accuracy, or ln test MSE for house_prices (lower is better); gains signed so"
             " that positive is better. Rows: see benchmarks/training_modes.py.", ""]
    for task, body in sections.items():
        lines += [f"### {task}", "", body, ""]
    path.write_text("\n".join(lines))


def write_results(path: Path, raw: dict[str, list[dict]]) -> None:
    """The per-seed (ln L_train, held-out metric) of every method, by task, merged into ``path`` like the Markdown
    (so that a verdict can be recomputed without rerunning)."""
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.update({task: [{m: list(v) for m, v in r.items()} for r in results] for task, results in raw.items()})
    path.write_text(json.dumps(merged, indent=1) + "\n")


if __name__ == "__main__":
    main()
