"""Checks of the Wang-Landau strategies' arguments, each ending in a ``ValueError`` that names the value and the fix.

Called before any work: :func:`check_arguments` and :func:`check_settings` from the constructor (ranges, window,
variables, groups; the start phase's steps and learning rate, the accuracy's slope and axis, the deposit kernel, the
soft wall, the bin widths), and
:func:`check_grid` (that of :mod:`lightning_entropy.core.setup`), :func:`check_walker_memory` and
:func:`check_module_dtype` from setup once the grid and the parameter count are known (before the landscape and the
walkers are allocated).
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any, Sequence

import torch

from lightning_entropy.core.setup import MAX_TOTAL_BINS, check_grid
from lightning_entropy.core.start import MODES

#: Bytes per walker per parameter and dtype byte, beyond the parameters themselves: velocities, gradients, proposals
#: and the vmap'ed forward/backward temporaries (a conservative factor for the memory estimate).
MEMORY_FACTOR = 8

__all__ = ["MAX_TOTAL_BINS", "check_arguments", "check_fill", "check_grid", "check_module_dtype", "check_settings",
           "check_start", "check_threads", "check_variable_axes", "check_walker_memory", "ranges_ends"]


def _ends(value: Any, name: str, *, open_ends: bool) -> list[tuple[float | None, float | None]]:
    """One ``(lo, hi)`` per axis of ``value`` (``ranges`` or ``window``, named ``name``): finite numbers, ``lo < hi``
    where both are given (a reversed pair used to become a 2-bin grid). A whole axis may be ``None`` (``ranges``:
    found automatically; ``window``: no soft wall there); it is then ``(None, None)`` in the result. With
    ``open_ends`` one end may be ``None`` too."""
    hint = ("give one (lo, hi) pair per axis, each end a number or null (found from the starting walkers), e.g."
            " [[-3.0, null]]" if open_ends else "give one (lo, hi) pair of numbers per axis, or null for an axis"
            " without a soft wall")
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name}={value!r}: {hint}.")
    ends = []
    for i, pair in enumerate(value):
        if pair is None:
            ends.append((None, None))
            continue
        if isinstance(pair, (str, bytes)) or not hasattr(pair, "__len__") or len(pair) != 2:
            raise ValueError(f"{name}={value!r}: axis {i} is {pair!r}; {hint}.")
        axis = []
        for end in pair:
            if end is None and open_ends:
                axis.append(None)
            elif _number(end):
                axis.append(float(end))
            else:
                raise ValueError(f"{name}={value!r}: axis {i} is {tuple(pair)!r}; both bounds must be finite numbers"
                                 + (", or null to find one from the starting walkers." if open_ends else "."))
        lo, hi = axis
        if lo is not None and hi is not None and not lo < hi:
            raise ValueError(
                f"{name}={value!r}: axis {i} has lo={lo} >= hi={hi}; give (lo, hi) with lo < hi (swap them?)."
            )
        ends.append((lo, hi))
    return ends


def ranges_ends(ranges: Sequence[Any] | None) -> list[tuple[float | None, float | None]] | None:
    """Grid ranges (CV units), one ``(lo, hi)`` per axis, where ``None`` (an end or a whole axis) is found
    automatically; given ends checked by :func:`_ends`. Returns float pairs with ``None`` for the automatic ends."""
    return None if ranges is None else _ends(ranges, "ranges", open_ends=True)


def check_ranges(ranges: Sequence[Any] | None) -> None:
    """Grid ranges: see :func:`ranges_ends`."""
    ranges_ends(ranges)


def check_window(window: Sequence[Sequence[float]] | None) -> None:
    """Soft-wall window (CV units): finite, ``lo < hi`` on every axis given (``None``: no wall on that axis)."""
    if window is not None:
        _ends(window, "window", open_ends=False)


def check_variables(variables: Sequence[Any] | None) -> None:
    """No collective variable twice (a duplicate axis makes a degenerate diagonal landscape)."""
    if variables is None:
        return
    keys = [v if isinstance(v, str) else id(v) for v in variables]
    if len(set(keys)) != len(keys):
        raise ValueError(f"variables={tuple(variables)!r} names the same variable twice; give two different variables.")


def check_groups(groups: int | None, walkers: int) -> None:
    """``groups`` (for error bars) cannot exceed the number of walkers."""
    if groups is not None and groups > walkers:
        raise ValueError(
            f"groups={groups} > walkers={walkers}: every group needs at least one walker. Use groups <= {walkers}"
            " (or more walkers)."
        )


def check_variable_axes(variables: Any) -> Any:
    """One or two collective variables, ``train_loss`` first; a single name or callable becomes a 1-tuple."""
    if isinstance(variables, str) or callable(variables):
        variables = (variables,)
    if variables is not None and not 1 <= len(variables) <= 2:
        raise ValueError(f"variables={variables!r}: give one or two collective variables (x is ln L_train).")
    if variables is not None and variables[0] != "train_loss":
        raise ValueError(
            f"variables={tuple(variables)!r}: the first axis is always 'train_loss' (ln L_train, as in the paper);"
            " put the test metric second, e.g. ('train_loss', 'test_accuracy')."
        )
    return variables


def check_start(start: Any, start_budget: Any, range_margin: Any) -> None:
    """The start mode, the start phase's share of the time cap, and the automatic ranges' margin."""
    if start not in MODES:
        raise ValueError(f"start={start!r} is not a start mode; use one of {MODES}.")
    if not (isinstance(start_budget, (int, float)) and 0 < start_budget <= 1):
        raise ValueError(f"start_budget={start_budget!r}: a fraction of the time cap in (0, 1], e.g. 0.25.")
    if range_margin is not None and not (math.isfinite(range_margin) and range_margin > 0):
        raise ValueError(f"range_margin={range_margin!r} must be a positive number of CV units (or None).")


def check_fill(fill: Any, schedule: Any, default: str) -> str:
    """The fill: as given, else ``"step"`` when a schedule is given (the reference study's per-step semantics), else
    the sampler kind's ``default``."""
    if fill is None:
        fill = "step" if schedule is not None else default
    if fill not in ("visit", "step"):
        raise ValueError(f"fill={fill!r}: use 'visit' (replica-exchange WL, per-visit factor) or 'step' (the"
                         " reference study's factor per sampler step shared by the walkers).")
    return fill


def check_threads(threads: Any) -> None:
    """A positive number of intra-op threads, or ``"auto"``."""
    if threads != "auto" and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"threads={threads!r}: give a positive number of threads or 'auto'.")


def check_arguments(*, walkers: int, ranges=None, window=None, variables=None, groups=None) -> None:
    """All constructor checks at once (see the functions above)."""
    check_ranges(ranges)
    check_window(window)
    check_variables(variables)
    check_groups(groups, walkers)


def _number(value: Any) -> bool:
    """A finite real number (numpy's too), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def check_settings(*, start_steps, start_lr, accuracy_slope, accuracy_axis, kernel_sigma, wall_strength,
                   bin_width) -> None:
    """The settings the sampler reads only later (the start phase, the CVs, the landscape), checked at once."""
    if not isinstance(start_steps, numbers.Integral) or isinstance(start_steps, bool) or start_steps < 1:
        raise ValueError(f"start_steps={start_steps!r}: give a positive number of optimiser steps for the"
                         " start='adam'/'sgd' runs (e.g. 300).")
    if not (_number(start_lr) and start_lr > 0):
        raise ValueError(f"start_lr={start_lr!r}: give a positive learning rate for the start='adam'/'sgd' runs"
                         " (parameter units per step, e.g. 1e-2).")
    if not (_number(accuracy_slope) and accuracy_slope > 0):
        raise ValueError(f"accuracy_slope={accuracy_slope!r}: give a positive slope k of the smoothed accuracy"
                         " (e.g. 5.0).")
    if accuracy_axis not in ("linear", "logit"):
        raise ValueError(f"accuracy_axis={accuracy_axis!r}: use 'linear' or 'logit'.")
    if kernel_sigma is not None and not (_number(kernel_sigma) and kernel_sigma >= 0):
        raise ValueError(f"kernel_sigma={kernel_sigma!r}: give a deposit width >= 0 in bins (0: one bin), or None for"
                         " the sampler's default.")
    if not (_number(wall_strength) and wall_strength >= 0):
        raise ValueError(f"wall_strength={wall_strength!r}: give a number >= 0 (nats per squared CV unit; 0: no soft"
                         " wall).")
    if bin_width is not None:
        widths = [bin_width] if _number(bin_width) or isinstance(bin_width, (bool, str)) else bin_width
        try:
            ok = all(_number(w) and w > 0 for w in widths)
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"bin_width={bin_width!r}: give one positive width in CV units (for every axis) or one"
                             " per axis, or None for the defaults.")


def available_memory_bytes() -> int | None:
    """Available physical memory in bytes (psutil when installed, else ``os.sysconf``; ``None`` when unknown)."""
    try:
        import psutil  # noqa: PLC0415 - optional

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def walker_memory_bytes(walkers: int, parameters: int, dtype: torch.dtype) -> int:
    """Estimated bytes for ``walkers`` x ``parameters`` in ``dtype`` (x :data:`MEMORY_FACTOR` for the sampler state)."""
    return walkers * parameters * torch.empty((), dtype=dtype).element_size() * MEMORY_FACTOR


def check_walker_memory(walkers: int, parameters: int, dtype: torch.dtype, device: torch.device | None = None) -> None:
    """Refuse a walker count whose memory estimate exceeds the available memory (CPU only; GPUs report their own)."""
    if device is not None and torch.device(device).type != "cpu":
        return
    need, free = walker_memory_bytes(walkers, parameters, dtype), available_memory_bytes()
    if free is not None and need > free:
        fit = max(1, free // max(1, need // walkers))
        raise ValueError(
            f"walkers={walkers} x {parameters} parameters need about {need / 2**30:.3g} GiB (x{MEMORY_FACTOR} for the "
            f"sampler state) but only {free / 2**30:.3g} GiB are available. Use at most walkers={fit}, a smaller "
            "model, or a machine with more memory."
        )


def check_module_dtype(module: torch.nn.Module) -> None:
    """Refuse half-precision parameters, as ``precision="16-mixed"`` is refused: WL steps need fp32 or fp64."""
    dtypes = {p.dtype for p in module.parameters()}
    half = dtypes & {torch.float16, torch.bfloat16}
    if half:
        raise ValueError(
            f"The module's parameters are {sorted(map(str, half))}: half precision is too coarse for the sampler's "
            "steps and bins. Call module.float() (or .double()) before trainer.fit."
        )
