"""Collective variables (CVs): the macrostate coordinates computed from a walker's parameters on full-batch data.

The x axis of every landscape is ``ln L_train`` (the paper's convention); the optional y axis is a test metric.
Names understood by :func:`resolve` (ALGORITHM.md section 5):

==========================  =====================================================================  ==========
name                        value                                                                   gradient
==========================  =====================================================================  ==========
``train_loss``              ln of the full-batch train loss (cross-entropy or MSE)                  yes
``test_loss``               ln of the full-batch held-out loss                                      yes
``test_accuracy``           smoothed held-out accuracy for MD samplers, hard accuracy for MC        MD: yes
``smooth_test_accuracy``    mean sigmoid(k (z_true - max_{j != true} z_j)), slope ``k``            yes
``hard_test_accuracy``      fraction of held-out samples classified right                           no
``train_accuracy``          hard train accuracy (the reference Monte Carlo's x axis)                no
==========================  =====================================================================  ==========

Accuracies can be put on a logit axis, ``y = ln(p / (1 - p))`` with ``p = eps + (1 - 2 eps) A`` (``eps = 1e-4``).
A callable ``fn(outputs, targets) -> scalar`` is a held-out CV named after the function; it sees one walker's
outputs on the whole held-out set. Any other name is a value the module logs with ``self.log(name, ...)`` in its step
hooks (``logged=`` lists them): ``variables=("train_loss", "val_acc")`` samples what ``validation_step`` logs as
``val_acc``, evaluated for every walker on the full held-out batch (:mod:`lightning_entropy.core.step_hooks`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lightning_entropy.core.step_hooks import LOGGED, RETURNED

LOSS_KINDS = ("cross_entropy", "binary_cross_entropy", "mse")
NAMES = (
    "train_loss",
    "test_loss",
    "test_accuracy",
    "smooth_test_accuracy",
    "hard_test_accuracy",
    "train_accuracy",
)


@dataclass(frozen=True)
class CollectiveVariable:
    """One CV: ``fn(outputs, targets)`` on one walker's outputs for the ``split`` ("train" or "test") data.

    ``hook``: ``outputs`` is what the split's step hook (``training_step`` / ``validation_step``) returned and logged
    (a dict, see :func:`lightning_entropy.core.step_hooks.step_output`) and ``targets`` is ``None``; otherwise
    ``outputs`` are ``forward``'s.

    ``batched``: the same function on all walkers' outputs at once, ``(W, N, ...) -> (W,)`` (the built-in CVs have
    one; the evaluator then calls it directly instead of under ``vmap``, whose per-op cost dominates small models).

    ``batched_grad``: ``(outputs (W, N, ...), targets) -> (value (W,), d value / d outputs)`` in closed form (the ln
    losses and the smoothed accuracy have one); with it the Linear chain back-propagates by hand instead of through
    autograd.
    """

    name: str
    split: str
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = field(compare=False)
    differentiable: bool = True
    label: str = ""
    hook: bool = False
    batched: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = field(default=None, compare=False)
    batched_grad: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = field(
        default=None, compare=False)

    def __post_init__(self) -> None:
        if self.split not in ("train", "test"):
            raise ValueError(f"CV {self.name!r}: split must be 'train' or 'test', got {self.split!r}.")


# --- per-walker metric functions (outputs of one walker on one split) -----------------------------------------


def _cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits ``(N, C)`` against class indices; written with ``log_softmax`` and ``gather``
    because ``F.cross_entropy`` under ``vmap`` takes a slow decomposition."""
    return -torch.log_softmax(out, dim=-1).gather(-1, y.long().unsqueeze(-1)).mean()


def _per_walker(values: torch.Tensor) -> torch.Tensor:
    """Mean over everything but the leading walker dimension."""
    return values.reshape(values.shape[0], -1).mean(-1)


def _pair(d0: torch.Tensor, d1: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The gradients ``(W, N)`` of two classes' logits as one tensor shaped like ``out`` ``(W, N, 2)``, in its
    storage order (class-major for the Linear chain's output)."""
    if _class_major(out):
        return torch.stack([d0, d1], dim=1).transpose(1, 2)
    return torch.stack([d0, d1], dim=-1)


def _class_major(out: torch.Tensor) -> bool:
    """Logits ``(W, N, C)`` stored class-major (the Linear chain's transposed output): reductions over the classes
    then run over a non-inner dimension, several times faster for few classes than over the strided last one."""
    return out.dim() == 3 and out.shape[-1] > 1 and out.stride(-1) != 1


def _two_classes(out: torch.Tensor) -> bool:
    """Logits ``(W, N, 2)``: every built-in CV is then a function of one number per sample, the margin
    ``±(z_1 - z_0)``, which costs a few elementwise operations instead of a softmax, a gather and a scatter."""
    return out.dim() == 3 and out.shape[-1] == 2


def _sign(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``+1`` for class 1, ``-1`` for class 0, ``(N,)``."""
    return y.to(dtype) * 2 - 1


def _cross_entropy_batched(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """:func:`_cross_entropy` of every walker: logits ``(W, N, ..., C)`` -> ``(W,)``. With two classes it is
    ``mean softplus(-m)`` of the margin ``m`` (the same function; ``log1p`` keeps a sample's loss below float32's
    resolution of 1, where ``log_softmax`` rounds it to 0, so ln L stays finite deep in the low-loss region)."""
    if _two_classes(out):
        return F.softplus((out[..., 0] - out[..., 1]) * _sign(y, out.dtype)).mean(-1)
    if _class_major(out):
        index = y.long().view(1, 1, -1).expand(out.shape[0], 1, -1)
        return -torch.log_softmax(out.transpose(1, 2), dim=1).gather(1, index).mean((1, 2))
    index = y.long().unsqueeze(-1).expand(*out.shape[:-1], 1)
    return _per_walker(-torch.log_softmax(out, dim=-1).gather(-1, index))


def batched_loss_fn(kind: str | Callable) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """The built-in loss ``kind`` on all walkers' outputs at once, ``(W, N, ...) -> (W,)``; ``None`` for a callable."""
    if kind == "cross_entropy":
        return _cross_entropy_batched
    if kind == "binary_cross_entropy":
        return lambda out, y: _per_walker(F.binary_cross_entropy_with_logits(
            out.reshape(out.shape[0], *y.shape), y.to(out.dtype).expand(out.shape[0], *y.shape), reduction="none"))
    if kind == "mse":
        return lambda out, y: _per_walker((out.reshape(out.shape[0], *y.shape) - y.to(out.dtype)) ** 2)
    return None


def _ln_loss_grad(kind: str) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
    """``ln L`` of the built-in loss ``kind`` on all walkers' outputs ``(W, N, ...)`` and its gradient with respect to
    them, in closed form: ``d ln L / d out = (d L / d out) / L`` with ``d L / d out`` = (softmax - one-hot) / N for
    cross-entropy, (sigmoid - y) / n for binary cross-entropy with logits, 2 (out - y) / n for MSE. The value is
    the one :func:`batched_loss_fn` gives, to the bit."""
    value = batched_loss_fn(kind)
    if value is None:
        return None

    def grad(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if kind == "cross_entropy" and _two_classes(out):  # d softplus(-m) / d m = -sigmoid(-m), m = sign (z_1 - z_0)
            sign = _sign(y, out.dtype)
            minus_m = (out[..., 0] - out[..., 1]) * sign  # what _cross_entropy_batched computes, the same bits
            loss = F.softplus(minus_m).mean(-1)
            g = torch.sigmoid(minus_m) * (sign / (-out.shape[1] * loss.unsqueeze(-1)))
            return torch.log(loss), _pair(-g, g, out)
        loss = value(out, y)
        walkers = out.shape[0]
        if kind == "cross_entropy":
            axis = 1 if _class_major(out) else -1  # the softmax over the classes in their storage order
            logits = out.transpose(1, 2) if axis == 1 else out
            d = torch.softmax(logits, dim=axis)
            if axis == 1:
                index = y.long().view(1, 1, -1).expand(walkers, 1, -1)
            else:
                index = y.long().unsqueeze(-1).expand(*out.shape[:-1], 1)
            d = d.scatter_add(axis, index, torch.full(index.shape, -1.0, dtype=d.dtype, device=d.device))
            d = d / (out[..., 0].numel() // walkers)
            d = d.transpose(1, 2) if axis == 1 else d
        else:
            shaped = out.reshape(walkers, *y.shape)
            target = y.to(out.dtype)
            d = torch.sigmoid(shaped) - target if kind == "binary_cross_entropy" else 2 * (shaped - target)
            d = (d / y.numel()).reshape(out.shape)
        return torch.log(loss), d / loss.view(-1, *([1] * (out.dim() - 1)))

    return grad


def loss_fn(kind: str | Callable) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if callable(kind):
        return kind
    if kind == "cross_entropy":
        return _cross_entropy
    if kind == "binary_cross_entropy":
        return lambda out, y: F.binary_cross_entropy_with_logits(out.reshape(y.shape), y.to(out.dtype))
    if kind == "mse":
        return lambda out, y: F.mse_loss(out.reshape(y.shape), y.to(out.dtype))
    raise ValueError(f"Unknown loss {kind!r}; use one of {LOSS_KINDS} or a callable loss(outputs, targets).")


def _margin(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Logit of the true class minus the largest other logit, per sample."""
    if out.dim() == 1 or out.shape[-1] == 1:  # one logit for class 1
        z = out.reshape(y.shape)
        return torch.where(y > 0.5, z, -z)
    true = out.gather(-1, y.long().unsqueeze(-1)).squeeze(-1)
    others = out.scatter(-1, y.long().unsqueeze(-1), float("-inf"))
    return true - others.amax(-1)


def _margin_batched(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """:func:`_margin` of every walker: outputs ``(W, N, C)`` (or ``(W, N)``, one logit) -> ``(W, N)``."""
    if out.dim() == 2 or out.shape[-1] == 1:
        z = out.reshape(out.shape[0], *y.shape)
        return torch.where(y > 0.5, z, -z)
    if _two_classes(out):
        return (out[..., 1] - out[..., 0]) * _sign(y, out.dtype)
    if _class_major(out):
        classes = out.transpose(1, 2)
        index = y.long().view(1, 1, -1).expand(out.shape[0], 1, -1)
        return classes.gather(1, index).squeeze(1) - classes.scatter(1, index, float("-inf")).amax(1)
    index = y.long().unsqueeze(-1).expand(*out.shape[:-1], 1)
    true = out.gather(-1, index).squeeze(-1)
    others = out.scatter(-1, index, float("-inf"))
    return true - others.amax(-1)


def smooth_accuracy(slope: float, batched: bool = False) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if batched:
        return lambda out, y: _per_walker(torch.sigmoid(slope * _margin_batched(out, y)))
    return lambda out, y: torch.sigmoid(slope * _margin(out, y)).mean()


def _smooth_accuracy_grad(slope: float) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The batched smoothed accuracy ``mean sigmoid(k m)`` and its gradient in the outputs: ``k s (1 - s) / N`` on
    the true logit and minus that on the largest other logit (shared equally by tied largest logits, as autograd's
    ``amax`` does)."""

    def grad(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if _two_classes(out):  # the margin of _margin_batched, its sign kept for the gradient
            sign = _sign(y, out.dtype)
            s = torch.sigmoid(slope * ((out[..., 1] - out[..., 0]) * sign))
            g = (s * (1 - s)).mul_(sign * (slope / s.shape[-1]))
            return _per_walker(s), _pair(-g, g, out)
        s = torch.sigmoid(slope * _margin_batched(out, y))
        value = _per_walker(s)
        dm = slope * s * (1 - s) / (s[0].numel())
        if out.dim() == 2 or out.shape[-1] == 1:
            return value, torch.where(y > 0.5, dm, -dm).reshape(out.shape)
        axis = 1 if _class_major(out) else -1
        logits = out.transpose(1, 2) if axis == 1 else out
        if axis == 1:
            index = y.long().view(1, 1, -1).expand(out.shape[0], 1, -1)
        else:
            index = y.long().unsqueeze(-1).expand(*out.shape[:-1], 1)
        others = logits.scatter(axis, index, float("-inf"))
        rival = (others == others.amax(axis, keepdim=True)).to(logits.dtype)
        step = dm.unsqueeze(axis)
        d = (rival * (-step / rival.sum(axis, keepdim=True))).scatter_add(axis, index, step)
        return value, d.transpose(1, 2) if axis == 1 else d

    return grad


def _logit_grad(fn: Callable | None, eps: float = 1e-4) -> Callable | None:
    """:func:`logit_axis` of a closed-form gradient ``fn``: ``d y / d A = (1 - 2 eps) / (p (1 - p))``."""
    if fn is None:
        return None

    def wrapped(out, y):
        value, d = fn(out, y)
        p = eps + (1 - 2 * eps) * value
        scale = (1 - 2 * eps) / (p * (1 - p))
        return torch.log(p) - torch.log1p(-p), d * scale.view(-1, *([1] * (d.dim() - 1)))

    return wrapped


def hard_accuracy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (_margin(out, y) > 0).to(out.dtype).mean()


def _hard_accuracy_batched(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _per_walker((_margin_batched(out, y) > 0).to(out.dtype))


def logit_axis(fn: Callable | None, eps: float = 1e-4) -> Callable | None:
    if fn is None:
        return None

    def wrapped(out, y):
        p = eps + (1 - 2 * eps) * fn(out, y)
        return torch.log(p) - torch.log1p(-p)

    return wrapped


def _ln_step_loss(out: dict[str, torch.Tensor], _targets: None) -> torch.Tensor:
    """On the step path the outputs are the hook's output: ln of the loss it returned."""
    if RETURNED not in out:
        raise ValueError(
            "The step hook returned no loss (a tensor, or a dict with key 'loss'), so ln of its loss cannot be"
            " evaluated. Return the loss from the hook, or sample a value it logs instead (variables=('train_loss',"
            " '<logged name>'))."
        )
    return torch.log(out[RETURNED])


def logged_metric(name: str, split: str, *, differentiable: bool) -> CollectiveVariable:
    """The value the module logs as ``name`` (``self.log(name, value)``) in the step hook of ``split``, as it is (no
    logarithm). ``differentiable``: whether that value has a gradient in the parameters (an argmax accuracy has not)."""

    def fn(out: dict[str, torch.Tensor], _targets: None) -> torch.Tensor:
        if LOGGED + name not in out:
            raise ValueError(f"The step hook did not log {name!r} in this call; it logged {sorted(out)}.")
        return out[LOGGED + name].reshape(())

    return CollectiveVariable(name, split, fn, differentiable, name, hook=True)


def _ln(fn: Callable | None) -> Callable | None:
    return None if fn is None else lambda out, y: torch.log(fn(out, y))


# --- name resolution --------------------------------------------------------------------------------------------


def resolve(
    spec: str | Callable | CollectiveVariable,
    *,
    loss: str | Callable | None,
    monte_carlo: bool = False,
    accuracy_slope: float = 5.0,
    accuracy_axis: str = "linear",
    logged: Mapping[str, tuple[str, bool]] | None = None,
) -> CollectiveVariable:
    """Turn a CV name or callable into a :class:`CollectiveVariable`.

    ``loss`` is the task's loss kind (``None`` when the module has no standard loss and its ``training_step`` is
    used: then only ``train_loss`` and ``test_loss`` exist). ``monte_carlo`` makes ``test_accuracy`` hard.
    ``logged`` maps the names the module's step hooks log to ``(split, differentiable)``; a name that is not built in
    is looked up there (:func:`logged_metric`).
    """
    if isinstance(spec, CollectiveVariable):
        return spec
    if callable(spec):
        name = getattr(spec, "__name__", "custom")
        return CollectiveVariable(name if name != "<lambda>" else "custom", "test", spec, True, name)
    if isinstance(spec, str) and spec not in NAMES and logged and spec in logged:
        split, differentiable = logged[spec]
        return logged_metric(spec, split, differentiable=differentiable)
    if not isinstance(spec, str) or spec not in NAMES:
        known = f" or a name the module logs ({sorted(logged)})" if logged else ""
        raise ValueError(
            f"Unknown collective variable {spec!r}. Use one of {NAMES}{known}, or a callable fn(outputs, targets) ->"
            " scalar."
        )
    if accuracy_axis not in ("linear", "logit"):
        raise ValueError(f"accuracy_axis={accuracy_axis!r}: use 'linear' or 'logit'.")
    if loss is None and spec not in ("train_loss", "test_loss"):
        raise ValueError(
            f"Collective variable {spec!r} needs the module's outputs, but the module has no standard loss (its"
            " training_step's loss is not the cross-entropy, BCE or MSE of forward(x) on (inputs, targets) batches,"
            " so the sampler calls training_step). Return such a loss of self(x) from training_step, give the module"
            " a `loss_fn` attribute (e.g. nn.CrossEntropyLoss()) or pass loss='cross_entropy' to the strategy; or"
            " use variables=('train_loss', 'test_loss') or a value validation_step logs."
        )
    if spec in ("train_loss", "test_loss"):
        split = spec.split("_")[0]
        if loss is None:
            return CollectiveVariable(f"ln_{split}_loss", split, _ln_step_loss, True, f"ln L_{split}", hook=True)
        return CollectiveVariable(f"ln_{split}_loss", split, _ln(loss_fn(loss)), True, f"ln L_{split}",
                                  batched=_ln(batched_loss_fn(loss)) if isinstance(loss, str) else None,
                                  batched_grad=_ln_loss_grad(loss) if isinstance(loss, str) else None)
    if isinstance(loss, str) and loss == "mse" or callable(loss):
        raise ValueError(
            f"Collective variable {spec!r} is an accuracy, but the task's loss is {getattr(loss, '__name__', loss)!r}"
            " (not a classifier). Use 'test_loss' or a callable fn(outputs, targets)."
        )
    if spec == "test_accuracy":
        spec = "hard_test_accuracy" if monte_carlo else "smooth_test_accuracy"
    split = "train" if spec == "train_accuracy" else "test"
    if spec == "smooth_test_accuracy":
        fn, diff, label = smooth_accuracy(accuracy_slope), True, f"smoothed A_test (k={accuracy_slope:g})"
        batched = smooth_accuracy(accuracy_slope, batched=True)
        closed_form = _smooth_accuracy_grad(accuracy_slope)
    else:
        fn, diff, label, batched = hard_accuracy, False, f"A_{split}", _hard_accuracy_batched
        closed_form = None
    if accuracy_axis == "logit":
        fn, batched, label = logit_axis(fn), logit_axis(batched), f"logit {label}"
        closed_form = _logit_grad(closed_form)
    name = {"smooth_test_accuracy": "test_accuracy", "hard_test_accuracy": "test_accuracy"}.get(spec, spec)
    return CollectiveVariable(name, split, fn, diff, label, batched=batched, batched_grad=closed_form)


def default_variables(loss: str | Callable | None, has_heldout: bool) -> tuple[str, ...]:
    """Test accuracy for classifiers, ln test loss otherwise; 1-D when there is no held-out set."""
    if not has_heldout:
        return ("train_loss",)
    classifier = isinstance(loss, str) and loss in ("cross_entropy", "binary_cross_entropy")
    return ("train_loss", "test_accuracy" if classifier else "test_loss")


def default_observables(loss: str | Callable | None, variables: Sequence[CollectiveVariable], has_heldout: bool):
    """For a 1-D walk: record the held-out metric per bin without bias (the label-free estimate of Eq. 1)."""
    if len(variables) != 1 or not has_heldout:
        return ()
    classifier = isinstance(loss, str) and loss in ("cross_entropy", "binary_cross_entropy")
    return ("hard_test_accuracy",) if classifier else ("test_loss",)


def check_finite_scale(value: float, what: str) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a positive finite number, got {value!r}.")
    return float(value)
