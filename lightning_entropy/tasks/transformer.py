"""A small decoder-only transformer, written from ``nn.Linear``, ``nn.Embedding`` and ``nn.LayerNorm`` with causal
self-attention by hand, so that ``torch.func.vmap`` over stacked parameters traces it (the sampler's vectorized path):
no fused attention kernels, no in-place updates, no data-dependent control flow.

Shared by the character-level language model (:mod:`lightning_entropy.tasks.char_lm`, logits at every position) and
modular arithmetic (:mod:`lightning_entropy.tasks.modular_arithmetic`, logits at the last position only).

Architecture (pre-norm, GPT-style): token embedding + learned position embedding; ``depth`` blocks of
``x + attn(LN(x))`` and ``x + mlp(LN(x))`` with ``mlp = Linear(d, 4d) -> GELU -> Linear(4d, d)``; a final LayerNorm
and a linear head. Parameters (``V`` tokens, ``T`` positions, width ``d``, ``K`` outputs, ``L`` blocks):
``V d + T d + L (12 d^2 + 13 d) + 2 d + (d + 1) K``.

Box rule of the transformer tasks (``task.box`` in their yaml): ``fan_out`` with ``c = 4``, i.e. ``4 / sqrt(rows)`` per
weight matrix (``rows`` = its output features; for an embedding table its number of entries) and ``4 / sqrt(n)`` for
biases and LayerNorm vectors of length ``n``. With the ``c = 2`` of the CNN and the ResNet, the LayerNorm gains are
bounded by 0.5 at width 16 (below their initial value 1) and, with the head, cap the logits: projected Adam on
modular addition (p = 23) stalls near ln L_train = 0 after 2,000 steps, against -1.5 for ``c = 3`` and -5.8 for
``c = 4`` (the unconstrained Adam baseline ends near -5.3).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lightning_entropy.core import batched


def transformer_parameters(vocab: int, outputs: int, context: int, width: int, depth: int) -> int:
    """The parameter count of :class:`TinyTransformer` (see the module docstring)."""
    blocks = depth * (12 * width * width + 13 * width)
    return vocab * width + context * width + blocks + 2 * width + (width + 1) * outputs


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position ``t`` attends to positions ``<= t``.

    Input and output ``(N, T, width)``. Written with matrix products and a boolean mask (a non-persistent buffer) so
    that it runs under ``vmap`` with batched weights.
    """

    def __init__(self, width: int, heads: int, context: int) -> None:
        super().__init__()
        if heads < 1 or width % heads:
            raise ValueError(f"model.heads={heads}: must be >= 1 and divide model.width={width}.")
        self.heads = heads
        self.scale = 1.0 / math.sqrt(width // heads)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.register_buffer("causal", torch.ones(context, context, dtype=torch.bool).tril(), persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n, t, d = h.shape
        q, k, v = (z.reshape(n, t, self.heads, d // self.heads).transpose(1, 2) for z in self.qkv(h).split(d, dim=-1))
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (N, heads, T, T)
        scores = scores.masked_fill(~self.causal[:t, :t], float("-inf"))
        mixed = scores.softmax(-1) @ v  # (N, heads, T, d / heads)
        return self.proj(mixed.transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + mlp(LN(x))``."""

    def __init__(self, width: int, heads: int, context: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, context)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm1(h))
        return h + self.mlp(self.norm2(h))


class TinyTransformer(nn.Module):
    """Tokens ``(N, T)`` (long, ``T <= context``) -> logits ``(N, T, outputs)``, or ``(N, outputs)`` at the last
    position when ``last_only``.

    Args:
        vocab: number of input tokens.
        outputs: number of output classes.
        context: the longest sequence (size of the position table and the causal mask).
        width: model width ``d`` (embedding size); ``heads`` must divide it.
        depth: number of transformer blocks.
        heads: attention heads per block.
        last_only: return the logits of the last position only (sequence classification).
    """

    def __init__(self, vocab: int, outputs: int, context: int, width: int = 16, depth: int = 1, heads: int = 2,
                 *, last_only: bool = False) -> None:
        super().__init__()
        for name, value in (("vocab", vocab), ("outputs", outputs), ("context", context), ("model.width", width),
                            ("model.depth", depth)):
            if value < 1:
                raise ValueError(f"{name}={value}: must be >= 1.")
        self.context = context
        self.last_only = last_only
        self.token = nn.Embedding(vocab, width)
        self.position = nn.Embedding(context, width)
        self.blocks = nn.Sequential(*(Block(width, heads, context) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, outputs)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[-1]
        if t > self.context:
            raise ValueError(f"sequence length {t} exceeds the model's context {self.context}.")
        h = self.token(tokens) + self.position.weight[:t]
        h = self.norm(self.blocks(h))
        if self.last_only:
            h = h[:, -1]
        return self.head(h)


# -- all walkers at once (the evaluator's walker-batched path, lightning_entropy.core.batched) ----------------------


def _batched_attention(attn: CausalSelfAttention, p: batched.Params, x: torch.Tensor) -> torch.Tensor:
    """:class:`CausalSelfAttention` for walker-major ``x`` ``(W, N, T, d)``: the projections as batched products over
    walkers, the scores as one batched product over (walker, sample, head)."""
    w, n, t, d = x.shape
    heads = attn.heads
    qkv = batched.linear(x, p("qkv.weight"), p("qkv.bias"))  # (W, N, T, 3d)
    q, k, v = (z.reshape(w * n, t, heads, d // heads).transpose(1, 2) for z in qkv.split(d, dim=-1))
    scores = (q @ k.transpose(-2, -1)) * attn.scale  # (W N, heads, T, T)
    scores = scores.masked_fill(~attn.causal[:t, :t], float("-inf"))
    mixed = scores.softmax(-1) @ v  # (W N, heads, T, d / heads)
    return batched.linear(mixed.transpose(1, 2).reshape(w, n, t, d), p("proj.weight"), p("proj.bias"))


def _batched_layer_norm(norm: nn.LayerNorm, p: batched.Params, name: str, x: torch.Tensor) -> torch.Tensor:
    return batched.layer_norm(x, p(f"{name}.weight"), p(f"{name}.bias"), tuple(norm.normalized_shape), norm.eps)


def _check_structure(module: TinyTransformer) -> None:
    """The batched forward re-implements these exact classes; anything else (a swapped block) keeps vmap."""
    ok = type(module.token) is nn.Embedding and type(module.position) is nn.Embedding
    ok = ok and type(module.norm) is nn.LayerNorm and type(module.head) is nn.Linear
    ok = ok and module.token.max_norm is None and type(module.blocks) is nn.Sequential
    for block in module.blocks:
        ok = ok and type(block) is Block and type(block.attn) is CausalSelfAttention
        ok = ok and type(block.norm1) is nn.LayerNorm and type(block.norm2) is nn.LayerNorm
        mlp = block.mlp
        ok = ok and type(mlp) is nn.Sequential and len(mlp) == 3 and type(mlp[0]) is nn.Linear
        ok = ok and type(mlp[1]) in batched.ELEMENTWISE and type(mlp[2]) is nn.Linear
        ok = ok and type(block.attn.qkv) is nn.Linear and type(block.attn.proj) is nn.Linear
    if not ok:
        raise batched.Unsupported("a TinyTransformer with other layers than its own")


@batched.register(TinyTransformer)
def _tiny_transformer_batched(module: TinyTransformer, p: batched.Params, tokens: torch.Tensor,
                              walkers: int) -> torch.Tensor:
    """:meth:`TinyTransformer.forward` for all walkers: tokens ``(N, T)`` shared -> logits ``(W, N, T, K)`` (or
    ``(W, N, K)`` when ``last_only``)."""
    _check_structure(module)
    if tokens.dim() != 2 or tokens.dtype not in (torch.long, torch.int):
        raise batched.Unsupported("tokens of shape (N, T) shared by all walkers expected")
    t = tokens.shape[-1]
    if t > module.context:
        raise ValueError(f"sequence length {t} exceeds the model's context {module.context}.")
    table = p("token.weight")  # (W, V, d)
    vocab, width = table.shape[1:]
    offsets = torch.arange(walkers, device=tokens.device).mul_(vocab).view(walkers, 1, 1)
    h = F.embedding(tokens.unsqueeze(0) + offsets, table.reshape(walkers * vocab, width))  # (W, N, T, d)
    h = h + p("position.weight")[:, :t].unsqueeze(1)
    for i, block in enumerate(module.blocks):
        bp = p.sub(f"blocks.{i}")
        h = h + _batched_attention(block.attn, bp.sub("attn"), _batched_layer_norm(block.norm1, bp, "norm1", h))
        z = _batched_layer_norm(block.norm2, bp, "norm2", h)
        z = batched.linear(block.mlp[1](batched.linear(z, bp("mlp.0.weight"), bp("mlp.0.bias"))),
                           bp("mlp.2.weight"), bp("mlp.2.bias"))
        h = h + z
    h = _batched_layer_norm(module.norm, p, "norm", h)
    if module.last_only:
        h = h[:, :, -1]
    return batched.linear(h, p("head.weight"), p("head.bias"))
