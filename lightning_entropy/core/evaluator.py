"""Evaluate collective variables, their gradients and unbiased observables for many walkers at once.

The vectorized path runs ``torch.func.functional_call`` under ``torch.func.vmap`` over the stacked parameters: one
batched forward over the train and held-out inputs together for all walkers, and one backward pass for the
gradient of the bias ``sum_k (dS/dcv_k) cv_k`` (the sampler supplies the slopes once the CVs are known). Modules that vmap cannot trace (in-place buffer updates,
data-dependent control flow) fall back to a loop over walkers that builds the same autograd graph. Modules without
a standard loss are evaluated through their own ``training_step`` / ``validation_step`` (the "step" path), with the
values those hooks log captured (:mod:`lightning_entropy.core.step_hooks`); a CV may also read one logged value while
the others come from ``forward`` (``CollectiveVariable.hook``).

Frozen parameters (``requires_grad=False``) are not in the walkers' layout: every path evaluates them at the module's
own values.
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

from lightning_entropy.core import batched, nonfinite
from lightning_entropy.core.step_hooks import StepCall, extract_loss
from lightning_entropy.core.variables import CollectiveVariable
from lightning_entropy.core.walkers import ParameterLayout

__all__ = ["Evaluation", "Evaluator", "FullBatch", "extract_loss", "linear_chain"]


@dataclass
class FullBatch:
    """Cached full-batch data: ``train`` and ``test`` are ``(inputs, targets)`` pairs (``test`` may be ``None``).

    On the step path (a module without a standard loss) ``inputs`` is the whole batch exactly as the module's
    ``training_step``/``validation_step`` expects it, and ``targets`` is ``None``. ``batches`` optionally holds the
    whole batch per split (``"train"``, ``"test"``) for the hooks when the pairs drop part of it.
    """

    train: tuple[Any, torch.Tensor | None]
    test: tuple[Any, torch.Tensor | None] | None = None
    batches: dict[str, Any] | None = None

    @property
    def has_heldout(self) -> bool:
        return self.test is not None

    def pair(self, split: str) -> tuple[Any, torch.Tensor | None] | None:
        return self.train if split == "train" else self.test

    def batch(self, split: str) -> Any:
        """The whole batch of ``split`` as the module's step hook receives it."""
        if self.batches is not None and self.batches.get(split) is not None:
            return self.batches[split]
        pair = self.pair(split)
        return pair[0] if pair[1] is None else pair


class _Groups(list):
    """Outputs of consecutive groups of walkers, ``[(g, N, ...), ...]`` (the walker-batched program on a CPU: each
    group's tensors, and the gradients flowing back through them, stay small enough for the caches)."""


class Evaluation(NamedTuple):
    values: torch.Tensor | None  # (W, d) collective variables
    observed: torch.Tensor | None  # (W, k) observables, no gradient


_ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.Softplus, nn.Identity)

# d act / d input from the activation's output (what autograd's own backward formulas use), for the hand-written
# backward pass of a Linear chain; an activation not listed here keeps autograd.
_aten = torch.ops.aten
_DERIVATIVES: dict[type, Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    nn.ReLU: lambda act, out, delta: _aten.threshold_backward(delta, out, 0),
    nn.Tanh: lambda act, out, delta: _aten.tanh_backward(delta, out),
    nn.Sigmoid: lambda act, out, delta: _aten.sigmoid_backward(delta, out),
    nn.Identity: lambda act, out, delta: delta,
    nn.LeakyReLU: lambda act, out, delta: _aten.leaky_relu_backward(delta, out, act.negative_slope, True),
}


# The activations applied in place on a Linear layer's fresh output when nothing needs the layer's output itself (the
# chain's hand-written backward reads only each activation's output): one fewer activation-sized tensor per layer.
_IN_PLACE: dict[type, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    nn.ReLU: lambda act, h: torch.relu_(h),
    nn.Tanh: lambda act, h: torch.tanh_(h),
    nn.Sigmoid: lambda act, h: torch.sigmoid_(h),
    nn.LeakyReLU: lambda act, h: torch.nn.functional.leaky_relu_(h, act.negative_slope),
}


def _has_derivative(act: nn.Module) -> bool:
    return type(act) in _DERIVATIVES and not (isinstance(act, nn.LeakyReLU) and act.negative_slope < 0)


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
        module: the network; its trainable parameters are replaced by each walker's row of ``theta`` (frozen ones,
            ``requires_grad=False``, keep the module's values).
        layout: the flat layout of those parameters.
        data: cached full-batch data.
        variables: the CVs that span the landscape (one or two).
        observables: CVs recorded per bin without biasing (no gradient).
        vectorize: ``True`` (vmap, error if impossible), ``False`` (loop over walkers) or ``"auto"`` (probe).
        step_hooks: every CV reads the outputs of ``training_step`` (train) and ``heldout_hook`` (test) instead of
            ``forward``; without it only the CVs marked ``hook`` do.
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
        sampled = set(layout.names)
        self.frozen = {n: p.detach() for n, p in module.named_parameters() if n not in sampled}
        for cv in self.variables + self.observables:
            if cv.split == "test" and data.test is None:
                raise ValueError(
                    f"Collective variable {cv.name!r} needs held-out data, but none was found. Give the module or"
                    " datamodule a val_dataloader (or a test_dataloader with heldout='test'), or use"
                    " variables=('train_loss',)."
                )
        self._hooks = {"train": StepCall(module, "training_step"), "test": StepCall(module, heldout_hook)}
        self.step_hooks = step_hooks
        self._batched = {
            (split, source): vmap(partial(self._call_one, split, source), in_dims=(0, None))
            for split in ("train", "test") for source in ("forward", "step")
        }
        self.vectorized = self._probe_vmap() if vectorize == "auto" else bool(vectorize)
        train_x = data.train[0]
        self._chain = None
        uses_forward = any(self._source(cv) == "forward" for cv in self.variables + self.observables)
        if self.vectorized and uses_forward and isinstance(train_x, torch.Tensor) and train_x.dim() == 2:
            self._chain = linear_chain(module)
        self._program = None  # the walker-batched program (convolutions, registered blocks), see core/batched.py
        if self.vectorized and uses_forward and self._chain is None and isinstance(train_x, torch.Tensor):
            self._program = self._probe_program()
        self._differentiable = torch.tensor([cv.differentiable for cv in self.variables])
        # the chain back-propagates by hand when every variable's gradient in the outputs is known in closed form
        self._manual = (
            self._chain is not None
            and all(cv.batched_grad is not None and self._source(cv) == "forward" for cv in self.variables)
            and all(_has_derivative(item) for kind, item in self._chain if kind == "act")
        )
        test_x = data.test[0] if data.test is not None else None
        self._joint = (
            isinstance(train_x, torch.Tensor)
            and isinstance(test_x, torch.Tensor)
            and train_x.shape[1:] == test_x.shape[1:]
            and train_x.dtype == test_x.dtype
        )

    @property
    def path(self) -> str:
        """How walkers are evaluated: ``"linear chain"`` (batched products), ``"batched"`` (a walker-batched program
        of convolutions and registered blocks, :mod:`lightning_entropy.core.batched`), ``"vmap"`` or ``"loop"`` (one
        walker after another)."""
        if not self.vectorized:
            return "loop"
        if self._chain is not None:
            return "linear chain"
        return "batched" if self._program is not None else "vmap"

    # -- forward passes -----------------------------------------------------------------------------------------

    def _source(self, cv: CollectiveVariable) -> str:
        """``"step"``: the CV reads the split's step hook output; ``"forward"``: the module's outputs."""
        return "step" if self.step_hooks or cv.hook else "forward"

    def _call_one(self, split: str, source: str, params: dict[str, torch.Tensor], x: Any) -> Any:
        if source == "step":
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

    def _inputs(self, split: str, source: str) -> Any:
        return self.data.batch(split) if source == "step" else self.data.pair(split)[0]

    def _probe_vmap(self) -> bool:
        theta = self.layout.flatten(self.module).unsqueeze(0).expand(2, -1)
        keys = dict.fromkeys((cv.split, self._source(cv)) for cv in self.variables + self.observables)
        try:
            with torch.no_grad():
                for split, source in keys or [("train", "step" if self.step_hooks else "forward")]:
                    self._batched[split, source](self.layout.unflatten(theta), self._inputs(split, source))
        except Exception as err:  # noqa: BLE001 - any tracing failure selects the fallback
            warnings.warn(
                f"torch.func.vmap cannot trace {type(self.module).__name__} ({type(err).__name__}: {err}); walkers are"
                " evaluated one after another, which is slower. Avoid in-place buffer updates, .item() and"
                " data-dependent control flow in the forward pass and the step hooks to get the vectorized path.",
                stacklevel=3,
            )
            return False
        return True

    def _probe_program(self) -> batched.BatchedProgram | None:
        """The walker-batched program of the module, if its graph compiles and its outputs on a few samples match
        the vmap path at two perturbed walkers (anything else keeps vmap)."""
        program = batched.compile_program(self.module, self.frozen)
        if program is None:
            return None
        x = self.data.train[0][:4]
        base = self.layout.flatten(self.module)
        g = torch.Generator(device="cpu").manual_seed(0)  # a private generator: the global RNG stays untouched
        noise = torch.randn(2, base.numel(), generator=g, dtype=base.dtype).to(base.device)
        theta = base + 0.1 * noise * base.abs().mean().clamp_min(1e-3)
        try:
            with torch.no_grad():
                params = self.layout.unflatten(theta)
                got = program.probe(params, x, 2)
                want = self._batched["train", "forward"](params, x)
        except Exception:  # noqa: BLE001 - a combination the program does not handle: vmap
            return None
        if not isinstance(want, torch.Tensor) or batched.relative_error(got, want) > 1e-4:
            return None
        return program

    def _outputs(self, theta: torch.Tensor, keys: tuple[tuple[str, str], ...]) -> dict[tuple[str, str], Any]:
        """Outputs per (split, source); the train and test forward passes go through one batched forward when their
        inputs can be stacked."""
        params = self.layout.unflatten(theta)
        walkers = theta.shape[0]
        out: dict[tuple[str, str], Any] = {}
        # (a walker-batched program runs each split by itself: it has no per-op overhead to share, and slicing one
        # joint output would cost a zero-filled gradient of the whole output per split in the backward pass)
        joint = self._joint and self._program is None
        if joint and ("train", "forward") in keys and ("test", "forward") in keys:
            x_train, x_test = self.data.train[0], self.data.test[0]
            n = x_train.shape[0]
            both = self._run(params, "train", "forward", torch.cat([x_train, x_test]), walkers)
            if isinstance(both, list):
                out["train", "forward"], out["test", "forward"] = [o[:n] for o in both], [o[n:] for o in both]
            else:
                out["train", "forward"], out["test", "forward"] = both[:, :n], both[:, n:]
        for split, source in keys:
            if (split, source) not in out:
                out[split, source] = self._run(params, split, source, self._inputs(split, source), walkers)
        return out

    def _run(self, params: dict[str, torch.Tensor], split: str, source: str, x: Any, walkers: int):
        if source == "forward" and self._chain is not None:
            return self._run_chain(params, x, walkers)
        if source == "forward" and self._program is not None:
            group = self._program.walkers_per_group(x, walkers)
            if group >= walkers:
                return self._program(params, x, walkers)
            return _Groups([self._program({k: v[a:a + group] for k, v in params.items()}, x, min(group, walkers - a))
                            for a in range(0, walkers, group)])
        if self.vectorized:
            return self._batched[split, source](params, x)
        return [self._call_one(split, source, {k: v[w] for k, v in params.items()}, x) for w in range(walkers)]

    def _run_chain(self, params: dict[str, torch.Tensor], x: torch.Tensor, walkers: int) -> torch.Tensor:
        """A Linear/activation chain for all walkers at once, one batched product per layer.

        Activations are kept feature-major, ``(W, features, N)``, so each layer is ``W_w @ h`` with the weight in its
        stored ``(out, in)`` layout: for narrow layers this orientation is several times faster than ``h @ W^T``.
        A frozen weight or bias is the module's own tensor, shared by all walkers.
        """
        return self._chain_forward(params, x, walkers)[0]

    def _chain_forward(self, params: dict[str, torch.Tensor], x: torch.Tensor, walkers: int
                       ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The chain's outputs ``(W, N, C)`` and each step's output (feature-major, kept for the backward pass)."""
        h = x.T.expand(walkers, *x.T.shape)
        outs = []
        in_place = not torch.is_grad_enabled()  # no autograd: an activation may overwrite the layer's output
        for i, (kind, item) in enumerate(self._chain):
            if kind == "act":
                act = _IN_PLACE.get(type(item)) if in_place and i > 0 and self._chain[i - 1][0] == "linear" else None
                h = item(h) if act is None else act(item, h)
            else:
                weight = params.get(item + ".weight")
                bias = params.get(item + ".bias", self.frozen.get(item + ".bias"))
                if i == 0 and weight is not None:  # every walker reads the same x: one GEMM over all walkers' rows
                    rows = weight.reshape(-1, weight.shape[-1])
                    h = (rows @ x.T if bias is None else
                         torch.addmm(bias.expand(walkers, -1).reshape(-1, 1), rows, x.T)).view(walkers, -1, len(x))
                else:
                    if weight is None:
                        weight = self.frozen[item + ".weight"].expand(walkers, -1, -1)
                    h = torch.bmm(weight, h) if bias is None else torch.baddbmm(bias.unsqueeze(-1), weight, h)
            outs.append(h)
        return h.transpose(1, 2), outs

    def _chain_backward(self, params: dict[str, torch.Tensor], x: torch.Tensor, outs: list[torch.Tensor],
                        delta: torch.Tensor, grads: dict[str, torch.Tensor]) -> None:
        """Back-propagate ``delta`` ``(W, N, C)`` (the gradient of the weighted CVs in the chain's outputs) through
        the chain by hand, adding each sampled parameter's gradient ``(W, *shape)`` into ``grads``: per Linear layer
        ``dW = delta h_in^T``, ``db = sum delta`` and ``delta <- W^T delta``; per activation ``delta *= act'``."""
        # feature-major, as the forward, and contiguous: a batched product that reads a transposed delta with two
        # (or few) classes takes a slow path, 16x the contiguous one at 128-256 walkers (1.2-2.5 ms a step)
        delta = delta.transpose(1, 2).contiguous()
        for i in range(len(self._chain) - 1, -1, -1):
            kind, item = self._chain[i]
            if kind == "act":
                delta = _DERIVATIVES[type(item)](item, outs[i], delta)
                continue
            name_w, name_b = item + ".weight", item + ".bias"
            weight = params.get(name_w)
            if weight is not None:  # the first layer's input is x itself: one GEMM over every walker's rows
                # (the layer's input read transposed, in place: with torch 2.13 that is 1.3-4x faster than the
                # product on a contiguous sample-major copy, copy included, at widths 2-300 and 40-1000 samples)
                g = torch.matmul(delta, x) if i == 0 else torch.bmm(delta, outs[i - 1].transpose(1, 2))
                grads[name_w] = grads[name_w] + g if name_w in grads else g
            if name_b in params:
                g = delta.sum(-1)
                grads[name_b] = grads[name_b] + g if name_b in grads else g
            if i > 0:
                if weight is None:
                    weight = self.frozen[name_w].expand(delta.shape[0], -1, -1)
                delta = torch.bmm(weight.transpose(1, 2), delta)

    @torch.no_grad()
    def _manual_value_and_grad(self, theta: torch.Tensor, bias) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`value_and_grad` of a Linear chain whose variables have closed-form output gradients: one forward
        without autograd and a hand-written backward (a small network's step is otherwise mostly autograd's
        bookkeeping). The CV values are those of the autograd path; the gradient agrees to rounding."""
        params = self.layout.unflatten(theta)
        walkers = theta.shape[0]
        splits = tuple(dict.fromkeys(cv.split for cv in self.variables))
        targets = {"train": self.data.train[1], "test": self.data.test[1] if self.data.test is not None else None}
        runs: dict[str, tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, slice]] = {}
        if len(splits) == 2 and self._joint:  # the same joint forward as _outputs, so the values are its own
            x_train, x_test = self.data.train[0], self.data.test[0]
            x = torch.cat([x_train, x_test])
            out, outs = self._chain_forward(params, x, walkers)
            n = x_train.shape[0]
            runs = {"train": (out[:, :n], outs, x, slice(0, n)), "test": (out[:, n:], outs, x, slice(n, None))}
        else:
            for split in splits:
                x = self.data.pair(split)[0]
                out, outs = self._chain_forward(params, x, walkers)
                runs[split] = (out, outs, x, slice(None))
        values, d_out = [], []
        for cv in self.variables:
            value, grad = cv.batched_grad(runs[cv.split][0], targets[cv.split])
            values.append(value)
            d_out.append(grad)
        values = torch.stack(values, dim=1)
        value, slope = bias(values)
        weights = torch.where(self._differentiable.to(values.device), slope.to(values.dtype),
                              torch.zeros((), dtype=values.dtype))
        weights = torch.nan_to_num(weights, nan=0.0, posinf=0.0, neginf=0.0)
        weights = torch.where(nonfinite.finite(values), weights, 0.0)
        grads: dict[str, torch.Tensor] = {}

        def weighted(split: str) -> torch.Tensor:  # the split's CVs' output gradients, slope-weighted
            terms = [weights[:, k].view(-1, 1, 1) * d_out[k] for k, cv in enumerate(self.variables) if cv.split == split]
            total = terms[0]
            for term in terms[1:]:
                total = total + term
            return total

        if len(splits) == 2 and self._joint:  # one backward of both splits' rows, joined along the samples in the
            out, outs, x, _ = runs["train"]  # class-major storage the backward reads (``.mT``: (W, C, N) views)
            delta = torch.cat([weighted("train").mT, weighted("test").mT], dim=2).mT
            self._chain_backward(params, x, outs, delta, grads)
        else:
            for split in splits:
                out, outs, x, _ = runs[split]
                self._chain_backward(params, x, outs, weighted(split), grads)
        grad = torch.cat([grads[n].reshape(walkers, -1) if n in grads else theta.new_zeros(walkers, size)
                          for n, size in zip(self.layout.names, self.layout.sizes)], dim=1)
        return values, value, grad

    def _apply(self, cv: CollectiveVariable, outputs, targets: torch.Tensor | None) -> torch.Tensor:
        if isinstance(outputs, list) and not isinstance(outputs, _Groups):
            return torch.stack([cv.fn(o, targets) for o in outputs])
        # a built-in CV runs on all walkers' outputs at once: vmap's per-op cost dominates small models
        fn = cv.batched if cv.batched is not None and isinstance(targets, torch.Tensor) else vmap(cv.fn, in_dims=(0, None))
        if isinstance(outputs, _Groups):
            return torch.cat([fn(o, targets) for o in outputs])
        return fn(outputs, targets)

    def _values(self, theta: torch.Tensor, cvs: Sequence[CollectiveVariable]) -> torch.Tensor:
        keys = tuple(dict.fromkeys((cv.split, self._source(cv)) for cv in cvs))
        outputs = self._outputs(theta, keys)
        targets = {"train": self.data.train[1], "test": self.data.test[1] if self.data.test is not None else None}
        values = []
        for cv in cvs:
            source = self._source(cv)
            target = targets[cv.split] if source == "forward" else None  # a step hook's outputs carry their own
            values.append(self._apply(cv, outputs[cv.split, source], target))
        return torch.stack(values, dim=1)

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
        if self._manual and self._chain is not None:
            return self._manual_value_and_grad(theta.detach(), bias)
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
