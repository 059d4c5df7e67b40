"""The module contract: what the samplers take from a LightningModule, found and checked once at setup.

- **Data.** The whole train set and the whole held-out set (``heldout="val"``: the validation loaders; ``"test"``:
  the test loaders), from wherever Lightning accepts them (``trainer.fit(model, train_dataloaders,
  val_dataloaders)``, a datamodule, the module's ``*_dataloader`` methods), each concatenated into one full batch
  (:mod:`lightning_entropy.strategies.data`). Minibatch loaders are fine: all their batches are joined.
- **Loss.** The vectorized path runs ``forward`` for all walkers at once and applies a standard loss to its outputs
  (cross-entropy, binary cross-entropy with logits, MSE; the accuracy axes need a classifier's loss). The loss is
  named by ``loss=``, or found in a ``loss_fn`` / ``criterion`` / ``loss_function`` attribute, or found in
  ``training_step`` itself: on the real full train batch, at the module's weights and at a perturbed copy, the loss
  ``training_step`` returns (a tensor or a dict with ``"loss"``) equals a standard loss of ``forward(x)`` against
  ``y`` for ``(x, y, ...)`` batches. Otherwise (or with ``loss=None``) the sampler evaluates ``training_step`` /
  ``validation_step`` for every walker on the full batch and samples ln of the loss they return (the step path).
- **Logging.** ``self.log`` / ``self.log_dict`` in the steps never reach Lightning while walkers are evaluated; the
  values are captured (:mod:`lightning_entropy.core.step_hooks`), and a value the held-out hook logs can be named as
  a variable or observable: ``variables=("train_loss", "val_acc")``.
- **Eval mode, full batch.** The module is evaluated in eval mode (Dropout off, BatchNorm with its running
  statistics) on the full batch, never on a minibatch; setup says so once.
- **Frozen parameters** (``requires_grad=False``) keep their values on every path and are not sampled; setup states
  how many parameters are sampled.

Whatever the samplers cannot use fails here, with a message that says what to add.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn
from torch.func import functional_call

from lightning_entropy.core import variables as cvs
from lightning_entropy.core.evaluator import Evaluator, FullBatch
from lightning_entropy.core.step_hooks import LOGGED, RETURNED, StepCall
from lightning_entropy.core.variables import LOSS_KINDS, CollectiveVariable, loss_fn
from lightning_entropy.core.walkers import ParameterLayout
from lightning_entropy.strategies.data import pair, read_split, samples
from lightning_entropy.strategies.notices import inform

LOSS_ATTRIBUTES = ("loss_fn", "criterion", "loss_function")
_LOSS_WORDS = {"cross_entropy": "cross-entropy", "binary_cross_entropy": "binary cross-entropy (logits)",
               "mse": "MSE"}
_RTOL, _ATOL = 1e-5, 1e-7  # a step's loss "equals" a standard loss within these (float32 implementations differ)


def detect_loss(module: nn.Module, loss: Any = "auto") -> Any:
    """The loss kind named by ``loss`` or by the module's attributes: a name, a callable, or ``None``.

    ``"auto"`` looks for a ``loss_fn``, ``criterion`` or ``loss_function`` attribute: ``nn.CrossEntropyLoss()``,
    ``nn.BCEWithLogitsLoss()`` and ``nn.MSELoss()`` with default settings map to their names (so accuracies are
    available); any other module or callable ``loss(outputs, targets)`` is used as it is. ``None`` means none was
    found (:func:`inspect_module` then looks inside ``training_step``); ``loss=None`` passes through (the step path).
    """
    if loss != "auto":
        return loss
    for attr in LOSS_ATTRIBUTES:
        obj = getattr(module, attr, None)
        if obj is None:
            continue
        plain = getattr(obj, "reduction", "mean") == "mean" and getattr(obj, "weight", None) is None
        if isinstance(obj, nn.CrossEntropyLoss) and plain and not obj.label_smoothing:
            return "cross_entropy"
        if isinstance(obj, nn.BCEWithLogitsLoss) and plain and obj.pos_weight is None:
            return "binary_cross_entropy"
        if isinstance(obj, nn.MSELoss) and plain:
            return "mse"
        if callable(obj):
            return obj
    return None


def _candidates(out: torch.Tensor, y: torch.Tensor) -> list[str]:
    """The standard losses whose shapes fit outputs ``out`` and targets ``y``."""
    kinds = []
    if out.dim() >= 2 and not y.is_floating_point() and out.shape[:-1] == y.shape:
        kinds.append("cross_entropy")
    if y.is_floating_point() and out.numel() == y.numel():
        if bool(((y >= 0) & (y <= 1)).all()):
            kinds.append("binary_cross_entropy")
        kinds.append("mse")
    return kinds


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.detach().double().reshape(()), b.detach().double().reshape(())
    return bool(torch.isfinite(a) & torch.isclose(a, b, rtol=_RTOL, atol=_ATOL))


def _perturbed(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A nearby point: every parameter moved by Gaussian noise of half its RMS plus 0.05 (a fixed seed), so a term
    that vanishes at the module's weights (a parameter initialised at zero) shows."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    for name, p in params.items():
        scale = 0.5 * float(p.detach().double().pow(2).mean().sqrt()) + 0.05
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(device=p.device, dtype=p.dtype)
        out[name] = p.detach() + scale * noise
    return out


@dataclass
class _Probe:
    """One call of a step hook on the full batch at the module's weights: its output (detached), which of its
    tensors had a gradient in the parameters, or the error it raised."""

    output: dict[str, torch.Tensor] | None = None
    differentiable: dict[str, bool] = field(default_factory=dict)
    error: Exception | None = None


@dataclass
class ModuleContract:
    """What :func:`inspect_module` found: the data, the loss, the sampled parameters and the values the steps log.

    Attributes:
        module: the LightningModule (in eval mode).
        data: the cached full batches.
        loss: the standard loss kind (or callable) of the vectorized path, or ``None`` (the step path).
        loss_origin: where the loss was found, in words (for the setup message).
        layout: the sampled (trainable) parameters.
        heldout_hook: ``"validation_step"`` or ``"test_step"``.
        origins: per split (``"train"``, ``"test"``), where its loaders came from.
    """

    module: nn.Module
    data: FullBatch
    loss: Any
    loss_origin: str
    layout: ParameterLayout
    heldout_hook: str
    origins: dict[str, str]
    _probes: dict[str, _Probe] = field(default_factory=dict, repr=False)

    # -- the step hooks ----------------------------------------------------------------------------------------------

    def _hook(self, split: str) -> str:
        return "training_step" if split == "train" else self.heldout_hook

    def probe(self, split: str) -> _Probe:
        """The split's step hook called once on the full batch at the module's weights (cached), with gradients on
        so a logged value's differentiability shows."""
        if split not in self._probes:
            hook = self._hook(split)
            probe = _Probe()
            if self.data.pair(split) is not None and is_overridden(hook, self.module):
                try:
                    with torch.enable_grad():
                        output = StepCall(self.module, hook)(self.data.batch(split), 0)
                    probe.differentiable = {k: bool(v.requires_grad) for k, v in output.items()}
                    probe.output = {k: v.detach() for k, v in output.items()}
                except Exception as err:  # noqa: BLE001 - reported where the hook is needed
                    probe.error = err
            self._probes[split] = probe
        return self._probes[split]

    def returns_loss(self, split: str) -> bool:
        """Whether the split's step hook returns a loss (a tensor, or a dict with ``"loss"``)."""
        output = self.probe(split).output
        return output is not None and RETURNED in output

    @property
    def logged(self) -> dict[str, tuple[str, bool]]:
        """The tensors the step hooks log: name -> ``(split, differentiable)`` (the held-out hook's names win)."""
        names: dict[str, tuple[str, bool]] = {}
        for split in ("train", "test"):
            probe = self.probe(split)
            for key, value in (probe.output or {}).items():
                if key.startswith(LOGGED) and value.numel() == 1 and value.is_floating_point():
                    names[key[len(LOGGED):]] = (split, probe.differentiable[key])
        return names

    def _require_hook(self, split: str, what: str) -> None:
        """An error that says what to add when ``what`` needs the split's step hook and the hook cannot give it."""
        hook, probe = self._hook(split), self.probe(split)
        name = type(self.module).__name__
        if probe.error is not None:
            raise ValueError(
                f"{what} needs {name}.{hook} on the whole {split} set as one batch, but it raised"
                f" {type(probe.error).__name__}: {probe.error}. Make {hook} accept the full batch."
            ) from probe.error
        if probe.output is None:
            raise ValueError(
                f"{what} needs {name}.{hook}, which the module does not define. Define {hook}(batch, batch_idx)"
                " returning the loss, or sample another variable."
            )

    # -- variables ---------------------------------------------------------------------------------------------------

    def resolve(self, spec: Any, **kwargs: Any) -> CollectiveVariable:
        """:func:`lightning_entropy.core.variables.resolve` with this module's loss and logged values, checked: a
        variable read from a step hook must be available there. ``kwargs``: ``monte_carlo``, ``accuracy_slope``,
        ``accuracy_axis``."""
        logged = self.logged if isinstance(spec, str) and spec not in cvs.NAMES else None
        cv = cvs.resolve(spec, loss=self.loss, logged=logged, **kwargs)
        if cv.hook:
            what = f"The collective variable {cv.name!r}"
            self._require_hook(cv.split, what)
            if cv.name.startswith("ln_") and not self.returns_loss(cv.split):
                hook = self._hook(cv.split)
                output = self.probe(cv.split).output or {}
                logs = sorted(k[len(LOGGED):] for k in output if k.startswith(LOGGED))
                hint = (f" It logs {logs}: name one of them instead, e.g. variables=('train_loss', {logs[0]!r})."
                        if logs and cv.split == "test" else "")
                raise ValueError(
                    f"{what} is ln of the loss {type(self.module).__name__}.{hook} returns, but {hook} returns no loss"
                    f" (None or a dict without 'loss').{hint} Return the loss from {hook} (a tensor or"
                    " {'loss': ...}), or give the module a standard loss of forward(x) (see loss=)."
                )
        return cv

    def default_variables(self) -> tuple[str, ...]:
        """Test accuracy for classifiers, ln test loss otherwise (on the step path: if the held-out hook returns a
        loss); 1-D without a held-out set."""
        if self.loss is None:
            return ("train_loss", "test_loss") if self.returns_loss("test") else ("train_loss",)
        return cvs.default_variables(self.loss, self.data.has_heldout)

    def variables_for(self, requested: Sequence[Any] | None, heldout: str = "val") -> tuple:
        """The ``requested`` variables (``None``: :meth:`default_variables`), with ``"test_metric"`` replaced by the
        module's own held-out metric (test accuracy for a classifier, ln test loss otherwise: the second default)."""
        default = self.default_variables()
        if requested is None:
            return default
        if "test_metric" not in requested:
            return requested
        if len(default) < 2:
            raise ValueError(
                f"variables={requested!r}: 'test_metric' is the held-out metric, but there is none (no"
                f" {'val' if heldout == 'val' else 'test'} data, or a validation_step that returns no loss and"
                " logs no value). Sample variables=('train_loss',), or give the module held-out data."
            )
        return tuple(default[1] if v == "test_metric" else v for v in requested)

    def default_observables(self, variables: Sequence[CollectiveVariable]) -> tuple[str, ...]:
        """For a 1-D walk, the held-out metric recorded per bin without bias: the hard accuracy or ln test loss; on the
        step path ln of the held-out hook's loss, else every value it logs."""
        if self.loss is not None:
            return cvs.default_observables(self.loss, variables, self.data.has_heldout)
        if len(variables) != 1 or not self.data.has_heldout:
            return ()
        if self.returns_loss("test"):
            return ("test_loss",)
        return tuple(name for name, (split, _) in self.logged.items() if split == "test" and name not in cvs.NAMES)

    def evaluator(self, variables: Sequence[CollectiveVariable], observables: Sequence[CollectiveVariable] = (), *,
                  vectorize: bool | str = "auto") -> Evaluator:
        """The :class:`~lightning_entropy.core.evaluator.Evaluator` of these CVs for this module and data."""
        return Evaluator(self.module, self.layout, self.data, variables, observables, vectorize=vectorize,
                         step_hooks=self.loss is None, heldout_hook=self.heldout_hook)

    # -- the setup message -------------------------------------------------------------------------------------------

    def describe(self, evaluator: Evaluator | None = None) -> str:
        """One paragraph: what is sampled, how the module is evaluated, the data, the loss and the path."""
        module = self.module
        total = sum(p.numel() for p in module.parameters())
        frozen = total - self.layout.numel
        frozen_text = f" ({frozen} frozen with requires_grad=False stay at their values)" if frozen else ""
        layers = []
        if any(isinstance(m, nn.modules.dropout._DropoutNd) for m in module.modules()):
            layers.append("Dropout off")
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()):
            layers.append("BatchNorm with its running statistics")
        mode = "eval mode" + (f" ({', '.join(layers)})" if layers else "")
        train_n = samples(self.data.batch("train"))
        data = f"train {train_n} samples ({self.origins['train']})"
        if self.data.has_heldout:
            data += f", held-out {samples(self.data.batch('test'))} ({self.origins['test']})"
        else:
            data += ", no held-out set"
        text = (f"lightning-entropy: sampling {self.layout.numel} of {total} parameters of {type(module).__name__}"
                f"{frozen_text}, with the module in {mode} on full batches: {data}. Loss: {self.loss_origin}.")
        if evaluator is not None:
            path = {"loop": "walkers evaluated one after another", "vmap": "vectorized (torch.func.vmap)",
                    "batched": "vectorized (walker-batched layers)",
                    "linear chain": "vectorized (batched Linear chain)"}[evaluator.path]
            text += f" Variables: {', '.join(cv.name for cv in evaluator.variables)}; {path}."
        return text

    def announce(self, evaluator: Evaluator | None = None) -> None:
        """Say once, on rank zero, what :meth:`describe` says."""
        inform(self.describe(evaluator))


def _inline_loss(module: nn.Module, batch: Any, train: _Probe) -> str | None:
    """The standard loss ``training_step`` computes of ``forward(x)``, or ``None``: its returned loss must equal
    that loss of the outputs, at the module's weights (``train``: that call's probe) and at a perturbed point."""
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2
            and all(isinstance(t, torch.Tensor) for t in batch[:2])):
        return None
    if train.output is None or RETURNED not in train.output:
        return None
    x, y = batch[0], batch[1]
    params = {n: p for n, p in module.named_parameters() if p.requires_grad}
    step = StepCall(module, "training_step")
    with torch.no_grad():
        kinds: list[str] | None = None
        for point in (None, _perturbed(params)):
            out = module(x) if point is None else functional_call(module, point, (x,), strict=False)
            if not isinstance(out, torch.Tensor):
                return None
            if point is None:
                target = train.output[RETURNED]
            else:
                result = functional_call(step, {"inner." + k: v for k, v in point.items()}, (batch, 0), strict=False)
                if RETURNED not in result:
                    return None
                target = result[RETURNED]
            if target.numel() != 1:
                return None
            kinds = [k for k in (kinds if kinds is not None else _candidates(out, y))
                     if _close(loss_fn(k)(out, y), target)]
            if not kinds:
                return None
    return kinds[0]


def _check_attribute_loss(contract: ModuleContract, kind: Any) -> None:
    """Warn when the module's ``loss_fn``-like attribute is not what ``training_step`` returns on the full batch."""
    probe = contract.probe("train")
    if probe.output is None or RETURNED not in probe.output or contract.data.train[1] is None:
        return
    module = contract.module
    x, y = contract.data.train
    with torch.no_grad():
        try:
            attribute = loss_fn(kind)(module(x), y)
        except Exception:  # noqa: BLE001 - a loss that cannot run fails with its own message at the first step
            return
    returned = probe.output[RETURNED]
    if returned.numel() == 1 and attribute.numel() == 1 and not _close(returned, attribute):
        rank_zero_warn(
            f"{type(module).__name__}.training_step returns {float(returned):.6g} on the full train batch, but the"
            f" sampler's loss ({contract.loss_origin}) is {float(attribute):.6g} there; the sampler samples the"
            " latter. Pass loss=None to the strategy to sample training_step's own loss, or make them agree."
        )


def check_heldout(heldout: Any) -> None:
    """``heldout`` names the loader of the held-out split: ``"val"`` or ``"test"`` (the one check of it, made by
    every constructor that takes it and by :func:`inspect_module`)."""
    if heldout not in ("val", "test"):
        raise ValueError(f"heldout={heldout!r}: use 'val' (val_dataloader) or 'test' (test_dataloader).")


def inspect_module(trainer: Any, module: nn.Module, *, loss: Any = "auto", heldout: str = "val",
                   device: torch.device) -> ModuleContract:
    """Read the data, find the loss and check the module against the contract (module docstring); the module is put
    in eval mode. Fails with a message that says what to add when the module cannot be sampled."""
    check_heldout(heldout)
    module.eval()  # deterministic CVs: no dropout noise, no batch-norm statistics updates
    train, train_origin = read_split(trainer, "train", device)
    if train is None:
        raise ValueError(
            "No train_dataloader was found; the sampler needs the train set to compute ln L_train. Pass it as"
            " trainer.fit(model, train_dataloaders=...), or give the datamodule or the module a train_dataloader."
        )
    test, test_origin = read_split(trainer, heldout, device)
    layout = ParameterLayout.of(module)
    kind = detect_loss(module, loss)
    origin = ("loss=" + getattr(kind, "__name__", repr(kind))) if loss != "auto" else ""
    if loss == "auto" and kind is not None:
        attr = next(a for a in LOSS_ATTRIBUTES if getattr(module, a, None) is not None)
        origin = f"the module's `{attr}` attribute ({_LOSS_WORDS.get(kind, getattr(kind, '__name__', 'callable'))})"
    hook = "validation_step" if heldout == "val" else "test_step"
    raw = FullBatch((train, None), (test, None) if test is not None else None)
    contract = ModuleContract(module, raw, None, "", layout, hook, {"train": train_origin, "test": test_origin})
    if loss == "auto" and kind is None:
        kind = _inline_loss(module, train, contract.probe("train"))
        if kind is not None:
            origin = f"{_LOSS_WORDS[kind]} of forward(x), found in training_step"
    if kind is None:
        contract.loss_origin = "ln of the loss training_step returns (the step path: no standard loss of forward)"
        contract._require_hook("train", "ln L_train")
        if not contract.returns_loss("train"):
            output = contract.probe("train").output
            logs = sorted(k[len(LOGGED):] for k in output if k.startswith(LOGGED))
            raise ValueError(
                f"{type(module).__name__}.training_step returns no loss on the full train batch (it logged {logs});"
                " the sampler needs ln L_train. Return the loss (a tensor or {'loss': ...}) from training_step, or"
                f" give the module a `loss_fn` attribute / pass loss= one of {LOSS_KINDS} or a callable."
            )
        return contract
    contract.data = FullBatch(pair(train, "train"), pair(test, heldout) if test is not None else None,
                              batches={"train": train, "test": test})
    contract.loss, contract.loss_origin = kind, origin
    if loss == "auto" and origin.startswith("the module's"):
        _check_attribute_loss(contract, kind)
    return contract


__all__ = ["LOSS_ATTRIBUTES", "ModuleContract", "check_heldout", "detect_loss", "inspect_module"]
