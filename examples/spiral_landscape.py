"""Sample the entropy landscape of the paper's 116-parameter spiral classifier with Lightning.

    python examples/spiral_landscape.py            # ~1 minute on a 2-core CPU

Writes spiral_landscape.npz and prints, per train-loss bin, where S is largest and the Eq. (1) mean accuracy.
"""

import numpy as np
from lightning.pytorch import Trainer

from lightning_entropy import WangLandauStrategy
from lightning_entropy.tasks import SpiralClassifier, SpiralDataModule

strategy = WangLandauStrategy(
    variables=("train_loss", "test_accuracy"),  # S(ln L_train, smoothed test accuracy)
    walkers=128,
    box="fan_out",  # b = 2/sqrt(fan_out) per tensor
    start="adam",  # walkers begin at spread train losses after short Adam runs
    seed=0,
)
trainer = Trainer(strategy=strategy, max_steps=100, logger=False, enable_checkpointing=False, limit_val_batches=0)
trainer.fit(SpiralClassifier(), datamodule=SpiralDataModule())

landscape = trainer.strategy.landscape
landscape.save("spiral_landscape.npz")
x, top = landscape.max_entropy_curve(exclude=1)
_, mean = landscape.mean_curve()
print(landscape)
print(" ln L_train   max-S accuracy   Eq.(1) accuracy")
for xi, t, m in zip(x, top, mean):
    if np.isfinite(t):
        print(f"{xi:10.2f}   {t:14.3f}   {m:15.3f}")
