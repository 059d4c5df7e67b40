"""The high-entropy advantage of the spiral classifier from Python: a landscape, an Adam baseline on the same split
and model, the readouts with their error bars, the advantage and the convergence verdict.

    python examples/advantage.py            # ~3 minutes on a 2-core CPU

The command line does all of this (and writes the figures) with `lightning-entropy`; this is the same in code.
"""

import numpy as np
import torch
from lightning.pytorch import Trainer

from lightning_entropy import WangLandauStrategy, analysis
from lightning_entropy.baseline import pool, train_baselines
from lightning_entropy.core.schedule import RampPlateauDecay
from lightning_entropy.tasks import SpiralClassifier, SpiralDataModule

datamodule = SpiralDataModule()
strategy = WangLandauStrategy(
    walkers=128, start="adam", start_steps=1000, window=[(-10.0, -0.7), (-1e9, 1e9)], wall_strength=1000.0,
    bin_width=[0.1, 0.05], kernel_sigma=2.0, schedule=RampPlateauDecay(f_max=10.0, t_rise=0, t_drop=4000, t_off=3000),
)
Trainer(strategy=strategy, max_steps=100, logger=False, enable_checkpointing=False, limit_val_batches=0,
        enable_progress_bar=False).fit(SpiralClassifier(), datamodule=datamodule)
landscape = strategy.landscape


def build(seed: int):
    torch.manual_seed(seed)
    return datamodule, SpiralClassifier()  # the sampler's split and model class


records = train_baselines(build, seeds=[0, 1, 2], epochs=3000, optimizer="adam", lr=1e-3, metric="smooth_test_accuracy")
baseline = pool(records, metric="smooth_test_accuracy", edges=landscape.edges[0])  # the landscape's own x bins

reads = analysis.readouts(landscape, exclude=1)
adv = analysis.advantage(reads["max_s"], baseline, higher_is_better=True, in_window=analysis.inside_window(landscape))
verdict = analysis.convergence(landscape, walkers=strategy.walkers)

print(" ln L_train   max-S acc ± err   Adam acc ± sem   advantage")
for i in np.flatnonzero(adv.used):
    print(f"{adv.x[i]:10.2f}   {reads['max_s'].value[i]:.3f} ± {reads['max_s'].error[i]:.3f}"
          f"   {baseline.mean[i]:.3f} ± {np.nan_to_num(baseline.sem[i]):.3f}   {adv.per_bin[i]:+.3f}")
print(f"mean advantage {adv.mean_advantage} ± {adv.mean_advantage_error} over {adv.used.sum()} bins")
print("converged" if verdict.converged else "not converged: " + "; ".join(verdict.reasons))
