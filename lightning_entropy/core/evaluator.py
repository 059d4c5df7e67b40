"""Evaluate collective variables, their gradients and unbiased observables for many walkers at once.

The vectorized path runs ``torch.func.functional_call`` under ``torch.func.vmap`` over the stacked parameters: one
batched forward over the train and held-out inputs together for all walkers, and one backward pass for the
gradient of the bias ``sum_k (dS/dcv_k) cv_k`` (the sampler supplies the slopes once the CVs are known). Modules that vmap cannot trace (in-place buffer updates,
data-dependent control flow) fall back to a loop over walkers that builds the same autograd graph. Modules without
a standard loss are evaluated through their own ``training_step`` / ``validation_step`` (the "step" path).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.func import functional_call, vmap

from lightning_entropy.core.variables import CollectiveVariable
from lightning_entropy.core.walkers import ParameterLayout

@dataclass
class FullBatch:
    """Cached full-batch data: ``train`` and ``test`` are ``(inputs, targets)`` pairs (``test`` may be ``None``).

    On the step path (a module without a standard loss) ``inputs`` is the whole batch exactly as the module's
    ``training_step``/``validation_step`` expects it, and ``targets`` is ``None``.
    """

    train: tuple[Any, torch.Tensor | None]
    test: tuple[Any, torch.Tensor | None] | None = None

    @property
    def has_heldout(self) -> bool:
        return self.test is not None


class Evaluation(NamedTuple):
    values: torch.Tensor | None  # (W, d) collective variables
    observed: torch.Tensor | None  # (W, k) observables, no gradient


def extract_loss(output: Any, hook: str) -> torch.Tensor:
    """The loss tensor of a ``training_step``/``validation_step`` output (a tensor or a one-value/``loss`` dict)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        if "loss" in output:
            return output["loss"]
        values = [v for v in output.values() if isinstance(v, torch.Tensor)]
        if len(values) == 1:
            return values[0]
    raise ValueError(
        f"{hook} returned {type(output).__name__} without a loss: the sampler needs a scalar loss tensor (or a dict"
        f" with key 'loss'). Return the loss from {hook}, or give the module a `loss_fn` so that the sampler can use"
        " forward() directly."
    )


class _StepCall(nn.Module):
    """Calls a LightningModule hook under ``functional_call`` so the walker's parameters are substituted."""

    def __init__(self, module: nn.Module, hook: str) -> None:
        super().__init__()
        self.inner = module
        self.hook = hook

    def forward(self, batch: Any, index: int) -> torch.Tensor:
        return extract_loss(getattr(self.inner, self.hook)(batch, index), self.hook)


_ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.Softplus, nn.Identity)


def linear_chain(module: nn.Module) -> list[tuple[str, Any]] | None:
    """If ``module``'s forward is a plain chain of ``nn.Linear`` layers and elementwise activations (found by
    ``torch.fx`` tracing), the chain as ``[("linear", name) | ("act", module)]``; otherwise ``None``.

    Such networks are evaluated for all walkers with batched matrix products directly, which skips vmap's per-op
    dispatch (the dominant cost for small networks with many walkers).
    """
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception:  # noqa: BLE001 - anything fx cannot trace uses the general path
        return None
    nodes = list(graph.nodes)
    if len(nodes) < 3 or nodes[0].op != "placeholder" or nodes[-1].op != "output":
        return None
    chain, prev = [], nodes[0]
    for node in nodes[1:-1]:
        if node.op != "call_module" or node.args != (prev,) or node.kwargs:
            return None
        sub = module.get_submodule(node.target)
        if isinstance(sub, nn.Linear):
            chain.append(("linear", node.target))
        elif type(sub) in _ELEMENTWISE:
            chain.append(("act", sub))
        else:
            return None
        prev = node
    if nodes[-1].args != (prev,) or not any(kind == "linear" for kind, _ in chain):
        return None
    return chain


class Evaluator:
    """Computes CVs (W, d), their Jacobians (W, d, P) and observables (W, k) for stacked walkers ``theta`` (W, P).

    Args:
        module: the network; its trainable parameters are replaced by each walker's row of ``theta``.
        layout: the flat layout of those parameters.
        data: cached full-batch data.
        variables: the CVs that span the landscape (one or two).
        observables: CVs recorded per bin without biasing (no gradient).
        vectorize: ``True`` (vmap, error if impossible), ``False`` (loop over walkers) or ``"auto"`` (probe).
        step_hooks: outputs are the losses returned by ``training_step`` (train) and ``heldout_hook`` (test).
    """

    def __init__(
        self,
        module: nn.Module,
        layout: ParameterLayout,
        data: FullBatch,
        variables: Sequence[CollectiveVariable],
        observables: Sequence[CollectiveVariable] = (),
        *,
        vectorize: bool | str = "auto",
        step_hooks: bool = False,
        heldout_hook: str = "validation_step",
    ) -> None:
        self.module = module
        self.layout = layout
        self.data = data
        self.variables = tuple(variables)
        self.observables = tuple(observables)
        self.buffers = dict(module.named_buffers())
        for cv in self.variables + self.observables:
            if cv.split == "test" and data.test is None:
                raise ValueError(
                    f"Collective variable {cv.name!r} needs held-out data, but none was found. Give the module or"
                    " datamodule a val_dataloader (or a test_dataloader with heldout='test'), or use"
                    " variables=('train_loss',)."
                )
        self._hooks = {"train": _StepCall(module, "training_step"), "test": _StepCall(module, heldout_hook)}
        self.step_hooks = step_hooks
        self._batched = {split: vmap(partial(self._call_one, split), in_dims=(0, None)) for split in ("train", "test")}
        self.vectorized = self._probe_vmap() if vectorize == "auto" else bool(vectorize)
        train_x = data.train[0]
        self._chain = None
        if self.vectorized and not step_hooks and isinstance(train_x, torch.Tensor) and train_x.dim() == 2:
            self._chain = linear_chain(module)
        self._differentiable = torch.tensor([cv.differentiable for cv in self.variables])
        test_x = data.test[0] if data.test is not None else None
        self._joint = (
            not step_hooks
            and isinstance(train_x, torch.Tensor)
            and isinstance(test_x, torch.Tensor)
            and train_x.shape[1:] == test_x.shape[1:]
            and train_x.dtype == test_x.dtype
        )

    # -- forward passes -----------------------------------------------------------------------------------------

    def _call_one(self, split: str, params: dict[str, torch.Tensor], x: Any) -> torch.Tensor:
        if self.step_hooks:
            params = {"inner." + k: v for k, v in params.items()}
            buffers = {"inner." + k: v for k, v in self.buffers.items()}
            return functional_call(self._hooks[split], (params, buffers), (x, 0), strict=False)
        out = functional_call(self.module, (params, self.buffers), (x,), strict=False)
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"{type(self.module).__name__}.forward returned {type(out).__name__}; the sampler needs one tensor of"
                " outputs (logits or predictions). Wrap the module so forward returns a tensor."
            )
        return out

    def _probe_vmap(self) -> bool:
        theta = self.layout.flatten(self.module).unsqueeze(0).expand(2, -1)
        try:
            with torch.no_grad():
                self._batched["train"](self.layout.unflatten(theta), self.data.train[0])
        except Exception as err:  # noqa: BLE001 - any tracing failure selects the fallback
            warnings.warn(
                f"torch.func.vmap cannot trace {type(self.module).__name__} ({type(err).__name__}: {err}); walkers are"
                " evaluated one after another, which is slower. Avoid in-place buffer updates, .item() and"
                " data-dependent control flow in the forward pass to get the vectorized path.",
                stacklevel=3,
            )
            return False
        return True

    def _outputs(self, theta: torch.Tensor, splits: tuple[str, ...]) -> dict[str, Any]:
        """Outputs per split; train and test inputs go through one batched forward when they can be stacked."""
        params = self.layout.unflatten(theta)
        inputs = {split: (self.data.train if split == "train" else self.data.test)[0] for split in splits}
        if self._joint and len(splits) == 2:
            n = inputs["train"].shape[0]
            out = self._run(params, "train", torch.cat([inputs["train"], inputs["test"]]), theta.shape[0])
            if isinstance(out, list):
                return {"train": [o[:n] for o in out], "test": [o[n:] for o in out]}
            return {"train": out[:, :n], "test": out[:, n:]}
        return {split: self._run(params, split, x, theta.shape[0]) for split, x in inputs.items()}

    def _run(self, params: dict[str, torch.Tensor], split: str, x: Any, walkers: int):
        if self._chain is not None:
            return self._run_chain(params, x, walkers)
        if self.vectorized:
            return self._batched[split](params, x)
        return [self._call_one(split, {k: v[w] for k, v in params.items()}, x) for w in range(walkers)]

    def _run_chain(self, params: dict[str, torch.Tensor], x: torch.Tensor, walkers: int) -> torch.Tensor:
        """A Linear/activation chain for all walkers at once, one batched product per layer.

        Activations are kept feature-major, ``(W, features, N)``, so each layer is ``W_w @ h`` with the weight in its
        stored ``(out, in)`` layout: for narrow layers this orientation is several times faster than ``h @ W^T``.
        """
        h = x.T.expand(walkers, *x.T.shape)
        for kind, item in self._chain:
            if kind == "act":
                h = item(h)
                continue
            weight = params[item + ".weight"]
            bias = params.get(item + ".bias")
            h = torch.bmm(weight, h) if bias is None else torch.baddbmm(bias.unsqueeze(-1), weight, h)
        return h.transpose(1, 2)

    def _apply(self, cv: CollectiveVariable, outputs, targets: torch.Tensor | None) -> torch.Tensor:
        if isinstance(outputs, list):
            return torch.stack([cv.fn(o, targets) for o in outputs])
        return vmap(cv.fn, in_dims=(0, None))(outputs, targets)

    def _values(self, theta: torch.Tensor, cvs: Sequence[CollectiveVariable]) -> torch.Tensor:
        splits = tuple(dict.fromkeys(cv.split for cv in cvs))
        outputs = self._outputs(theta, splits)
        targets = {"train": self.data.train[1], "test": self.data.test[1] if self.data.test is not None else None}
        return torch.stack([self._apply(cv, outputs[cv.split], targets[cv.split]) for cv in cvs], dim=1)

    # -- public ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(self, theta: torch.Tensor, *, observe: bool = False) -> Evaluation:
        """CVs ``(W, d)`` at ``theta`` without gradient (and the observables ``(W, k)`` if ``observe``)."""
        values = self._values(theta, self.variables)
        observed = self._values(theta, self.observables) if observe and self.observables else None
        return Evaluation(values, observed)

    @torch.no_grad()
    def observe(self, theta: torch.Tensor) -> torch.Tensor:
        """The observables ``(W, k)`` at ``theta``, without gradient."""
        return self._values(theta, self.observables)

    def value_and_grad(
        self, theta: torch.Tensor, bias: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CVs, the bias and its gradient in parameter space, in one forward and one backward pass.

        ``bias(cv) -> (value (W,), slope (W, d))`` is evaluated on the CVs (e.g. ``Landscape.value_and_slope``);
        returns ``(cv (W, d), value (W,), grad (W, P))`` with ``grad = sum_k slope_k * d cv_k / d theta``.
        Non-differentiable CVs contribute no gradient.
        """
        leaf = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            values = self._values(leaf, self.variables)
            value, slope = bias(values.detach())
            weights = torch.where(self._differentiable.to(values.device), slope.to(values.dtype), torch.zeros((), dtype=values.dtype))
            weights = torch.nan_to_num(weights, nan=0.0, posinf=0.0, neginf=0.0)
            target = torch.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
            (grad,) = torch.autograd.grad((target * weights).sum(), leaf, allow_unused=True)
        if grad is None:
            grad = torch.zeros_like(theta)
        return values.detach(), value, grad
