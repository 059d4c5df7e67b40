"""Walkers on two processes sharing one landscape (``wang_landau_ddp``) against one process with all the walkers.

Task: the spiral classifier (116 parameters, 40/40 points), CVs (ln train CE, smoothed test accuracy), the
strategy's defaults otherwise (fan-out box, dt 0.02, friction 0.01, Metropolis, FlatnessOneOverT(f0=0.1)),
``start="uniform"``, 100 sampler steps per Lightning step.

  1 x 2W   - ``WangLandauStrategy(walkers=2W)``, one process with BENCH_THREADS threads (default 2).
  1 x 2W/1t - the same with one thread (half the cores): what one process of the DDP run could do alone.
  2 x W    - ``WangLandauDDPStrategy(walkers=W)``, ``Trainer(accelerator="cpu", devices=2)``: two spawned processes
             (gloo) with BENCH_THREADS // 2 threads each (the same cores in total), landscape synchronised after every
             Lightning step (``sync_every=1``).
  2 x W/10 - the same with ``sync_every=10``.

Measured per Lightning step (100 sampler steps of every walker), after WARMUP steps: the wall time between two
``on_train_batch_end`` calls of rank 0 (everything: sampler, synchronisation, Lightning), and on every rank the time
spent in ``sync_landscape`` (the all-reduce plus waiting for the slower rank). Printed: walker-steps per second from
the fastest steps and from the median step, the ratios to 1 x 2W, and the communication share of the step time
(median over steps, the larger of the two ranks). Process start-up (several seconds of imports per process) is not
included: it is paid once per fit.
Run: ``.venv/bin/python benchmarks/ddp.py`` (BENCH_DDP_WALKERS=W, default 128).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  (first: sets the OpenMP policy before torch loads)

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402

WALKERS = int(os.environ.get("BENCH_DDP_WALKERS", "128"))  # per rank; the single process runs 2 x WALKERS
CHUNK = 100
WARMUP = 3
MEASURED = 12

# at import, so that the spawned ranks (which import this file) are quiet too
warnings.filterwarnings("ignore")
for _name in ("lightning.pytorch", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.ERROR)


class StepTimer(pl.Callback):
    """Every rank records the wall time of each Lightning step and the strategy's synchronisation time in it."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.rows: list[tuple[float, float]] = []
        self._last: tuple[float, float] | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now, sync = time.perf_counter(), getattr(trainer.strategy, "sync_seconds", 0.0)
        if self._last is not None:
            self.rows.append((now - self._last[0], sync - self._last[1]))
        self._last = (now, sync)

    def on_train_end(self, trainer, pl_module) -> None:
        rows = self.rows[WARMUP - 1 :]
        with open(Path(self.directory) / f"rank{trainer.global_rank}.json", "w") as fh:
            json.dump(rows, fh)


def fit(kind: str, directory: str) -> list[list[tuple[float, float]]]:
    """Run one configuration; return each rank's (step seconds, sync seconds) rows."""
    from lightning_entropy import WangLandauDDPStrategy, WangLandauStrategy
    from lightning_entropy.tasks import SpiralClassifier, SpiralDataModule

    common = dict(start="uniform", steps_per_lightning_step=CHUNK, seed=1)
    if kind.startswith("1x2W"):
        torch.set_num_threads(1 if kind.endswith("/1t") else C.THREADS)
        strategy, devices = WangLandauStrategy(walkers=2 * WALKERS, **common), 1
    else:
        os.environ["OMP_NUM_THREADS"] = str(max(1, C.THREADS // 2))  # read by Lightning's launcher in each rank
        sync_every = 10 if kind == "2xW/10" else 1
        strategy, devices = WangLandauDDPStrategy(walkers=WALKERS, sync_every=sync_every, **common), 2
    trainer = pl.Trainer(strategy=strategy, accelerator="cpu", devices=devices, max_steps=WARMUP + MEASURED,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                         callbacks=[StepTimer(directory)])
    trainer.fit(SpiralClassifier(), datamodule=SpiralDataModule())
    return [json.load(open(Path(directory) / f"rank{r}.json")) for r in range(devices)]


def main() -> None:
    C.set_threads()
    print(C.machine())
    print(f"spiral classifier, {WALKERS} walkers per rank, {CHUNK} sampler steps per Lightning step,"
          f" {MEASURED} steps timed after {WARMUP}")
    results = {}
    for kind in ("1x2W", "2xW", "1x2W/1t", "2xW/10"):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            results[kind] = fit(kind, tmp)
            print(f"  {kind}: fit took {time.perf_counter() - start:.0f} s (with process start-up)", flush=True)
    total = 2 * WALKERS * CHUNK  # walker-steps per Lightning step, the same in every configuration
    rows, rate = [], {}
    for kind, ranks in results.items():
        steps = [s for s, _ in ranks[0]]
        best, median = min(steps), statistics.median(steps)
        rate[kind] = (total / best, total / median)
        if len(ranks) > 1:
            shares = [statistics.median(sync / step for step, sync in r) for r in ranks]
            share = f"{max(shares):.1%}"
        else:
            share = "-"
        rows.append([kind, f"{total / best:,.0f}", f"{total / median:,.0f}", C.spread(steps), share])
    print(C.table(rows, ["setup", "walker-steps/s (best)", "(median)", "spread", "sync share"]))
    for kind in ("2xW", "2xW/10", "1x2W/1t"):
        best_ratio, median_ratio = rate[kind][0] / rate["1x2W"][0], rate[kind][1] / rate["1x2W"][1]
        name = kind.replace("2W", str(2 * WALKERS)).replace("W", str(WALKERS))
        print(f"RESULT ddp {name} vs 1x{2 * WALKERS}: {min(best_ratio, median_ratio):.2f}x"
              f" walker-steps/s (best {best_ratio:.2f}x, median {median_ratio:.2f}x)")
    shares = {k: max(statistics.median(sync / step for step, sync in r) for r in results[k]) for k in ("2xW", "2xW/10")}
    print(f"RESULT ddp communication share of the step time: {shares['2xW']:.1%} (sync_every=1),"
          f" {shares['2xW/10']:.1%} (sync_every=10)")


if __name__ == "__main__":
    main()
