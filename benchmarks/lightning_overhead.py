"""What Lightning adds on top of the bare WLMD loop.

Task: the spiral classifier (116 parameters, 40/40 points), 128 walkers, CVs (ln train CE, smoothed test accuracy),
the strategy's defaults otherwise (fan-out box, dt 0.02, friction 0.01, Metropolis, FlatnessOneOverT(f0=0.1)).

  bare      - ``WLMD.step`` driven by hand exactly like the strategy's inner loop: the schedule's factor every step,
              the schedule's ``update`` after every chunk of 100 steps (an independent set of 128 walkers).
  Lightning - ``Trainer(strategy=WangLandauStrategy(walkers=128, steps_per_lightning_step=100, start="uniform"))``,
              ``trainer.fit(model, datamodule=dm)``; one Lightning step = 100 sampler steps (and, with the full-batch
              spiral loader, one epoch).

The two are interleaved at the finest grain: a Callback's ``on_train_batch_end`` runs one bare chunk of 100 steps
and times it; the Lightning cost of a step is the wall time from the end of that bare chunk to the next
``on_train_batch_end`` (everything the Trainer does for one step: hooks, data fetch, epoch bookkeeping, the
strategy's chunk, schedule update, logging). The one-time setup (data caching, starting walkers, grid ranges) and
the first steps (warm-up) are excluded. Compared: the fastest chunk of each, and the median of per-step ratios;
the verdict uses the larger (less favourable) overhead of the two.
Target (issue): Lightning adds <= 15 % per sampler step.
Run: ``.venv/bin/python benchmarks/lightning_overhead.py``.
"""

from __future__ import annotations

import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  (first: sets the OpenMP policy before torch loads)

import torch  # noqa: E402

TARGET = 0.15
WALKERS = 128
CHUNK = 100  # sampler steps per Lightning step
WARMUP = 2  # Lightning steps excluded
MEASURED = 24  # Lightning steps (and bare chunks) timed, at most
MIN_MEASURED = 6
BUDGET_S = 120.0  # on a busy machine, stop after this many seconds of measuring (once MIN_MEASURED are in)


def run() -> tuple[list[float], list[float], float]:
    """Seconds per chunk of CHUNK sampler steps: (Lightning, bare, setup seconds)."""
    import lightning.pytorch as pl

    from lightning_entropy import WangLandauStrategy
    from lightning_entropy.tasks import SpiralClassifier, SpiralDataModule

    box: dict = {}

    def bare_loop(strategy) -> C.MDLoop:
        """A bare loop doing exactly the strategy's work: its evaluator, box and MD constants, a copy of its grid,
        its walkers' current positions. Falls back to an equivalent hand-built setup if those internals moved."""
        try:
            from lightning_entropy.core.landscape import Landscape

            land = Landscape.from_state_dict(strategy.landscape.state_dict())
            theta0 = strategy.walker_parameters.detach().clone()
            md = C.MDLoop(strategy._evaluator, land, strategy._bound, theta0, seed=7, config=strategy.md_config)
            box["source"] = "the strategy's own evaluator, box, MD constants, a copy of its grid and walkers"
        except AttributeError as err:
            s = C.spiral_setup()
            md = C.MDLoop(s["evaluator"], s["landscape"](), s["bound"], C.uniform_walkers(WALKERS, s["bound"], seed=7))
            box["source"] = f"an equivalent hand-built setup (strategy internals unavailable: {err})"
        return md

    light: list[float] = []
    bare: list[float] = []
    marks: dict[str, float] = {}

    class Interleave(pl.Callback):
        def on_fit_start(self, trainer, pl_module):
            marks["fit_start"] = time.perf_counter()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 0:
                marks["first_batch"] = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            now = time.perf_counter()
            step = trainer.global_step  # already counts this step
            if step > WARMUP:
                light.append(now - marks["last"])
            if "md" not in box:
                box["md"] = bare_loop(trainer.strategy)
            start = time.perf_counter()
            box["md"].chunk(CHUNK)
            if step > WARMUP:
                bare.append(time.perf_counter() - start)
            marks["last"] = time.perf_counter()
            marks.setdefault("measure_start", marks["last"])
            if len(light) >= MIN_MEASURED and marks["last"] - marks["measure_start"] > BUDGET_S:
                trainer.should_stop = True

    torch.manual_seed(0)
    model, dm = SpiralClassifier(width=6, depth=3), SpiralDataModule()
    strategy = WangLandauStrategy(walkers=WALKERS, steps_per_lightning_step=CHUNK, start="uniform")
    trainer = pl.Trainer(
        strategy=strategy, max_steps=WARMUP + MEASURED, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[Interleave()],
    )
    trainer.fit(model, datamodule=dm)
    assert strategy.landscape.walker_steps == (WARMUP + len(light)) * CHUNK * WALKERS
    assert len(light) == len(bare) >= MIN_MEASURED, (len(light), len(bare))
    print("bare loop built from", box["source"])
    return light, bare, marks["first_batch"] - marks["fit_start"]


def main() -> None:
    warnings.filterwarnings("ignore")  # Lightning's dataloader-worker hints etc.
    import logging

    import lightning.pytorch  # noqa: F401  (configures its loggers; quieten them after)

    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)
    C.set_threads()
    print(f"== lightning_overhead: spiral classifier, {WALKERS} walkers, {CHUNK} sampler steps per Lightning step ==")
    print("machine:", C.machine())
    light, bare, setup = run()
    b, lt = C.best(bare) / CHUNK, C.best(light) / CHUNK
    paired = C.paired_median(light, bare) - 1
    overhead = max(lt / b - 1, paired)
    rows = [
        ["bare wlmd.step loop", f"{b * 1e3:.2f}", f"{WALKERS / b:,.0f}", C.spread(bare)],
        ["Trainer + WangLandauStrategy", f"{lt * 1e3:.2f}", f"{WALKERS / lt:,.0f}", C.spread(light)],
    ]
    print(C.table(rows, ["", "ms/sampler step", "walker-steps/s", "noise"]))
    n = len(light)
    print(f"    best of {n} interleaved chunks of {CHUNK} steps each (after {WARMUP} warm-up steps); one-time"
          f" Trainer setup (fit start -> first batch, excluded): {setup:.2f} s")
    print(f"    overhead from the best chunks {lt / b - 1:+.1%}, median of the {n} per-step ratios {paired:+.1%}")
    print(f"\nRESULT lightning_overhead: Lightning adds {overhead:+.1%} per sampler step   "
          f"target <= +{TARGET:.0%}   {C.verdict(overhead <= TARGET)}")
    print("machine after:", f"load average {C.load():.1f}")


if __name__ == "__main__":
    main()
