"""``LandscapeLogger``: send the landscape to whatever loggers the Trainer has. It observes, never steers.

- Every ``every_n_steps`` Lightning steps and at the end of the fit: the S - max S figure (max-S line, Eq. (1)
  curve) as an image: ``WandbLogger.log_image`` for W&B, ``add_figure`` for TensorBoard, a PNG file in the
  logger's directory for the others (CSV).
- At the end: the curves (per ln L_train bin: visits, max-S test metric, Eq. (1) mean, recorded observables) as a
  W&B table or a CSV file, and the landscape ``.npz`` as a W&B artifact (a file in the logger's directory otherwise).

Scalars (WL factor, flatness, acceptance, walkers' CV range) are already logged by the strategy once per Lightning
step; this callback adds only what does not fit a scalar, at a cadence of its own.
"""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_entropy.core.landscape import Landscape


def curves(landscape: Landscape, exclude: int = 1) -> dict[str, np.ndarray]:
    """Per x bin: centre, visits and the readouts the landscape offers (NaN where a bin was never visited)."""
    x = landscape.centers[0]
    visits = landscape.histogram
    out = {landscape.names[0]: x, "visits": visits.sum(axis=tuple(range(1, visits.ndim)))}
    if landscape.ndim == 2:
        out["max_entropy_" + landscape.names[1]] = landscape.max_entropy_curve(exclude=exclude)[1]
        out["mean_" + landscape.names[1]] = landscape.mean_curve()[1]
    for name in landscape.observable_names:
        _, mean, err = landscape.observable_curve(name)
        out["mean_" + name], out["stderr_" + name] = mean, err
    return out


class LandscapeLogger(Callback):
    """Log the strategy's landscape as an image every ``every_n_steps`` Lightning steps and at the end, plus the
    curves table and the ``.npz`` at the end.

    Args:
        every_n_steps: Lightning steps between images (0: only at the end).
        exclude: test-axis rows ignored at each end by the max-S line.
        artifact: log the landscape ``.npz`` (W&B artifact, or a file beside the other logs).
    """

    def __init__(self, every_n_steps: int = 100, exclude: int = 1, artifact: bool = True) -> None:
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps={every_n_steps} must be >= 0 (0 logs only at the end).")
        self.every_n_steps = every_n_steps
        self.exclude = exclude
        self.artifact = artifact
        self._last_image_step: int | None = None

    @staticmethod
    def _landscape(trainer: Trainer) -> Landscape | None:
        return getattr(trainer.strategy, "_landscape", None)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and self._landscape(trainer) is not None:
            self._log_image(trainer, step)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        landscape = self._landscape(trainer)
        if landscape is None or not trainer.is_global_zero:
            return
        self._log_image(trainer, trainer.global_step)
        table = curves(landscape, self.exclude)
        for logger in trainer.loggers:
            if _is_wandb(logger):
                columns = list(table)
                rows = [[_plain(table[c][i]) for c in columns] for i in range(len(table[columns[0]]))]
                logger.log_table(key="landscape/curves", columns=columns, data=rows, step=trainer.global_step)
                if self.artifact:
                    self._wandb_artifact(logger, landscape)
            else:
                folder = _folder(logger)
                if folder is None:
                    continue
                _write_csv(folder / "landscape_curves.csv", table)
                if self.artifact:
                    landscape.save(folder / "landscape.npz")

    def _log_image(self, trainer: Trainer, step: int) -> None:
        if not trainer.is_global_zero or not trainer.loggers or step == self._last_image_step:
            return
        self._last_image_step = step
        from lightning_entropy.plotting import landscape_figure

        landscape = self._landscape(trainer)
        fig = landscape_figure(landscape, exclude=self.exclude, title=f"step {step}: {landscape.walker_steps:,} walker-steps")
        for logger in trainer.loggers:
            if _is_wandb(logger):
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "landscape.png"
                    fig.savefig(path, dpi=100)
                    logger.log_image(key="landscape/heatmap", images=[str(path)], step=step)
            elif hasattr(getattr(logger, "experiment", None), "add_figure"):
                logger.experiment.add_figure("landscape/heatmap", fig, global_step=step, close=False)
            else:
                folder = _folder(logger)
                if folder is not None:
                    (folder / "landscape_images").mkdir(parents=True, exist_ok=True)
                    fig.savefig(folder / "landscape_images" / f"step_{step:07d}.png", dpi=100)

    @staticmethod
    def _wandb_artifact(logger: Any, landscape: Landscape) -> None:
        import wandb

        run = logger.experiment
        with tempfile.TemporaryDirectory() as tmp:
            path = landscape.save(Path(tmp) / "landscape.npz")
            artifact = wandb.Artifact(name=f"landscape-{run.id}", type="landscape", metadata=_jsonable(landscape.metadata))
            artifact.add_file(str(path))
            run.log_artifact(artifact)


def _is_wandb(logger: Any) -> bool:
    return type(logger).__name__ == "WandbLogger"


def _folder(logger: Any) -> Path | None:
    folder = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
    return Path(folder) if folder else None


def _plain(value: Any) -> Any:
    value = float(value)
    return None if not np.isfinite(value) else value


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


def _write_csv(path: Path, table: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(list(table))
        for row in zip(*table.values()):
            writer.writerow(["" if not np.isfinite(v) else f"{float(v):.6g}" for v in row])
