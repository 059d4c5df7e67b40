"""Walker-batched programs: a module's forward pass evaluated for all walkers at once with plain batched kernels.

``torch.func.vmap`` evaluates any traceable module for stacked parameters, but it picks batching rules op by op: for
convolutions it moves the walker dimension next to the channels before and after every layer (copies of every
activation), and its rules for per-walker weights in attention and embeddings are slow on a CPU. This module
compiles a module's ``torch.fx`` graph into a program whose activations keep one layout chosen for the whole pass:

- images of every walker as one ``(N, W*C, H, W')`` tensor in channels-last memory, walkers outermost among the
  channels, so that a convolution with per-walker filters is one grouped convolution (walkers as groups) and the
  first convolution on the shared input one dense convolution with all walkers' filters side by side;
- everything else walker-major, ``(W, N, ...)``, so that a linear layer is one batched matrix product.

Only graphs made of the layers below are compiled (the safety check: anything else, or a layer with a setting not
handled here, gives ``None`` and the caller keeps vmap): ``nn.Conv2d`` (zero padding), ``nn.Linear``, elementwise
activations, ``nn.MaxPool2d`` / ``nn.AvgPool2d``, ``nn.Flatten``, ``nn.LayerNorm``, ``nn.Identity``, ``+`` and
``torch.relu``-style functions, ``.mean`` over the pixels, and modules registered with :func:`register` (matched by
exact class, so a subclass that changes ``forward`` is not taken for its parent). A registered class is a leaf of
the trace and evaluates itself for all walkers (e.g. the tasks' small transformer).

The program runs the samples in chunks on a CPU (a chunk's activations stay small enough for the allocator to reuse
and the caches to hold); the chunks' outputs are concatenated, so the autograd graph is the same function.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

from lightning_entropy.core.batched_layers import (  # the layers, re-exported for the public names
    CPU_CHUNK_ELEMENTS, _conv2d, CPU_GROUP_ELEMENTS, ELEMENTWISE, Params, Unsupported, _FUNCTIONS, _Images, _METHODS,
    _REGISTRY, _Rows, _Shared, _add, _elementwise, _flatten, _images, _layer_norm, _linear, _mean_pixels, _pool,
    _rows, channel_layer_norm, layer_norm, linear, register,
)

__all__ = ["BatchedProgram", "Params", "Unsupported", "channel_layer_norm", "compile_program", "layer_norm", "linear",
           "register"]


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m) in _REGISTRY or super().is_leaf_module(m, qualname)


def _is_pixel_mean(node: fx.Node) -> bool:
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    extra = {k: v for k, v in node.kwargs.items() if k != "dim"}
    if extra or len(node.args) > 2:
        return False
    return isinstance(dims, (tuple, list)) and sorted(d % 4 if d < 0 else d for d in dims) == [2, 3]


def _step(node: fx.Node, module: nn.Module) -> Callable[..., Any]:
    """The function evaluating ``node`` given its argument values, ``(params, walkers)``; raises Unsupported."""
    if node.op == "call_module":
        sub = module.get_submodule(node.target)
        kind = type(sub)
        if node.kwargs or len(node.args) != 1:
            raise Unsupported(f"{node.target}: called with {len(node.args)} arguments")
        name = node.target
        if kind in _REGISTRY:
            fn, images = _REGISTRY[kind]
            if images:
                def registered_images(args, p, walkers):
                    img = _images(args[0], walkers)
                    return _Images(fn(sub, p.sub(name), img.t, walkers), img.channels)

                return registered_images

            def registered(args, p, walkers):
                x = args[0]
                x = x.t if isinstance(x, _Shared) else _rows(x, walkers)
                return _Rows(fn(sub, p.sub(name), x, walkers))

            return registered
        if kind is nn.Conv2d:
            return lambda args, p, walkers: _conv2d(sub, p.sub(name), args[0], walkers)
        if kind is nn.Linear:
            return lambda args, p, walkers: _linear(sub, p.sub(name), args[0], walkers)
        if kind is nn.LayerNorm:
            return lambda args, p, walkers: _layer_norm(sub, p.sub(name), args[0], walkers)
        if kind in (nn.MaxPool2d, nn.AvgPool2d):
            return lambda args, p, walkers: _pool(sub, args[0], walkers)
        if kind is nn.Flatten:
            return lambda args, p, walkers: _flatten(sub.start_dim, sub.end_dim, args[0], walkers)
        if kind in ELEMENTWISE:
            return lambda args, p, walkers: _elementwise(sub, args[0])
        raise Unsupported(f"{node.target}: {kind.__name__}")
    if node.op == "call_function":
        if node.target in (operator.add, torch.add) and len(node.args) == 2 and not node.kwargs:
            return lambda args, p, walkers: _add(args[0], args[1], walkers)
        if node.target in _FUNCTIONS and len(node.args) == 1 and not node.kwargs:
            fn = node.target
            return lambda args, p, walkers: _elementwise(fn, args[0])
        if node.target is torch.flatten and not node.kwargs and len(node.args) in (2, 3):
            start, end = (list(node.args[1:]) + [-1])[:2]
            return lambda args, p, walkers: _flatten(start, end, args[0], walkers)
        raise Unsupported(f"function {getattr(node.target, '__name__', node.target)}")
    if node.op == "call_method":
        if node.target in _METHODS and len(node.args) == 1 and not node.kwargs:
            method = node.target
            return lambda args, p, walkers: _elementwise(lambda t: getattr(t, method)(), args[0])
        if node.target == "mean" and _is_pixel_mean(node):
            return lambda args, p, walkers: _mean_pixels(args[0], walkers)
        if node.target == "flatten" and not node.kwargs and len(node.args) in (2, 3):
            start, end = (list(node.args[1:]) + [-1])[:2]
            return lambda args, p, walkers: _flatten(start, end, args[0], walkers)
        raise Unsupported(f"method .{node.target}")
    raise Unsupported(f"node {node.op} {node.target}")


class BatchedProgram:
    """A module's forward for all walkers: ``program(params, x, walkers) -> (W, N, ...)`` outputs."""

    def __init__(self, module: nn.Module, graph: fx.Graph, frozen: dict[str, torch.Tensor]) -> None:
        nodes = list(graph.nodes)
        self.frozen = frozen
        self.steps: list[tuple[fx.Node, Callable[..., Any], tuple[Any, ...]]] = []
        for node in nodes[1:-1]:
            self.steps.append((node, _step(node, module), node.args))
        self.input, self.output = nodes[0], nodes[-1]
        self.chunk: int | None = None  # samples per chunk; None: chosen from the activation sizes (CPU)
        self.per_sample: int | None = None  # largest activation, in elements per walker and sample
        self.out_per_sample: int | None = None  # output elements per walker and sample
        self.group: int | None = None  # walkers per group; None: chosen from the output size (CPU)
        self.convolutional = any(isinstance(m, nn.Conv2d) for m in module.modules())

    def _evaluate(self, params: Params, x: torch.Tensor, walkers: int, track: bool = False) -> torch.Tensor:
        env: dict[fx.Node, Any] = {self.input: _Shared(x)}
        largest = 0

        def arg(a):
            if isinstance(a, fx.Node):
                return env[a]
            if isinstance(a, (int, float)):
                return a
            raise Unsupported(f"argument {a!r}")

        for node, fn, args in self.steps:
            value = fn(tuple(arg(a) for a in args), params, walkers)
            env[node] = value
            if track:
                largest = max(largest, value.t.numel())
        out = self.output.args[0]
        if not isinstance(out, fx.Node):
            raise Unsupported("the output is not one tensor")
        result = _rows(env[out], walkers)
        if track:
            self.per_sample = max(1, largest // max(1, walkers * x.shape[0]))
            self.out_per_sample = max(1, result[0].numel() // max(1, x.shape[0]))
        return result

    def samples_per_chunk(self, x: torch.Tensor, walkers: int) -> int:
        n = x.shape[0]
        if self.chunk is not None:
            return max(1, self.chunk)
        if x.device.type != "cpu" or not self.convolutional or self.per_sample is None:
            return n
        return max(1, min(n, CPU_CHUNK_ELEMENTS // (walkers * self.per_sample)))

    def walkers_per_group(self, x: torch.Tensor, walkers: int) -> int:
        """Walkers evaluated together (the evaluator runs larger counts group after group): all on a GPU; on a CPU as
        many as keep one output of the group within :data:`CPU_GROUP_ELEMENTS`."""
        if self.group is not None:
            return max(1, self.group)
        if x.device.type != "cpu" or self.out_per_sample is None:
            return walkers
        return max(1, min(walkers, CPU_GROUP_ELEMENTS // max(1, x.shape[0] * self.out_per_sample)))

    def __call__(self, sampled: dict[str, torch.Tensor], x: torch.Tensor, walkers: int) -> torch.Tensor:
        params = Params(sampled, self.frozen, walkers)
        chunk = self.samples_per_chunk(x, walkers)
        if chunk >= x.shape[0]:
            return self._evaluate(params, x, walkers)
        parts = [self._evaluate(params, x[i:i + chunk], walkers) for i in range(0, x.shape[0], chunk)]
        return torch.cat(parts, dim=1)

    def probe(self, sampled: dict[str, torch.Tensor], x: torch.Tensor, walkers: int) -> torch.Tensor:
        """One evaluation that also records the activation sizes (for the chunk size)."""
        return self._evaluate(Params(sampled, self.frozen, walkers), x, walkers, track=True)


def compile_program(module: nn.Module, frozen: dict[str, torch.Tensor]) -> BatchedProgram | None:
    """The batched program of ``module``'s forward, or ``None`` when its graph has anything not handled here
    (fx cannot trace it, more than one input, a layer or function outside the list in the module docstring)."""
    try:
        graph = _Tracer().trace(module)
    except Exception:  # noqa: BLE001 - anything fx cannot trace uses the general path
        return None
    nodes = list(graph.nodes)
    if len(nodes) < 3 or nodes[0].op != "placeholder" or nodes[-1].op != "output":
        return None
    if any(n.op == "placeholder" for n in nodes[1:]) or any(n.op == "get_attr" for n in nodes):
        return None
    try:
        return BatchedProgram(module, graph, frozen)
    except Unsupported:
        return None


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max(|b|, 1)`` (for the probe that checks a program against the vmap path)."""
    if a.shape != b.shape:
        return math.inf
    return float(((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item()) if a.numel() else 0.0
