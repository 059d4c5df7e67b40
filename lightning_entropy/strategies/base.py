"""What every sampler strategy shares, as a mixin over any Lightning strategy (one device or DDP): the settings that
cannot work with a sampler, the placeholder optimizer whose ``state_dict`` carries the sampler state through
checkpoints, the train loader's placeholder, and the Lightning hooks that hand each Lightning step to the sampler.

:class:`SamplerMixin` is combined with a Lightning strategy: :class:`SamplerStrategy` (one device, ``SingleDevice
Strategy``) or ``DDPStrategy`` (:mod:`lightning_entropy.strategies.wang_landau_ddp`). A strategy calls
:meth:`SamplerMixin._init_sampling` from its constructor and implements ``_prepare(trainer)`` (read the data, start the
walkers; called at ``on_train_start``), ``run_chunk(steps)`` (run ``steps`` sampler steps, copy a walker into the
module, log), ``_sampler_state()``, ``sampler_kind`` and ``_restore(state)``; its walker state has ``theta``, ``cv``
and ``step``.

The fit loop iterates a placeholder in place of the train loader (:class:`~lightning_entropy.strategies.data.
SamplerSteps`): the sampler reads the whole train set once, so no minibatch is fetched per Lightning step. With a
``max_time`` cap a Lightning step runs fewer sampler steps when all of them would run past it
(:mod:`lightning_entropy.strategies.budget`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import lightning
import torch
from lightning.pytorch.plugins.precision import DoublePrecision, Precision
from lightning.pytorch.strategies import SingleDeviceStrategy

from lightning_entropy.strategies import budget
from lightning_entropy.strategies.contract import check_heldout
from lightning_entropy.strategies.data import SamplerSteps
from lightning_entropy.strategies.notices import inform


class SamplerOptimizer(torch.optim.Optimizer):
    """The placeholder the Trainer steps. It holds no parameters' updates: its ``state_dict`` is the sampler's.

    Lightning saves optimizer states in every checkpoint and restores them on resume, so the sampler state travels
    with checkpoints like any ``torch.optim`` state.
    """

    def __init__(self, params, strategy: SamplerStrategy) -> None:
        super().__init__(params, {})
        self._strategy = strategy

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        return closure() if closure is not None else None

    def state_dict(self) -> dict[str, Any]:
        return {"state": {}, "param_groups": [], "sampler": self._strategy.sampler_state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "sampler" not in state_dict:
            raise ValueError(
                "This checkpoint was not written by a lightning-entropy sampler strategy (its optimizer state has no"
                " sampler state); resume it with the strategy that wrote it, or start a fresh run."
            )
        self._strategy.load_sampler_state_dict(state_dict["sampler"])


class SamplerMixin:
    """The sampler side of a Lightning strategy (see the module docstring); combine it with a Lightning strategy class.

    Attributes every sampler strategy has (set by :meth:`_init_sampling`): ``walkers``, ``steps_per_lightning_step``,
    ``observe_every``, ``heldout``, ``vectorize``; ``_state`` (the walkers' state, ``None`` before the fit starts) and
    ``_pending`` (a checkpoint's sampler state waiting for the walkers).
    """

    steps_per_lightning_step: int = 1
    #: shorten a Lightning step's chunk when it would run past ``max_time`` (off where ranks must stay in step)
    shorten_chunks_to_time: bool = True
    #: the fit ended because not even one more sampler step fitted in ``max_time``
    stopped_by_time: bool = False
    #: a checkpoint must hold as many walkers as this strategy runs (off where the pooled walkers are dealt out again)
    resume_needs_same_walkers: bool = True

    def _init_sampling(self, *, walkers: int, steps_per_lightning_step: int, observe_every: int, heldout: str,
                       loss: Any = "auto", vectorize: bool | str = "auto", **positive: int | None) -> None:
        """Check and keep the settings every sampler strategy has; ``positive``: more settings that must be positive
        integers (``None`` skips one)."""
        check_positive(walkers=walkers, steps_per_lightning_step=steps_per_lightning_step,
                       observe_every=observe_every, **positive)
        check_heldout(heldout)
        self.walkers, self.steps_per_lightning_step, self.observe_every = walkers, steps_per_lightning_step, observe_every
        self.heldout, self._loss, self.vectorize = heldout, loss, vectorize
        self._state: Any = None
        self._pending: dict[str, Any] | None = None
        self._last_accepted: torch.Tensor | None = None
        self._clock = budget.StepClock()

    # -- what the Trainer calls -------------------------------------------------------------------------------------

    def setup(self, trainer: lightning.pytorch.Trainer) -> None:
        self._check_trainer(trainer)
        super().setup(trainer)  # the Lightning strategy's (one device, or DDP's process group)

    def _check_trainer(self, trainer: lightning.pytorch.Trainer) -> None:
        module = trainer.lightning_module
        name = type(self).__name__
        if module is not None and not module.automatic_optimization:
            raise ValueError(
                f"{name} replaces the optimizer, so manual optimization (automatic_optimization=False) cannot run."
                " Remove manual optimization from the module (the sampler never calls your optimizers), or train"
                " it with another strategy."
            )
        plugin = self.precision_plugin
        if type(plugin) not in (Precision, DoublePrecision):
            scaler = getattr(plugin, "scaler", None)
            what = "16-bit AMP with a gradient scaler" if scaler is not None else f"precision={trainer.precision!r}"
            raise ValueError(
                f"{name} does not support {what}: a scaler rescales gradients (the sampler's forces) and reduced"
                " precision blurs small loss differences. Use Trainer(precision='32-true') or '64-true'."
            )
        if trainer.gradient_clip_val:
            raise ValueError(
                f"{name} cannot clip gradients (gradient_clip_val={trainer.gradient_clip_val}): clipping would change"
                " the forces and break the sampled distribution. Remove gradient_clip_val from the Trainer."
            )
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(
                f"{name} evaluates full-batch losses, so accumulate_grad_batches={trainer.accumulate_grad_batches}"
                " has no meaning for it. Remove accumulate_grad_batches (the sampler always uses the whole train set)."
            )

    def load_model_state_dict(self, checkpoint: Mapping[str, Any], strict: bool = True) -> None:
        """Before Lightning copies a checkpoint's weights into the module: a module other than the one the checkpoint
        was sampled from (class; parameter names, shapes, dtypes, frozen or sampled) is refused, naming the
        difference (see :mod:`lightning_entropy.core.fingerprint`)."""
        from lightning_entropy.core import fingerprint
        from lightning_entropy.core.walkers import ParameterLayout

        states = checkpoint.get("optimizer_states") or [{}]
        setup = (states[0].get("sampler") or {}).get("setup") if isinstance(states[0], Mapping) else None
        saved = (setup or {}).get("fingerprint", {}).get("model")
        module = self.lightning_module
        if saved is not None and module is not None:
            fingerprint.check_model(saved, fingerprint.of_model(module, ParameterLayout.of(module)))
        super().load_model_state_dict(checkpoint, strict=strict)

    def setup_optimizers(self, trainer: lightning.pytorch.Trainer) -> None:
        params = [p for p in self.lightning_module.parameters() if p.requires_grad]
        self.optimizers = [SamplerOptimizer(params, self)]
        self.lr_scheduler_configs = []

    def on_train_start(self) -> None:
        self._prepare(self.lightning_module.trainer)

    def process_dataloader(self, dataloader: object) -> object:
        """The train loader becomes :class:`SamplerSteps` (one placeholder per Lightning step, no batch fetched);
        the sampler reads the loader itself, once. Other loaders (Lightning's own validation) are left as they are."""
        from lightning.pytorch.trainer.states import RunningStage

        trainer = getattr(self.lightning_module, "_trainer", None) if self.lightning_module is not None else None
        if trainer is not None and trainer.state.stage == RunningStage.TRAINING and not isinstance(dataloader,
                                                                                                      SamplerSteps):
            return SamplerSteps(dataloader)
        return dataloader

    def training_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Runs a chunk of sampler steps (fewer when they would run past ``max_time``); returns a loss for display
        (nothing backpropagates)."""
        steps = self.steps_per_lightning_step
        trainer = self.lightning_module.trainer
        if self.shorten_chunks_to_time:
            # at least one step in all (a landscape needs one); after that, none if even one would pass the cap
            steps = self._clock.steps_for(steps, budget.remaining(trainer), minimum=0 if self.sampler_steps else 1)
            if steps == 0:
                self.stopped_by_time = trainer.should_stop = True  # Lightning ends the fit after this step
                return self._display_loss()
        started = time.perf_counter()
        self.run_chunk(steps)
        self._clock.record(steps, time.perf_counter() - started)
        if self._clock.chunks == 2:  # measured on a warm chunk: how long the rest will take
            self.say_forecast(trainer, measured=True)
        return self._display_loss()

    def say_forecast(self, trainer: lightning.pytorch.Trainer, *, measured: bool) -> None:
        """Say how long the sampling will take (after the second chunk, measured), and warn when ``max_time`` ends
        it before ``max_steps``. Before sampling, from an estimate, only a clear shortfall (under half of the steps)
        is said, as a warning."""
        chunk = self.steps_per_lightning_step
        steps = budget.planned_steps(trainer, chunk)
        if steps is not None and measured:
            steps = max(0, steps - chunk)  # the Lightning step that just ran is not yet counted as done
        text, share = budget.forecast(self._clock.per_step, steps, budget.remaining(trainer), int(self.walkers),
                                      measured=measured)
        if not text or trainer.global_rank != 0:
            return
        if share < (1.0 if measured else 0.5):
            warnings.warn(text, stacklevel=2)
        elif measured:
            inform(text)

    @property
    def sampler_steps(self) -> int:
        """Sampler steps run so far (each Lightning step runs ``steps_per_lightning_step`` of them, or fewer at the
        time cap)."""
        return int(self._state.step) if self._state is not None else 0

    @property
    def walker_parameters(self) -> torch.Tensor:
        """The walkers' current flat parameters ``(W, P)``, in the order of the module's trainable parameters."""
        return self._require().theta

    def _display_loss(self) -> torch.Tensor:
        """The walkers' mean train loss (shown by Lightning; nothing backpropagates)."""
        return self._state.cv[:, 0].exp().mean()

    def backward(self, closure_loss: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return closure_loss  # nothing to backpropagate: the sampler computed its own forces

    # -- shared bookkeeping ----------------------------------------------------------------------------------------

    def _acceptance(self, accepted: torch.Tensor, steps: int) -> torch.Tensor:
        """Fraction of moves accepted over the last ``steps`` steps of all walkers (``accepted``: the running count
        per walker), a device tensor."""
        fraction = (accepted - self._last_accepted).sum() / (steps * self.walkers)
        self._last_accepted = accepted.clone()
        return fraction

    def _require(self) -> Any:
        if self._state is None:
            raise RuntimeError("The walkers do not exist before trainer.fit starts (they start at on_train_start).")
        return self._state

    # -- what a strategy provides ---------------------------------------------------------------------------------

    def _prepare(self, trainer: lightning.pytorch.Trainer) -> None:
        raise NotImplementedError

    def run_chunk(self, steps: int) -> None:
        raise NotImplementedError

    def _sampler_state(self) -> dict[str, Any]:
        """The sampler state of a started fit (see :meth:`sampler_state_dict`)."""
        raise NotImplementedError

    @property
    def sampler_kind(self) -> str:
        """The ``kind`` a checkpoint of this strategy records (a checkpoint of another kind cannot resume here)."""
        raise NotImplementedError

    def _restore(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    # -- checkpoints ----------------------------------------------------------------------------------------------

    def sampler_state_dict(self) -> dict[str, Any]:
        """What the placeholder optimizer's ``state_dict`` carries: the whole sampler state (before the walkers exist:
        the checkpoint's state still waiting for them, or nothing)."""
        if self._state is None:
            return dict(self._pending or {})
        return self._sampler_state()

    def load_sampler_state_dict(self, state: dict[str, Any]) -> None:
        """Check that ``state`` (from :meth:`sampler_state_dict`) fits this strategy, then restore it: now if the
        walkers exist, else once they do (``_prepare`` applies ``self._pending``)."""
        walkers_differ = self.resume_needs_same_walkers and state.get("walkers") != self.walkers
        if state and (state.get("kind") != self.sampler_kind or walkers_differ):
            from lightning_entropy.core.fingerprint import ResumeMismatch

            same = " and walkers" if self.resume_needs_same_walkers else " (the number of ranks and walkers may differ)"
            raise ResumeMismatch(
                f"The checkpoint holds a {state.get('kind')!r} sampler with {state.get('walkers')} walkers; this"
                f" strategy is {self.sampler_kind!r} with {self.walkers} walkers. Resume with the same sampler{same}."
            )
        if self._state is None:
            self._pending = state  # applied once the data and walkers exist (on_train_start)
        else:
            self._restore(state)


class SamplerStrategy(SamplerMixin, SingleDeviceStrategy):
    """A sampler strategy on one device (see :class:`SamplerMixin`).

    Args:
        device: the device; default the Trainer's accelerator device.
    """

    def __init__(self, *, device: torch.device | str | None = None, accelerator=None, checkpoint_io=None,
                 precision_plugin=None) -> None:
        super().__init__(device=device or "cpu", accelerator=accelerator, checkpoint_io=checkpoint_io,
                         precision_plugin=precision_plugin)
        self._device = torch.device(device) if device is not None else None
        self.parallel_devices: list[torch.device] | None = None  # the Trainer fills this from its accelerator

    @property
    def root_device(self) -> torch.device:
        if self._device is not None:
            return self._device
        if self.parallel_devices:
            return torch.device(self.parallel_devices[0])
        return torch.device("cpu")


def check_positive(**values: int | None) -> None:
    """Each value a positive integer (``None``: not given, skipped)."""
    for name, value in values.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{name}={value!r} must be a positive integer.")
