"""The configuration schema of ``lightning-entropy``: dataclasses registered in Hydra's ``ConfigStore``.

The YAML files shipped in :mod:`lightning_entropy.conf` fill these schemas; because every node is a structured config
(struct mode), a misspelt key (``model.widht=3``) or a value of the wrong type (``sampler.walkers=many``) is rejected
by Hydra while it composes the configuration, with a message that names the key, before any work starts. Values that
have the right type but cannot work (``model.width=0``, ``sampler.start=warm``) are rejected by :func:`validate`,
also before any work, with a :class:`ConfigError` that names the key.

Groups (``key=option`` on the command line):

- ``task``: the data and the network (``spiral``, ``spiral_regression``, ``tabular``, ``mnist``, ``embeddings``,
  ``char_lm``, ``modular_arithmetic``, ``cifar_catdog``); sets ``task.*``, ``model.*`` and the task's ``baseline.*``
  optimiser settings.
- ``sampler``: ``wang_landau`` (WLMD, vectorized walkers), ``wang_landau_mc`` (WLMC), ``entropy_md`` (the training
  mode: train the baseline, then MD at its train loss), or ``adam`` / ``sgd`` (the optimiser alone: the run trains and
  reports the baseline only).
- ``logger``: ``none``, ``csv`` (Lightning's CSVLogger in the run directory) or ``wandb`` (offline by default).
- ``trainer``: ``default`` (Lightning Trainer limits and threads).
- ``tuning`` (chosen by itself: ``${task}_${sampler}``, optional): a task's sampler sizes for a CPU, e.g. fewer
  walkers and start steps for the MNIST CNN, so that its defaults finish within the time cap.

Your own model and data (lightning-hydra-template style): ``model._target_=pkg.MyModule`` and
``datamodule._target_=pkg.MyData`` build them with Hydra's ``instantiate``; keys added to the node
(``+model.hidden=32``) are constructor arguments (:mod:`lightning_entropy.cli.instantiate`). Every built-in task
names its own classes the same way.

This module is longer than the 400 lines the package's other modules keep to: it is one concept, the schema of every
config group with its documented fields and the value checks of :func:`validate`, and splitting it would scatter what
a reader looks up together (the schema's dataclasses repeat each other's field shapes for the same reason).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from lightning_entropy.cli.errors import ConfigError
from lightning_entropy.cli.targets import TASK_NAMES, builtin_datamodule, builtin_model

WANG_LANDAU_KINDS = ("wang_landau", "wang_landau_mc")
ENTROPY_MD_KINDS = ("entropy_md",)
#: The box of a Wang-Landau sampler when neither ``sampler.box`` nor ``task.box`` is set (ALGORITHM.md section 2):
#: fan-out scaling for molecular dynamics, one global bound from the first hidden width for Monte Carlo.
DEFAULT_BOX = {"wang_landau": "fan_out", "wang_landau_mc": "first_hidden"}
OPTIMIZER_KINDS = ("adam", "sgd")
LOGGER_KINDS = ("none", "csv", "tensorboard", "wandb")


REQUIRED = "REQUIRED"  # the value of a key that an experiment preset needs from the command line


@dataclass
class TaskConfig:
    """The data set. ``seed`` fixes the split (the train set uses ``seed``, the held-out set ``seed + 1``).

    Attributes:
        name: task name (``spiral``, ``spiral_regression``, ``tabular``, ``mnist``, ``embeddings``, ``char_lm``,
            ``modular_arithmetic``, ``cifar_catdog``).
        n_train: number of train points (``null``: the task's default split); char_lm: windows.
        n_test: number of held-out points (the "test" axis of the landscape; read through ``val_dataloader``).
        noise: standard deviation of the Gaussian noise added to each coordinate (spiral) or to the target (spiral
            regression).
        seed: data seed.
        batch_size: optimiser batch size for the baseline (``null``: full batch); the sampler always uses full
            batches.
        n_points: spiral regression: points in all, split in halves (``null``: 100).
        path: tabular: an .npz (arrays X, y) or .csv table (``null``: scikit-learn's diabetes table); embeddings:
            an .npz with X_train, y_train, X_test, y_test (required).
        target: tabular: the target column of a .csv (default: the last) or the target array of an .npz (``y``).
        train_fraction: modular_arithmetic: the fraction of the ``p^2`` pairs that trains; char_lm: the fraction of
            the text (from its start) that train windows come from (test windows come from the rest).
        modulus: modular_arithmetic: ``p``.
        context: char_lm: characters per input window (the transformer's context length).
        root: cifar_catdog: the data directory (``null``: ``~/.cache/lightning_entropy/cifar10``).
        synthetic: cifar_catdog: generated images of CIFAR's shape instead of CIFAR-10 (no files, no network).
        box: the task's box rule (as ``sampler.box``), used by a Wang-Landau sampler whose ``sampler.box`` is
            ``null``; ``null``: the sampler's default rule.
    """

    name: str = "spiral"
    n_train: Optional[int] = 40
    n_test: Optional[int] = 40
    noise: float = 0.1
    seed: int = 0
    batch_size: Optional[int] = None
    n_points: Optional[int] = None
    path: Optional[str] = None
    target: Optional[str] = None
    train_fraction: Optional[float] = None
    modulus: Optional[int] = None
    context: Optional[int] = None
    root: Optional[str] = None
    synthetic: bool = False
    box: Any = None


#: Tasks whose network is the transformer of :mod:`lightning_entropy.tasks.transformer` (they read ``model.heads``).
TRANSFORMER_TASKS = ("char_lm", "modular_arithmetic")


@dataclass
class ModelConfig:
    """The network: ``depth`` hidden layers of ``width`` units (spiral: ``2 -> width x depth -> 2``, ReLU).

    ``_target_`` is the LightningModule class (each task's yaml names its own). Another class
    (``model._target_=pkg.MyModule``) is built with Hydra's ``instantiate``: the keys added to this node
    (``+model.hidden=32``) are its constructor's arguments, and ``width``/``depth``/``heads`` reach it only if its
    constructor takes arguments of those names.

    MNIST: ``width`` is the CNN's channel count and ``depth`` must be 5 (its fixed conv layers). Transformers
    (char_lm, modular_arithmetic): ``width`` is the model width, ``depth`` the number of blocks and ``heads`` the
    attention heads (it must divide ``width``; ``null`` on the other tasks). cifar_catdog: ``width`` is the first
    stage's channels (6: widths 6-12-24-48) and ``depth`` the residual blocks per stage.
    """

    _target_: Optional[str] = None
    width: int = 6
    depth: int = 3
    heads: Optional[int] = None


@dataclass
class DataModuleConfig:
    """The LightningDataModule class (``_target_``; each task's yaml names its own, built from ``task.*``). Another
    class (``datamodule._target_=pkg.MyData``, with ``model._target_`` too) is built with Hydra's ``instantiate``:
    the keys added to this node (``+datamodule.batch_size=64``) are its constructor's arguments."""

    _target_: Optional[str] = None


@dataclass
class SamplerConfig:
    """Common base of the ``sampler`` group: ``kind`` says what runs."""

    kind: str = MISSING


@dataclass
class WangLandauConfig(SamplerConfig):
    """Arguments of :class:`lightning_entropy.WangLandauStrategy` (see its docstring for units), with its defaults
    (``tests/test_cli.py`` checks every field against the signature); the command line's own choices, such as the main
    job's 256 walkers started by Adam, are in ``conf/sampler/*.yaml``, visibly as overrides.

    ``kind`` is ``wang_landau`` (molecular dynamics) or ``wang_landau_mc`` (Monte Carlo). ``schedule`` is a mapping
    such as ``{name: ramp_plateau_decay, f_max: 10.0, t_rise: 0, t_drop: 4000, t_off: 3000}`` (``null``: the
    strategy's default). ``box`` is a positive float or a rule name (``fan_out``, ``fan_out:3``, ``first_hidden``);
    ``null`` takes the task's rule (``task.box``), else :data:`DEFAULT_BOX` of the sampler kind.
    ``ranges`` and ``window`` are one ``[lo, hi]`` per axis in CV units (``null``: automatic ranges / no soft wall);
    a ``null`` end of ``ranges`` (``[[-2.4, null]]``) is found from the starts and the other kept, and a ``null``
    entry of ``window`` leaves that axis without a soft wall.
    """

    kind: str = "wang_landau"
    walkers: int = 16
    box: Any = None  # the command line's rule: null takes task.box, else DEFAULT_BOX (the strategy's is "fan_out")
    seed: int = 0
    variables: Optional[List[str]] = None
    ranges: Optional[List[Any]] = None
    bin_width: Optional[List[float]] = None
    range_margin: Optional[float] = None
    kernel_sigma: Optional[float] = None
    window: Optional[List[Any]] = None
    wall_strength: float = 0.0
    fill: Optional[str] = None  # visit (replica-exchange WL) or step (the reference study's); null: step if a schedule
    replicas: Any = "auto"
    windows: Any = "auto"
    window_placement: str = "crossing"
    production: Optional[float] = None
    refine: Optional[float] = None
    log_f0: float = 0.1
    exchange_every: int = 10
    schedule: Optional[Any] = None
    dt: float = 0.02
    friction: float = 0.01
    metropolis: bool = True
    mass: str = "box"
    step_size: float = 0.1
    adapt_steps: int = 50_000
    adapt_every: int = 1000
    steps_per_lightning_step: int = 100
    start: str = "module"
    start_steps: int = 300
    start_lr: float = 1e-2
    start_budget: float = 0.25  # with trainer.max_time: the largest share of the time the start runs may take
    observables: Optional[List[str]] = None
    observe_every: int = 10
    heldout: str = "val"
    accuracy_slope: float = 5.0
    accuracy_axis: str = "linear"
    vectorize: Any = "auto"
    threads: Any = "auto"
    sync_every: int = 1  # with trainer.devices > 1: Lightning steps between landscape synchronisations
    snapshot_every: Optional[int] = None  # sampler steps between convergence snapshots (null: a twentieth of the run)
    groups: Optional[int] = None  # walker groups for the readouts' error bars (null: min(8, walkers))


@dataclass
class EntropyMDConfig(SamplerConfig):
    """Arguments of :class:`lightning_entropy.EntropyMDStrategy` (see its docstring for units), with its defaults;
    ``conf/sampler/entropy_md.yaml`` overrides some (32 walkers).

    ``box`` is ``null`` (the smallest ``fan_out:c``, integer ``c >= 2``, that holds the trained weights), a positive
    float or a rule name. ``target`` is the ln L_train to hold (``null``: the trained baseline's). ``strength`` is the
    restraint constant k in 1/nats² (width 1/sqrt(k) nats).
    """

    kind: str = "entropy_md"
    walkers: int = 16
    box: Any = None
    seed: int = 0
    target: Optional[float] = None
    strength: float = 1e4
    hold: str = "mean"
    dt: float = 1e-3
    adapt_steps: int = 2000
    friction: float = 0.01
    metropolis: bool = True
    mass: str = "box"
    steps_per_lightning_step: int = 100
    observe_every: int = 10
    select: str = "closest"
    heldout: str = "val"
    max_start_shift: float = 1.0
    vectorize: Any = "auto"


@dataclass
class OptimizerConfig(SamplerConfig):
    """The optimiser alone (``kind``: ``adam`` or ``sgd``); runs use ``baseline.seeds`` and ``baseline.epochs``."""

    kind: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.0


@dataclass
class BaselineConfig:
    """The optimiser baseline drawn over the landscape (ALGORITHM.md section 7).

    Attributes:
        enabled: train the baseline at all (with a Wang-Landau sampler).
        optimizer: ``adam`` or ``sgd`` (with a Wang-Landau sampler; ``sampler=adam|sgd`` uses the sampler's).
        lr: learning rate; ``momentum``: SGD momentum.
        seeds: one run per seed (initial weights, shuffling).
        epochs: epochs per run (full batch by default: one optimiser step per epoch).
        every_n_epochs: record (ln L_train, test metric) every this many epochs.
        parallel: train the baseline in a second process while the sampler runs (uses a second CPU core).
        threads: torch threads of that process.
    """

    enabled: bool = True
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.0
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 5])
    epochs: int = 3000
    every_n_epochs: int = 1
    parallel: bool = True
    threads: int = 1


@dataclass
class LoggerConfig:
    """Where Lightning logs go: ``kind`` ``none``, ``csv``, ``tensorboard`` or ``wandb``.

    ``save_dir`` defaults to the run directory; ``project``/``name``/``mode`` are W&B settings (``mode: offline``
    needs no network; ``wandb sync`` uploads later).
    """

    kind: str = "none"
    save_dir: Optional[str] = None
    project: str = "lightning-entropy"
    name: Optional[str] = None
    mode: str = "offline"


@dataclass
class TrainerConfig:
    """Lightning Trainer settings of the sampler run.

    Attributes:
        max_steps: Lightning steps; each runs ``sampler.steps_per_lightning_step`` sampler steps on every walker.
        max_time: the job's wall-clock cap ``"DD:HH:MM:SS"`` (``null``: none), counted from the job's start: the
            start phase, the sampler and the baseline beside it stop in time for the report to be written within
            it. A Lightning step runs fewer sampler steps when all of them would pass the cap.
        accelerator: ``cpu``, ``gpu``, ``auto``, ...
        threads: ``torch.set_num_threads`` for the main process (``0``, the default: leave torch's default). The
            sampler's chunks choose their own threads within it (``sampler.threads=auto``: the faster of one thread
            and this setting, timed as the run goes), so a busy machine costs a slow chunk now and then, not a
            slower run; a fixed ``1`` gives up the second core once the baseline process is done (the main job
            made 14 % fewer steps on 2 cores).
        progress_bar: show Lightning's progress bar.
        log_every_n_steps: Lightning's logging interval (Lightning steps).
        Any other argument of ``lightning.pytorch.Trainer`` is passed through to the sampler's Trainer when given with
        Hydra's append syntax, e.g. ``+trainer.deterministic=true`` or ``+trainer.precision=64-true``; a name that is
        not a Trainer argument, or one the job sets itself (``logger``, ``callbacks``, ...), is an error.
        devices: processes (CPU) or GPUs; more than one runs ``wang_landau_ddp``: ``sampler.walkers`` walkers on
            each, all depositing into one landscape (synchronised every ``sampler.sync_every`` Lightning steps).
        checkpoint_minutes: minutes of sampling between checkpoints (``checkpoint.ckpt`` in the run directory,
            written atomically at a Lightning-step boundary; ``0``: only when interrupted). Resume with
            ``resume=<run dir>``.
    """

    max_steps: int = 120
    max_time: Optional[str] = "00:00:03:45"
    accelerator: str = "cpu"
    threads: int = 0
    progress_bar: bool = True
    log_every_n_steps: int = 10
    devices: int = 1
    checkpoint_minutes: float = 10.0


@dataclass
class PlotConfig:
    """The figure: ``exclude`` rows of the test axis ignored at each end by the max-S line; ``dpi``."""

    exclude: int = 1
    dpi: int = 130


@dataclass
class AdvantageConfig:
    """summary.json's ``mean_advantage``: ``range`` ``[lo, hi]`` in the landscape's x units (nats of ln L_train),
    either end ``null`` (open), keeps the mean to the bins whose centres lie in it; ``null``: every bin the landscape
    and the baseline both cover. The advantage changes along x, so two runs compare by their means only over the
    same bins; a fixed range gives them (a run that covers less of it says so in the advantage's notes)."""

    range: Optional[List[Optional[float]]] = None


@dataclass
class Config:
    """The whole configuration of one ``lightning-entropy`` run."""

    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    datamodule: DataModuleConfig = field(default_factory=DataModuleConfig)
    sampler: SamplerConfig = MISSING
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # a plain mapping, not the TrainerConfig dataclass, so that ``+trainer.<any Trainer argument>=...`` composes;
    # validate() type-checks the TrainerConfig keys and checks the others against Trainer's signature
    trainer: Any = field(default_factory=lambda: dataclasses.asdict(TrainerConfig()))
    plot: PlotConfig = field(default_factory=PlotConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    # a run directory whose checkpoint.ckpt the sampler resumes from (the same overrides as that run; null: a new run)
    resume: Optional[str] = None


def register_configs(cs: ConfigStore | None = None) -> None:
    """Store the schemas in Hydra's ``ConfigStore`` (idempotent); the YAML files extend them."""
    cs = cs or ConfigStore.instance()
    cs.store(name="lightning_entropy_schema", node=Config)
    cs.store(group="schema/sampler", name="wang_landau", node=WangLandauConfig)
    cs.store(group="schema/sampler", name="optimizer", node=OptimizerConfig)
    cs.store(group="schema/sampler", name="entropy_md", node=EntropyMDConfig)


# -- validation of values (types and keys are checked by Hydra) --------------------------------------------------------


def _positive_int(cfg: DictConfig, key: str, minimum: int = 1) -> None:
    value = OmegaConf.select(cfg, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{key}={value!r}: must be an integer >= {minimum}.")


def _positive_float(cfg: DictConfig, key: str, *, upper: float | None = None) -> None:
    value = OmegaConf.select(cfg, key)
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0 and (upper is None or value <= upper)):
        bound = f" and <= {upper}" if upper is not None else ""
        raise ConfigError(f"{key}={value!r}: must be a positive number{bound}.")


def _choice(cfg: DictConfig, key: str, options: tuple[str, ...]) -> None:
    value = OmegaConf.select(cfg, key)
    if value not in options:
        raise ConfigError(f"{key}={value!r}: use one of {', '.join(options)}.")


def _unknown_keys(node: Any, schema: type, prefix: str, open_nodes: tuple[str, ...] = ()) -> None:
    """Keys added around the schema (``+model.widht=3`` is accepted by Hydra's append syntax) are errors too."""
    import dataclasses

    if not dataclasses.is_dataclass(schema) or not isinstance(node, DictConfig):
        return
    fields = {f.name: f for f in dataclasses.fields(schema)}
    node_type = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(node_type) and issubclass(node_type, schema):
        fields = {f.name: f for f in dataclasses.fields(node_type)}
    for key in node.keys():
        if key not in fields and prefix in open_nodes:
            continue  # an argument of a class of one's own (checked against its constructor when it is built)
        if key not in fields:
            raise ConfigError(f"{prefix}{key}: unknown key (known keys of {prefix.rstrip('.') or 'the config'}:"
                              f" {', '.join(fields)}).")
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            child_type = OmegaConf.get_type(child)
            if dataclasses.is_dataclass(child_type):
                _unknown_keys(child, child_type, f"{prefix}{key}.", open_nodes)


#: Trainer arguments the job sets itself, and the key that controls each where there is one.
JOB_TRAINER_ARGS = {"strategy": "sampler", "logger": "logger", "callbacks": None, "default_root_dir": "hydra.run.dir",
                    "enable_checkpointing": "trainer.checkpoint_minutes", "enable_model_summary": None, "num_sanity_val_steps": None,
                    "limit_val_batches": None, "enable_progress_bar": "trainer.progress_bar"}


def trainer_extras(cfg: DictConfig) -> dict[str, Any]:
    """The ``trainer.*`` keys that are passed to ``lightning.pytorch.Trainer`` as they are (not TrainerConfig's)."""
    known = {f.name for f in dataclasses.fields(TrainerConfig)}
    node = OmegaConf.to_container(cfg.trainer, resolve=True)
    return {k: v for k, v in node.items() if k not in known}


def _trainer(cfg: DictConfig) -> None:
    import difflib
    import inspect

    from lightning.pytorch import Trainer
    from omegaconf.errors import ValidationError

    typed = OmegaConf.structured(TrainerConfig)
    known = set(typed.keys())
    accepted = set(inspect.signature(Trainer.__init__).parameters) - {"self"}
    for key in cfg.trainer.keys():
        if key in known:
            try:
                typed[key] = cfg.trainer[key]
            except ValidationError as err:
                raise ConfigError(f"trainer.{key}={cfg.trainer[key]!r}: {str(err.msg).splitlines()[0]}") from None
        elif key in JOB_TRAINER_ARGS:
            where = JOB_TRAINER_ARGS[key]
            raise ConfigError(f"trainer.{key}: the job sets this Trainer argument itself"
                              + (f"; use {where} instead." if where else "; remove it."))
        elif key not in accepted:
            close = difflib.get_close_matches(str(key), sorted(known | accepted), n=1)
            hint = f" Did you mean trainer.{close[0]}?" if close else ""
            raise ConfigError(f"trainer.{key}: not an argument of lightning.pytorch.Trainer.{hint}")


def validate(cfg: DictConfig) -> None:
    """Reject unknown keys and values that have the right type but cannot work, naming the key.

    Raises:
        ConfigError: with the dotted key (``model.width``) in the message.
    """
    own = (() if builtin_model(cfg) else ("model.",)) + (() if builtin_datamodule(cfg) else ("datamodule.",))
    _unknown_keys(cfg, Config, "", own)
    if cfg.task.path == REQUIRED:
        raise ConfigError(f"task.path: this preset needs a data file that is not bundled with the package"
                          f" ({cfg.task.name} task); give it on the command line, e.g."
                          " task.path=../shared/data/<file>.npz.")
    _choice(cfg, "task.name", TASK_NAMES)
    for key in ("task.n_train", "task.n_test"):
        if OmegaConf.select(cfg, key) is not None:
            _positive_int(cfg, key, 2)
    if cfg.task.n_points is not None:
        _positive_int(cfg, "task.n_points", 2)
    if cfg.task.batch_size is not None:
        _positive_int(cfg, "task.batch_size")
    if not (math.isfinite(cfg.task.noise) and cfg.task.noise >= 0):
        raise ConfigError(f"task.noise={cfg.task.noise!r}: must be a finite number >= 0.")
    _positive_int(cfg, "model.width")
    _positive_int(cfg, "model.depth")
    for key in ("model._target_", "datamodule._target_"):
        value = OmegaConf.select(cfg, key)
        if value is not None and not (isinstance(value, str) and value.strip() and "." in value):
            raise ConfigError(f"{key}={value!r}: give the import path of a class, e.g. {key}=my_package.MyModule.")
    if cfg.task.train_fraction is not None:
        value = cfg.task.train_fraction
        if not (math.isfinite(value) and 0 < value < 1):
            raise ConfigError(f"task.train_fraction={value!r}: must be between 0 and 1 (exclusive).")
    if cfg.task.modulus is not None:
        _positive_int(cfg, "task.modulus", 2)
    if cfg.task.context is not None:
        _positive_int(cfg, "task.context")
    if cfg.task.box is not None:
        from lightning_entropy.core.box import Box

        value = OmegaConf.to_container(cfg.task.box) if OmegaConf.is_config(cfg.task.box) else cfg.task.box
        try:
            Box.parse(value)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"task.box={value!r}: {err}") from None
    if cfg.model.heads is not None and builtin_model(cfg):  # a model of one's own may take heads as it likes
        if cfg.task.name not in TRANSFORMER_TASKS:
            raise ConfigError(f"model.heads={cfg.model.heads!r}: only the transformer tasks"
                              f" ({', '.join(TRANSFORMER_TASKS)}) have attention heads; use model.heads=null.")
        _positive_int(cfg, "model.heads")
        if cfg.model.width % cfg.model.heads:
            raise ConfigError(f"model.heads={cfg.model.heads}: must divide model.width={cfg.model.width}.")
    _choice(cfg, "sampler.kind", WANG_LANDAU_KINDS + ENTROPY_MD_KINDS + OPTIMIZER_KINDS)
    kind = cfg.sampler.kind
    if kind in ENTROPY_MD_KINDS:
        _validate_entropy_md(cfg)
    elif kind in WANG_LANDAU_KINDS:
        if "walkers" not in cfg.sampler:
            raise ConfigError(
                f"sampler.kind={kind!r} needs the Wang-Landau settings: choose the group option sampler={kind}"
                " instead of overriding sampler.kind."
            )
        # every value of the node is checked once, by the strategy's constructor
        # (lightning_entropy.cli.build.make_strategy re-raises its error naming sampler.<key>)
    else:
        if "lr" not in cfg.sampler:
            raise ConfigError(
                f"sampler.kind={kind!r} is an optimiser: choose the group option sampler={kind} instead of"
                " overriding sampler.kind."
            )
        _positive_float(cfg, "sampler.lr")
        if not 0 <= cfg.sampler.momentum < 1:
            raise ConfigError(f"sampler.momentum={cfg.sampler.momentum!r}: must be in [0, 1).")
    _choice(cfg, "baseline.optimizer", OPTIMIZER_KINDS)
    if kind in ENTROPY_MD_KINDS and not cfg.baseline.seeds:
        raise ConfigError("baseline.seeds=[]: sampler=entropy_md starts from the baseline trained with the first seed;"
                          " give at least one seed.")
    _positive_float(cfg, "baseline.lr")
    if not 0 <= cfg.baseline.momentum < 1:
        raise ConfigError(f"baseline.momentum={cfg.baseline.momentum!r}: must be in [0, 1).")
    _positive_int(cfg, "baseline.epochs")
    _positive_int(cfg, "baseline.every_n_epochs")
    _positive_int(cfg, "baseline.threads", 0)
    if (cfg.baseline.enabled or kind in OPTIMIZER_KINDS) and len(cfg.baseline.seeds) == 0:
        raise ConfigError("baseline.seeds=[]: give at least one seed (or baseline.enabled=false).")
    if len(set(cfg.baseline.seeds)) != len(cfg.baseline.seeds):
        raise ConfigError(f"baseline.seeds={list(cfg.baseline.seeds)!r}: seeds must be distinct.")
    _choice(cfg, "logger.kind", LOGGER_KINDS)
    _choice(cfg, "logger.mode", ("offline", "online", "disabled"))
    _trainer(cfg)
    _positive_int(cfg, "trainer.max_steps")
    _positive_int(cfg, "trainer.threads", 0)
    _positive_int(cfg, "trainer.log_every_n_steps")
    _positive_int(cfg, "trainer.devices")
    if cfg.trainer.devices > 1 and cfg.sampler.kind != "wang_landau":
        raise ConfigError(f"trainer.devices={cfg.trainer.devices}: several processes share one landscape only with"
                          f" sampler=wang_landau (WLMD), not sampler={cfg.sampler.kind}; use trainer.devices=1.")
    if cfg.trainer.max_time is not None:
        parts = str(cfg.trainer.max_time).split(":")
        if len(parts) != 4 or not all(p.isdigit() for p in parts):
            raise ConfigError(f"trainer.max_time={cfg.trainer.max_time!r}: use 'DD:HH:MM:SS' (e.g. '00:00:04:00') or null.")
    _positive_int(cfg, "plot.exclude", 0)
    _positive_int(cfg, "plot.dpi")
    span = cfg.advantage.range
    if span is not None:
        ends = list(span)
        if (len(ends) != 2 or any(v is not None and not math.isfinite(v) for v in ends)
                or (None not in ends and not ends[0] < ends[1])):
            raise ConfigError(f"advantage.range={ends!r}: give [lo, hi] with lo < hi in the landscape's x units"
                              " (e.g. [-2.8, null]; null leaves an end open), or advantage.range=null for every bin.")


def _validate_entropy_md(cfg: DictConfig) -> None:
    """Every value of the ``entropy_md`` node is checked once, by :class:`~lightning_entropy.EntropyMDStrategy`'s
    constructor (:func:`lightning_entropy.cli.build.make_strategy` names the key)."""
    if "strength" not in cfg.sampler:
        raise ConfigError("sampler.kind='entropy_md' needs its settings: choose the group option sampler=entropy_md"
                          " instead of overriding sampler.kind.")
