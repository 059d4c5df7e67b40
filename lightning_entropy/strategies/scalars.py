"""The sampler's scalars (``wl/*``, ``md/*``) once per Lightning step: on the progress bar and in every logger.

``module.log`` would hand them to the loggers only every ``log_every_n_steps`` Lightning steps, so a short run (a few
Lightning steps of many sampler steps each) would log none. Here the figures go on the progress bar and into
``trainer.callback_metrics`` through ``module.log(..., logger=False)``, and straight to every logger of the Trainer
with ``log_metrics`` at every Lightning step (one host transfer for all of them; never inside a chunk).

:func:`wang_landau_metrics` and :func:`restraint_metrics` are the figures themselves, as device tensors (no host
synchronisation), with what each strategy shows on the progress bar (:data:`WANG_LANDAU_PROGRESS`,
:data:`RESTRAINT_PROGRESS`).
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


#: What the progress bar shows of the Wang-Landau strategies' scalars.
WANG_LANDAU_PROGRESS = ("wl/factor", "wl/flatness", "wl/acceptance", "wl/x_min", "wl/x_max")
#: What the progress bar shows of the entropy-MD strategy's scalars.
RESTRAINT_PROGRESS = ("md/ln_train_loss", "md/heldout", "md/acceptance")


def wang_landau_metrics(state: Any, landscape: Any, run: Any, schedule: Any, accepted: torch.Tensor,
                        info: Mapping[str, float] | None) -> dict[str, torch.Tensor]:
    """``wl/*``: the WL factor, flatness, acceptance (``accepted``: the fraction of the last chunk), the walkers' x
    range, reverted and non-finite moves, walker steps; with ``info`` (a ``fill="visit"`` run's chunk figures) the
    windows' factor and flatness, exchange acceptance and whether production (frozen bias) has started."""
    x = state.cv[:, 0]
    if info is not None:
        factor = torch.tensor(info["log_f"])
        flatness = torch.tensor(run.windows.flatness())
    else:
        factor = run.factor(schedule)
        flatness = torch.tensor(landscape.flatness())
    metrics = {"wl/factor": factor.float(), "wl/flatness": flatness, "wl/acceptance": accepted.float(),
               "wl/x_min": x.min().float(), "wl/x_max": x.max().float(),
               "wl/reverted": state.reverted.sum().float(), "wl/nonfinite": state.nonfinite.sum().float(),
               "wl/walker_steps": torch.tensor(float(landscape.walker_steps))}
    if info is not None:
        metrics["wl/exchange_acceptance"] = torch.tensor(info["exchange_acceptance"])
        metrics["wl/production"] = torch.tensor(float(run.frozen))
    return metrics


def restraint_metrics(state: Any, target: float, width: float, bound: torch.Tensor, dt: float,
                      accepted: torch.Tensor, *, heldout: bool) -> dict[str, torch.Tensor]:
    """``md/*``: the walkers' mean ln L_train and its spread, its offset from ``target`` in restraint ``width`` s,
    the acceptance, the walkers' spread in box units, the time step; with ``heldout`` the latest held-out metric."""
    md = state.md
    x = md.cv[:, 0]
    metrics = {
        "md/ln_train_loss": x.mean(),
        "md/ln_train_loss_std": x.std(unbiased=False),
        "md/offset_widths": (x.mean() - target) / width,
        "md/acceptance": accepted,
        "md/spread": (md.theta / bound).std(0, unbiased=False).mean(),  # box units
        "md/dt": torch.tensor(dt),
    }
    if heldout and state.observed:
        metrics["md/heldout"] = latest_heldout(state.observed)
    return metrics


def latest_heldout(observed: list[torch.Tensor]) -> torch.Tensor:
    """The walkers' mean held-out metric at the latest observation. ``observed`` holds ``(1 + k, W)`` rows (ln
    L_train, then the ``k`` observables) or ``(n, 1 + k, W)`` chunks of them."""
    last = observed[-1]
    if last.dim() == 3:
        last = last[-1]
    return last[1].mean()
