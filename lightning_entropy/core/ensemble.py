"""An ensemble of walkers as one ``nn.Module``: the walkers' predictions averaged.

``EnsembleModule(module, layout, theta)`` evaluates the network once per walker (``theta`` is ``(W, P)``, one row per
walker, in ``layout``'s order) and averages: class probabilities for classifiers (``softmax`` of the logits, or
``sigmoid`` of one logit for binary cross-entropy), the outputs themselves for regression. The result is a
probability (classifiers) or a prediction in target units (regression), never a logit. :func:`ensemble_metrics`
measures that averaged prediction as a single model is measured: ln L_train, ln L_test and the hard test accuracy.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.func import functional_call, vmap

from lightning_entropy.core.variables import loss_fn
from lightning_entropy.core.walkers import ParameterLayout

OUTPUTS = ("probs", "binary_probs", "mean")


def output_kind(loss) -> str:
    """How to average walker outputs for a loss kind: ``"probs"``, ``"binary_probs"`` or ``"mean"``."""
    if loss == "cross_entropy":
        return "probs"
    if loss == "binary_cross_entropy":
        return "binary_probs"
    return "mean"


class EnsembleModule(nn.Module):
    """Averaged predictions of ``W`` walkers of ``module``.

    Args:
        module: the network (copied; the copy's parameters are replaced by each walker's).
        layout: the flat parameter layout of ``module``.
        theta: the walkers' flat parameters ``(W, P)`` (kept as a buffer, so the ensemble moves with ``.to()``).
        output: ``"probs"`` (mean softmax), ``"binary_probs"`` (mean sigmoid) or ``"mean"`` (mean output).
    """

    def __init__(self, module: nn.Module, layout: ParameterLayout, theta: torch.Tensor, output: str = "probs") -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output={output!r}: use one of {OUTPUTS}.")
        if theta.dim() != 2 or theta.shape[1] != layout.numel:
            raise ValueError(f"theta has shape {tuple(theta.shape)}; the ensemble needs (walkers, {layout.numel}).")
        self.net = copy.deepcopy(module)
        self.layout = layout
        self.output = output
        self.register_buffer("theta", theta.detach().clone())

    @property
    def walkers(self) -> int:
        return self.theta.shape[0]

    def walker_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Every walker's raw outputs ``(W, N, ...)``."""
        params = self.layout.unflatten(self.theta)
        buffers = dict(self.net.named_buffers())
        call = lambda p, inp: functional_call(self.net, (p, buffers), (inp,), strict=False)  # noqa: E731
        try:
            return vmap(call, in_dims=(0, None))(params, x)
        except Exception:  # noqa: BLE001 - modules vmap cannot trace: one walker after another
            return torch.stack([call({k: v[w] for k, v in params.items()}, x) for w in range(self.walkers)])

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.walker_outputs(x)
        if self.output == "probs":
            out = torch.softmax(out, dim=-1)
        elif self.output == "binary_probs":
            out = torch.sigmoid(out)
        return out.mean(0)


@torch.no_grad()
def ensemble_metrics(ensemble: nn.Module, data, kind: str) -> dict[str, float]:
    """``ln_train_loss``, ``ln_test_loss`` and ``hard_test_accuracy`` of the ensemble's averaged prediction on the
    full batches ``data`` (``.train``/``.test`` pairs, ``test`` may be ``None``); ``kind`` is the standard loss name
    (``cross_entropy``, ``binary_cross_entropy`` or ``mse``: accuracy NaN)."""
    out: dict[str, float] = {}
    for split, pair in (("train", data.train), ("test", data.test)):
        if pair is None:
            continue
        x, y = pair
        pred = ensemble(x)
        if kind == "cross_entropy":
            ln_loss = torch.log(-torch.log(pred.gather(-1, y.long().unsqueeze(-1)).clamp_min(1e-30)).mean())
            acc = (pred.argmax(-1) == y).float().mean()
        elif kind == "binary_cross_entropy":
            p = pred.reshape(y.shape).clamp(1e-30, 1 - 1e-7)
            ln_loss = torch.log(-(y * p.log() + (1 - y) * (1 - p).log()).mean())
            acc = ((p > 0.5) == (y > 0.5)).float().mean()
        else:
            ln_loss = torch.log(loss_fn("mse")(pred, y))
            acc = None
        out[f"ln_{split}_loss"] = float(ln_loss)
        if split == "test":
            out["hard_test_accuracy"] = float(acc) if acc is not None else math.nan
    return out
