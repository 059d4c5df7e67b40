"""The layers of the walker-batched programs (:mod:`lightning_entropy.core.batched`): each takes a value in the
program's layouts (images of all walkers channels-last with walkers outermost among the channels; everything else
walker-major) and the walkers' parameters, and returns the next value; the class registry for modules that
evaluate themselves for all walkers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Elementwise activations applied as they are, in any layout.
ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.Softplus, nn.Identity)
_FUNCTIONS = {torch.relu, F.relu, torch.tanh, torch.sigmoid, F.gelu, F.silu, torch.nn.functional.leaky_relu}
_METHODS = {"relu", "tanh", "sigmoid"}

#: On a CPU, samples per chunk are chosen so that one activation of all walkers holds about this many elements.
CPU_CHUNK_ELEMENTS = 2_000_000

#: On a CPU, walkers are evaluated in groups whose output holds at most about this many elements (a group's
#: loss and its gradients then stay in the caches).
CPU_GROUP_ELEMENTS = 4_000_000

_REGISTRY: dict[type, tuple[Callable[..., torch.Tensor], bool]] = {}


class Unsupported(Exception):
    """The graph has a node the batched program does not handle (the caller falls back to vmap)."""


def register(cls: type, *, images: bool = False):
    """Declare ``fn(module, params, x, walkers) -> (W, N, ...)`` as the walker-batched forward of ``cls``.

    ``params`` is a :class:`Params` for the module's own parameters (names relative to the module); ``x`` is the
    module's input shared by all walkers (no walker dimension, e.g. token ids) or a walker-major ``(W, N, ...)``
    tensor. With ``images=True`` the module maps per-walker images to images of as many channels, and ``fn`` gets
    and returns the images of all walkers as one ``(N, W*C, H, W')`` channels-last tensor (walkers outermost).
    The class becomes a leaf of the trace; only instances of exactly ``cls`` use ``fn``.
    """

    def decorate(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        _REGISTRY[cls] = (fn, images)
        return fn

    return decorate


class Params:
    """Per-walker parameters ``(W, *shape)`` by name under ``prefix``: a sampled one from the walkers' tensors, a
    frozen one (``requires_grad=False``) the module's own value expanded over the walkers."""

    def __init__(self, sampled: dict[str, torch.Tensor], frozen: dict[str, torch.Tensor], walkers: int,
                 prefix: str = "") -> None:
        self.sampled, self.frozen, self.walkers, self.prefix = sampled, frozen, walkers, prefix

    def __call__(self, name: str) -> torch.Tensor | None:
        key = self.prefix + name
        value = self.sampled.get(key)
        if value is not None:
            return value
        value = self.frozen.get(key)
        return None if value is None else value.expand(self.walkers, *value.shape)

    def sub(self, name: str) -> Params:
        return Params(self.sampled, self.frozen, self.walkers, f"{self.prefix}{name}.")


# -- building blocks (walker-major tensors) ----------------------------------------------------------------------------


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight_w^T + bias_w`` per walker: ``x`` walker-major ``(W, N, ..., in)``, ``weight`` ``(W, out, in)``, ``bias`` ``(W, out)``; returns ``(W, N, ..., out)``."""
    walkers = weight.shape[0]
    lead = x.shape[1:-1]
    flat = x.reshape(walkers, -1, x.shape[-1])
    wt = weight.transpose(1, 2)
    out = torch.bmm(flat, wt) if bias is None else torch.baddbmm(bias.unsqueeze(1), flat, wt)
    return out.reshape(walkers, *lead, weight.shape[1])


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, shape: tuple[int, ...],
               eps: float) -> torch.Tensor:
    """LayerNorm over the trailing ``shape`` of a walker-major ``(W, ...)`` tensor with per-walker affine."""
    out = F.layer_norm(x, shape, eps=eps)
    view = (x.shape[0],) + (1,) * (x.dim() - 1 - len(shape)) + tuple(shape)
    if weight is not None:
        out = out * weight.reshape(view)
    if bias is not None:
        out = out + bias.reshape(view)
    return out


def channel_layer_norm(t: torch.Tensor, walkers: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                       eps: float) -> torch.Tensor:
    """LayerNorm over the channels at every pixel of walker-batched images ``(N, W*C, H, W')`` (channels-last:
    the per-walker channels are the innermost, contiguous axis), with a per-walker scale and shift ``(W, C)``."""
    n, wc, h, w = t.shape
    c = wc // walkers
    v = F.layer_norm(t.permute(0, 2, 3, 1).reshape(n, h, w, walkers, c), (c,), eps=eps)
    if weight is not None:
        v = v * weight
    if bias is not None:
        v = v + bias
    return v.reshape(n, h, w, wc).permute(0, 3, 1, 2)


# -- values of the program ------------------------------------------------------------------------------------------


class _Shared:
    """A value without a walker dimension (the input, and what is computed from it alone)."""

    __slots__ = ("t",)

    def __init__(self, t: torch.Tensor) -> None:
        self.t = t


class _Images:
    """Per-walker images ``(n, c, h, w)`` of all walkers as one ``(N, W*c, h, w)`` channels-last tensor."""

    __slots__ = ("t", "channels")

    def __init__(self, t: torch.Tensor, channels: int) -> None:
        self.t, self.channels = t, channels


class _Rows:
    """A walker-major tensor ``(W, N, ...)``."""

    __slots__ = ("t",)

    def __init__(self, t: torch.Tensor) -> None:
        self.t = t


def _rows(value: Any, walkers: int) -> torch.Tensor:
    """Any value as walker-major ``(W, N, ...)``."""
    if isinstance(value, _Rows):
        return value.t
    if isinstance(value, _Shared):
        return value.t.expand(walkers, *value.t.shape)
    if isinstance(value, _Images):
        n, _, h, w = value.t.shape
        return value.t.reshape(n, walkers, value.channels, h, w).transpose(0, 1)
    raise Unsupported(f"value of type {type(value).__name__}")


def _images(value: Any, walkers: int) -> _Images:
    if isinstance(value, _Images):
        return value
    if isinstance(value, _Shared) and value.t.dim() == 4:
        t = value.t.repeat(1, walkers, 1, 1).contiguous(memory_format=torch.channels_last)
        return _Images(t, value.t.shape[1])
    if isinstance(value, _Rows) and value.t.dim() == 5:
        w, n, c, h, ww = value.t.shape
        t = value.t.permute(1, 0, 2, 3, 4).reshape(n, w * c, h, ww).contiguous(memory_format=torch.channels_last)
        return _Images(t, c)
    raise Unsupported("images expected")


# -- the layers -----------------------------------------------------------------------------------------------------


class _GroupedConv2d(torch.autograd.Function):
    """A stride-1 grouped convolution whose input gradient is itself a grouped convolution (with the filters flipped
    and their in/out channels swapped per group) and whose weight gradient is asked for alone: with walkers as
    groups and two or three channels per group this is about 1.5x faster on a CPU than the joint backward kernel."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding, groups):  # noqa: D102
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.groups, ctx.has_bias = padding, groups, bias is not None
        return F.conv2d(x, weight, bias, 1, padding, 1, groups)

    @staticmethod
    def backward(ctx, dy):  # noqa: D102
        x, weight = ctx.saved_tensors
        dy = dy.contiguous(memory_format=torch.channels_last)
        groups, (ph, pw) = ctx.groups, ctx.padding
        out_total, per_group, kh, kw = weight.shape
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            flipped = (weight.reshape(groups, out_total // groups, per_group, kh, kw).transpose(1, 2)
                       .reshape(groups * per_group, out_total // groups, kh, kw).flip(-2, -1))
            dx = F.conv2d(dy, flipped, None, 1, (kh - 1 - ph, kw - 1 - pw), 1, groups)
        if ctx.needs_input_grad[1]:
            dw = torch.ops.aten.convolution_backward(dy, x, weight, None, [1, 1], [ph, pw], [1, 1], False, [0, 0],
                                                     groups, [False, True, False])[1]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy.sum((0, 2, 3))
        return dx, dw, db, None, None


def _conv2d(mod: nn.Conv2d, p: Params, value: Any, walkers: int) -> _Images:
    if mod.padding_mode != "zeros":
        raise Unsupported(f"Conv2d padding_mode={mod.padding_mode!r}")
    weight, bias = p("weight"), p("bias")
    out_ch = weight.shape[1]
    w = weight.reshape(walkers * out_ch, *weight.shape[2:])
    b = None if bias is None else bias.reshape(-1)
    if isinstance(value, _Shared) and value.t.dim() == 4 and mod.groups == 1 and isinstance(mod.padding, tuple):
        # the shared input: an im2col GEMM with every walker's filters side by side, ``(n h w, c k k) @ (c k k, W o)``,
        # whose result is already the channels-last layout of ``(n, W o, h, w)``
        x = value.t
        n, _, height, width = x.shape
        kh, kw = mod.kernel_size
        ho = (height + 2 * mod.padding[0] - mod.dilation[0] * (kh - 1) - 1) // mod.stride[0] + 1
        wo = (width + 2 * mod.padding[1] - mod.dilation[1] * (kw - 1) - 1) // mod.stride[1] + 1
        cols = F.unfold(x, mod.kernel_size, mod.dilation, mod.padding, mod.stride).transpose(1, 2)
        cols = cols.reshape(n * ho * wo, -1)
        flat = w.reshape(w.shape[0], -1)
        y = torch.mm(cols, flat.t()) if b is None else torch.addmm(b, cols, flat.t())
        return _Images(y.reshape(n, ho, wo, -1).permute(0, 3, 1, 2), out_ch)
    else:
        img = _images(value, walkers)
        groups = walkers * mod.groups
        kh, kw = mod.kernel_size
        stride = mod.stride
        if (kh, kw) == (1, 1) and mod.padding == (0, 0) and mod.dilation == (1, 1) and stride != (1, 1):
            # a strided 1x1 convolution (a ResNet's shortcut) is a 1x1 convolution of the subsampled image, and
            # takes the stride-1 path below: the channels-last backward of the strided one crashes oneDNN on some
            # CPUs (torch 2.13, an AMD EPYC with one thread: a bus error)
            t = img.t[:, :, ::stride[0], ::stride[1]].contiguous(memory_format=torch.channels_last)
            img, stride = _Images(t, img.channels), (1, 1)
        plain = (stride == (1, 1) and mod.dilation == (1, 1) and isinstance(mod.padding, tuple)
                 and mod.padding[0] < kh and mod.padding[1] < kw)
        if plain and img.t.requires_grad:
            y = _GroupedConv2d.apply(img.t, w, b, tuple(mod.padding), groups)
        else:
            y = F.conv2d(img.t, w, b, stride, mod.padding, mod.dilation, groups)
    return _Images(y.contiguous(memory_format=torch.channels_last), out_ch)


def _pool(mod: nn.Module, value: Any, walkers: int) -> Any:
    if isinstance(value, _Shared):
        return _Shared(mod(value.t))
    img = _images(value, walkers)
    return _Images(mod(img.t), img.channels)


def _flatten(start: int, end: int, value: Any, walkers: int) -> Any:
    if isinstance(value, _Shared):
        return _Shared(torch.flatten(value.t, start, end))
    t = _rows(value, walkers)  # (W, N, ...): per-walker dims shift by one
    dims = t.dim() - 1
    start, end = start % dims, end % dims
    if start == 0:
        raise Unsupported("flatten over the sample dimension")
    return _Rows(torch.flatten(t, start + 1, end + 1))


def _linear(mod: nn.Linear, p: Params, value: Any, walkers: int) -> _Rows:
    x = value.t if isinstance(value, _Shared) else _rows(value, walkers)
    if isinstance(value, _Shared):
        x = x.expand(walkers, *x.shape)
    return _Rows(linear(x, p("weight"), p("bias")))


def _layer_norm(mod: nn.LayerNorm, p: Params, value: Any, walkers: int) -> _Rows:
    return _Rows(layer_norm(_rows(value, walkers), p("weight"), p("bias"), tuple(mod.normalized_shape), mod.eps))


def _elementwise(fn: Callable[[torch.Tensor], torch.Tensor], value: Any) -> Any:
    if isinstance(value, _Images):
        return _Images(fn(value.t), value.channels)
    return type(value)(fn(value.t))


def _add(a: Any, b: Any, walkers: int) -> Any:
    if isinstance(a, (int, float)) or isinstance(b, (int, float)):
        v, s = (b, a) if isinstance(a, (int, float)) else (a, b)
        return _elementwise(lambda t: t + s, v)
    if isinstance(a, _Shared) and isinstance(b, _Shared):
        return _Shared(a.t + b.t)
    if isinstance(a, _Images) or isinstance(b, _Images):
        x, y = _images(a, walkers), _images(b, walkers)
        if x.channels != y.channels or x.t.shape != y.t.shape:
            raise Unsupported("add of images with different shapes")
        return _Images(x.t + y.t, x.channels)
    return _Rows(_rows(a, walkers) + _rows(b, walkers))


def _mean_pixels(value: Any, walkers: int) -> Any:
    """``x.mean(dim=(-2, -1))`` of per-walker images: ``(W, N, C)``."""
    if isinstance(value, _Shared):
        return _Shared(value.t.mean(dim=(-2, -1)))
    img = _images(value, walkers)
    n = img.t.shape[0]
    return _Rows(img.t.mean(dim=(-2, -1)).reshape(n, walkers, img.channels).transpose(0, 1))


# -- compiling the graph --------------------------------------------------------------------------------------------
