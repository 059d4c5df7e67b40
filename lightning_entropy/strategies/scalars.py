"""The sampler's scalars (``wl/*``, ``md/*``) once per Lightning step: on the progress bar and in every logger.

``module.log`` would hand them to the loggers only every ``log_every_n_steps`` Lightning steps, so a short run (a few
Lightning steps of many sampler steps each) would log none. Here the figures go on the progress bar and into
``trainer.callback_metrics`` through ``module.log(..., logger=False)``, and straight to every logger of the Trainer
with ``log_metrics`` at every Lightning step (one host transfer for all of them; never inside a chunk).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import torch


def log_step(module: Any, metrics: Mapping[str, torch.Tensor], prog_bar: Collection[str] = ()) -> None:
    """Show ``metrics`` (scalar tensors) on the bar (the names in ``prog_bar``) and send them all to the loggers.

    Does nothing outside ``training_step`` (Lightning refuses ``self.log`` there)."""
    if module is None or getattr(module, "_current_fx_name", None) != "training_step" or not metrics:
        return
    for name, value in metrics.items():
        module.log(name, value.float(), prog_bar=name in prog_bar, logger=False, on_step=True, on_epoch=False,
                   batch_size=1)
    trainer = module.trainer
    loggers = trainer.loggers if trainer.is_global_zero else []
    if not loggers:
        return
    device = next(iter(metrics.values())).device
    values = torch.stack([v.detach().to(device=device, dtype=torch.float64).reshape(()) for v in metrics.values()])
    plain = dict(zip(metrics, values.tolist()))
    for logger in loggers:
        logger.log_metrics(plain, step=trainer.global_step)
