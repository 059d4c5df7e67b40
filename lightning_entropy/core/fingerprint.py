"""What a checkpoint must match to be resumed: the data, the sampled parameters, the box and the grid.

A sampler checkpoint carries a *setup record* (:func:`record`, under ``"setup"`` in the strategies' sampler state):

- ``grid``: the landscape's axis names, ranges ``[lo, hi]``, bins and bin widths (``None`` without a landscape);
- ``box``: the box rule (``Box.describe()``) and ``half_widths``, the resolved bound of every sampled tensor;
- ``fingerprint``: of the data (per split: shape and dtype of every tensor in the batch, and a BLAKE2b digest of their
  bytes, shapes and nesting) and of the model (class name; name, shape, dtype and sampled/frozen of every parameter;
  never the values, which the sampler changes).

On resume the strategies take the grid from the record instead of finding it again from the restored weights (which
are walker 0's, not the module's at the start), and :func:`check` refuses another model, other data or another box
with a ``ValueError`` that says what differs and what to do. Pure PyTorch (no Lightning import).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lightning_entropy.core.box import Box
from lightning_entropy.core.walkers import ParameterLayout

#: Bumped when the record's layout changes; a checkpoint without a record (older versions) is resumed unchecked.
VERSION = 1

NEW_RUN = "or start a new run (without ckpt_path / resume)"


class ResumeMismatch(ValueError):
    """A checkpoint that does not fit the run resuming it (another model, data, box, grid, sampler or layout); the
    message says what differs and what to do."""


# -- building the record ------------------------------------------------------------------------------------------


def _int64(value: int) -> int:
    """A 64-bit constant as the signed int64 torch stores."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >> 63 else value


_GOLDEN, _M1, _M2 = _int64(0x9E3779B97F4A7C15), _int64(0xBF58476D1CE4E5B9), _int64(0x94D049BB133111EB)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """A fixed 64-bit mixing of int64 values (splitmix64's finaliser, with torch's arithmetic shifts)."""
    z = (z ^ (z >> 30)) * _M1
    z = (z ^ (z >> 27)) * _M2
    return z ^ (z >> 31)


def _row_hashes(t: torch.Tensor, n: int) -> torch.Tensor:
    """``(n,)`` int64: a hash of every row's bytes (``t`` has ``n`` rows). Each 8-byte word is weighted by an odd
    constant of its position, so any change of one value changes its row's hash."""
    raw = t.reshape(n, -1).view(torch.uint8) if t.numel() else torch.zeros((n, 0), dtype=torch.uint8)
    pad = -raw.shape[1] % 8
    if pad:
        raw = torch.cat([raw, torch.zeros((n, pad), dtype=torch.uint8)], dim=1)
    words = raw.contiguous().view(torch.int64)  # (n, B / 8)
    weights = _mix(torch.arange(1, words.shape[1] + 1, dtype=torch.int64) * _GOLDEN) | 1
    return _mix((words * weights).sum(1) + words.shape[1])


def _tensor_leaves(obj: Any, hasher, out: list) -> None:
    """Feed ``obj``'s nesting into ``hasher`` (type tags, lengths, dict keys in sorted order; leaves that are not
    arrays by ``repr``) and collect its tensors (numpy arrays too) in that order."""
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        t = torch.as_tensor(obj).detach().cpu().contiguous()
        hasher.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        out.append(t)
    elif isinstance(obj, Mapping):
        hasher.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            hasher.update(f"K{key!r}".encode())
            _tensor_leaves(obj[key], hasher, out)
    elif isinstance(obj, (list, tuple)):
        hasher.update(f"L{len(obj)}".encode())
        for item in obj:
            _tensor_leaves(item, hasher, out)
    else:
        hasher.update(f"V{type(obj).__name__}:{obj!r}".encode())


def of_batch(batch: Any) -> dict[str, Any]:
    """``{"shapes": [[shape, dtype], ...], "digest": hex}`` of a batch (a tensor, or nested tuples/lists/dicts).

    The digest covers the nesting, every tensor's dtype and shape and every value, but not the order of the samples
    (rows along the first dimension that the batch's first tensor sets): a shuffled loader, or Lightning's distributed
    sampler, reads the same full batch in another order, and a full-batch loss does not depend on it.
    """
    hasher, tensors = hashlib.blake2b(digest_size=16), []
    _tensor_leaves(batch, hasher, tensors)
    n = next((len(t) for t in tensors if t.dim()), None)
    rows = torch.zeros(n or 0, dtype=torch.int64)
    for k, t in enumerate(tensors):
        if n is not None and t.dim() and len(t) == n:  # per sample: an order-free sum of row hashes, mixed per tensor
            rows += _mix(_row_hashes(t, n) + k * _GOLDEN)
        elif t.numel():  # anything else: its bytes in order
            hasher.update(t.reshape(-1).view(torch.uint8).numpy())
    hasher.update(torch.sort(rows).values.numpy().tobytes())
    return {"shapes": [[list(t.shape), str(t.dtype)] for t in tensors], "digest": hasher.hexdigest()}


def of_data(data) -> dict[str, Any]:
    """Fingerprints of a :class:`~lightning_entropy.core.evaluator.FullBatch`'s splits (``test``: ``None`` without a
    held-out set), each of the whole batch the module's step hooks receive."""
    return {"train": of_batch(data.batch("train")),
            "test": of_batch(data.batch("test")) if data.has_heldout else None}


def of_model(module: torch.nn.Module, layout: ParameterLayout) -> dict[str, Any]:
    """The module's class and ``[name, shape, dtype, sampled]`` of every parameter (no values)."""
    sampled = set(layout.names)
    return {"class": type(module).__name__,
            "parameters": [[name, list(p.shape), str(p.dtype), name in sampled]
                           for name, p in module.named_parameters()]}


def half_widths(layout: ParameterLayout, bound: torch.Tensor) -> list[list[Any]]:
    """``[name, b]`` per sampled tensor: the box rules give every tensor one bound."""
    return [[name, float(bound[sl.start])] for name, sl in zip(layout.names, layout.slices)]


def grid_of(landscape) -> dict[str, Any] | None:
    """Axis names, ``[lo, hi]`` ranges, bins and bin widths of a landscape (``None`` for none)."""
    if landscape is None:
        return None
    ranges = [[float(a), float(b)] for a, b in zip(landscape.lo, landscape.hi)]
    return {"names": list(landscape.names), "ranges": ranges, "bins": list(landscape.shape),
            "widths": [float(w) for w in landscape.width]}


def record(*, landscape, box: Box, layout: ParameterLayout, bound: torch.Tensor, module: torch.nn.Module,
           data) -> dict[str, Any]:
    """The setup record a checkpoint carries (see the module docstring)."""
    return {
        "version": VERSION,
        "grid": grid_of(landscape),
        "box": box.describe(),
        "half_widths": half_widths(layout, bound),
        "fingerprint": {"model": of_model(module, layout), "data": of_data(data)},
    }


# -- checking a resume --------------------------------------------------------------------------------------------


def box_text(box: Mapping[str, Any] | Box) -> str:
    """``"constant, c=3"``: a box as the messages name it."""
    spec = box.describe() if isinstance(box, Box) else box
    return f"{spec['rule']}, c={float(spec['c']):g}"


def box_argument(box: Mapping[str, Any] | Box) -> str:
    """The ``box=`` argument that gives this box: ``box=3`` or ``box='fan_out:3'``."""
    spec = box.describe() if isinstance(box, Box) else box
    if spec["rule"] == "constant":
        return f"box={float(spec['c']):g}"
    return f"box='{spec['rule']}:{float(spec['c']):g}'"


def check_model(saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Refuse a model whose class or parameters (names, shapes, dtypes, frozen or sampled) differ."""
    if saved == current:
        return

    def refuse(what: str) -> ResumeMismatch:
        return ResumeMismatch(
            f"The model differs from the checkpoint's: {what}. Resume with the module the checkpoint was sampled from"
            f" (same architecture, dtype and frozen parameters), {NEW_RUN}."
        )

    def text(p) -> str:
        return f"{p[1]} {p[2]}, {'sampled' if p[3] else 'frozen (requires_grad=False)'}"

    if saved["class"] != current["class"]:
        raise refuse(f"the checkpoint was sampled from a {saved['class']}, this run has a {current['class']}")
    theirs = {p[0]: p for p in saved["parameters"]}
    mine = {p[0]: p for p in current["parameters"]}
    for name in list(theirs) + [n for n in mine if n not in theirs]:
        if name not in mine:
            raise refuse(f"its parameter {name} ({text(theirs[name])}) is not in this run's module")
        if name not in theirs:
            raise refuse(f"this run's parameter {name} ({text(mine[name])}) is not in the checkpoint's module")
        if list(theirs[name]) != list(mine[name]):
            raise refuse(f"parameter {name} is {text(theirs[name])} in the checkpoint, {text(mine[name])} in this run")
    raise refuse("its parameters come in another order")


def check_data(saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Refuse other data: per split, other shapes/dtypes, or the same shapes with other values."""
    for split, label in (("train", "train"), ("test", "held-out")):
        theirs, mine = saved.get(split), current.get(split)
        if theirs == mine:
            continue
        if theirs is None or mine is None:
            has, lacks = ("the checkpoint", "this run") if mine is None else ("this run", "the checkpoint")
            what = f"{has} has a {label} split, {lacks} has none"
        elif theirs["shapes"] != mine["shapes"]:
            what = f"tensors [shape, dtype] {theirs['shapes']} in the checkpoint, {mine['shapes']} in this run"
        else:
            what = (f"the same shapes and dtypes ({mine['shapes']}) but other values (digest {theirs['digest'][:12]} in"
                    f" the checkpoint, {mine['digest'][:12]} in this run)")
        raise ResumeMismatch(
            f"The {label} data differ from the checkpoint's: {what}. Resume with the same data (task, split, seed,"
            f" preprocessing and held-out split) as the checkpoint, {NEW_RUN}."
        )


def check_box(saved_box: Mapping[str, Any], saved_half: Sequence, box: Box, half: Sequence) -> None:
    """Refuse another box rule or constant, or other resolved half-widths."""
    if dict(saved_box) != box.describe():
        raise ResumeMismatch(
            f"The checkpoint was sampled in the box {box_text(saved_box)} ({Box.parse(dict(saved_box))}); this run's"
            f" box is {box_text(box)} ({box}). The box is part of the entropy's definition, so a landscape cannot"
            f" continue in another one. Resume with {box_argument(saved_box)} (the checkpoint's box), {NEW_RUN}."
        )
    for (name, theirs), (_, mine) in zip(saved_half, half):
        if not math.isclose(float(theirs), float(mine), rel_tol=1e-6):
            raise ResumeMismatch(
                f"The box's half-width of {name} is {float(theirs):.6g} in the checkpoint and {float(mine):.6g} in this"
                f" run (same rule {box_text(box)}). Resume with the module the checkpoint was sampled from, {NEW_RUN}."
            )


def check(saved: Mapping[str, Any] | None, current: Mapping[str, Any], *, box: Box) -> None:
    """Compare the checkpoint's record ``saved`` with this run's ``current`` (both from :func:`record`, ``current``'s
    grid ignored): model first, then data, then box. ``saved`` ``None`` (a checkpoint from before records): no check."""
    if saved is None:
        return
    fp, mine = saved.get("fingerprint", {}), current["fingerprint"]
    if "model" in fp:
        check_model(fp["model"], mine["model"])
    if "data" in fp:
        check_data(fp["data"], mine["data"])
    if "box" in saved:
        check_box(saved["box"], saved.get("half_widths", []), box, current["half_widths"])


def grid_text(grid: Mapping[str, Any]) -> str:
    """``ln_train_loss [-3.2, 1.8) x 50 bins of 0.1; ...``."""
    return "; ".join(f"{n} [{lo:.6g}, {hi:.6g}) x {b} bins of {w:.6g}"
                     for n, (lo, hi), b, w in zip(grid["names"], grid["ranges"], grid["bins"], grid["widths"]))


def same_grid(a: Mapping[str, Any], b: Mapping[str, Any], rel: float = 1e-9) -> bool:
    """Whether two grids have the same axes, bins and (to ``rel`` of a bin) ranges."""
    if list(a["names"]) != list(b["names"]) or list(a["bins"]) != list(b["bins"]):
        return False
    for (lo_a, hi_a), (lo_b, hi_b), w in zip(a["ranges"], b["ranges"], a["widths"]):
        if abs(lo_a - lo_b) > rel * w or abs(hi_a - hi_b) > rel * w:
            return False
    return True


__all__ = ["VERSION", "ResumeMismatch", "box_argument", "box_text", "check", "check_box", "check_data", "check_model",
           "grid_of", "grid_text", "half_widths", "of_batch", "of_data", "of_model", "record", "same_grid"]
