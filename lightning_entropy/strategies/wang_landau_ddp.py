"""``WangLandauDDPStrategy``: Wang-Landau walkers spread over DDP processes that share one landscape.

``Trainer(strategy="wang_landau_ddp", accelerator="cpu", devices=2)`` (gloo) or ``accelerator="gpu", devices=4``
(nccl) runs one process per device. Lightning's DDP process group is used, but the module is never wrapped in
``DistributedDataParallel``: nothing is averaged between ranks except the landscape.

How the ranks cooperate (multiple-walker Wang-Landau):

- Every rank runs its own ``walkers`` vectorized walkers on the full train and held-out sets, seeded with
  ``seed + 1_000_003 * rank`` (rank 0 uses ``seed`` itself, so it starts like the single-process run with that seed).
- Each rank deposits into its local copy of the landscape during a chunk of ``steps_per_lightning_step`` sampler
  steps (the single-process hot loop, untouched). Every ``sync_every`` chunks the ranks all-reduce what they
  added since the last synchronisation (the landscape's accumulators: bias, visits, observable sums, group statistics,
  walker steps, as one float64 buffer, ``Landscape.accumulator_vector``) and every
  rank sets its copy to the shared base plus the summed changes. Between synchronisations a rank's walkers feel
  the shared landscape plus their own rank's recent deposits.
- The WL factor keeps its meaning: ``f_t`` is the total deposit of one sampler step, shared by all walkers of all
  ranks. Each rank therefore deposits ``f_t / N`` per step (``N`` ranks), ``f_t / (N W)`` per walker, so N ranks of
  W walkers deposit exactly like one process of ``N W`` walkers. ``t`` counts sampler steps (each moves every walker
  of every rank once): the global step count, identical on all ranks because all ranks run the same chunks.
- Schedules that read the histogram (flatness) decide right after a synchronisation, on the shared landscape, so
  every rank takes the same decision; grid ranges found automatically are the union over the ranks.
- Checkpoints (written by rank 0) hold the shared landscape and every rank's walkers, gathered in rank order. A
  checkpoint resumes exactly on the same number of ranks and walkers per rank; on any other layout the pooled
  walkers are dealt out again (rank ``r`` takes walkers ``r W ... r W + W - 1`` of the pool, cyclically: a larger
  run repeats walkers, which then diverge through their own noise; a smaller one leaves the rest out) with fresh
  random streams. A single-process ``WangLandauStrategy`` checkpoint resumes here the same way, and a DDP checkpoint
  resumes on ``WangLandauStrategy(walkers=N * W)``.

After a spawned fit the main process holds the shared landscape (``strategy.landscape``) and all walkers
(``strategy.walker_parameters``, ``(N W, P)`` in rank order), sent back by rank 0. ``sampler="mc"`` goes through the
same code (not covered by the tests). ``chunk_seconds`` and ``sync_seconds`` add up each rank's host time in sampler
chunks and in synchronisations (which includes waiting for the slowest rank); on GPUs the chunk time is launch time
unless something synchronises. The pieces the ranks share apart from the strategy (seeds, the schedule's per-rank
share, dealing pooled walkers, the launcher) are in :mod:`lightning_entropy.strategies.ranks`.
"""

from __future__ import annotations

import inspect
import time
import warnings
from datetime import timedelta
from typing import Any

import lightning
import torch
import torch.distributed as dist
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from lightning_entropy.core import round_trips
from lightning_entropy.core.fingerprint import ResumeMismatch
from lightning_entropy.core.landscape import Landscape
from lightning_entropy.core.step_run import StepRun
from lightning_entropy.strategies.base import check_positive
from lightning_entropy.strategies.ranks import RANK_SEED_STRIDE, RankShare, SamplerLauncher, deal, on_cpu
from lightning_entropy.strategies.sampling import WangLandauSampling
from lightning_entropy.strategies.wang_landau import LIGHTNING_ARGUMENTS, STATES, WangLandauStrategy

class WangLandauDDPStrategy(WangLandauSampling, DDPStrategy):
    """:class:`~lightning_entropy.WangLandauStrategy` on several processes (DDP) sharing one landscape.

    Composed of the Wang-Landau sampling (:class:`~lightning_entropy.strategies.sampling.WangLandauSampling`) and
    Lightning's ``DDPStrategy``: the process group, devices, collectives and launch are DDP's own.

    Every argument of :class:`~lightning_entropy.WangLandauStrategy` applies per rank (``walkers`` is the number of
    walkers of EACH rank; ``schedule`` keeps its meaning for the whole run: nats per sampler step shared by all
    ``N * walkers`` walkers), with its defaults, except ``device``: each rank uses its own device of the Trainer's
    accelerator.

    Args:
        sync_every: synchronise the landscape every this many Lightning steps (chunks of
            ``steps_per_lightning_step`` sampler steps). One all-reduce of ``(3 + 2k + g (3 + k)) * bins + 1``
            float64 values per synchronisation (``k`` observables, ``g`` walker groups). Larger values communicate
            less; between synchronisations each rank feels only its own recent deposits, which delays the other
            ranks' filling by up to
            ``sync_every * steps_per_lightning_step`` steps (a staleness the reference study ran with at 1e4-1e6).
        start_method: ``"spawn"`` (default: works from scripts, pytest and Hydra; needs a ``__main__`` guard in
            scripts), ``"fork"``/``"forkserver"``, or ``"popen"`` (Lightning re-runs the script per rank). Processes
            started by a cluster (Slurm ``srun``, ``torchrun``) are used as they are.
        process_group_backend: ``None`` picks ``"gloo"`` on CPU and ``"nccl"`` on GPUs.
        timeout: collective timeout.
        **kwargs: the arguments of :class:`~lightning_entropy.WangLandauStrategy`.
    """

    strategy_name = "wang_landau_ddp"
    shorten_chunks_to_time = False  # every rank runs the same chunks between synchronisations; the cap is checked
    # between Lightning steps (Lightning's Timer broadcasts rank 0's decision)
    resume_needs_same_walkers = False  # the pooled walkers are dealt out again on another layout

    def __init__(
        self,
        *,
        sync_every: int = 1,
        parallel_devices: list[torch.device] | None = None,
        cluster_environment=None,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
        start_method: str = "spawn",
        accelerator=None,
        checkpoint_io=None,
        precision_plugin=None,
        **kwargs: Any,
    ) -> None:
        if "device" in kwargs:
            raise ValueError(
                "WangLandauDDPStrategy takes no `device`: every rank uses its own device of the Trainer's accelerator."
                " Choose devices with Trainer(accelerator=..., devices=...)."
            )
        check_positive(sync_every=sync_every)
        if start_method not in ("spawn", "fork", "forkserver", "popen"):
            raise ValueError(f"start_method={start_method!r}: use 'spawn', 'fork', 'forkserver' or 'popen'.")
        if kwargs.get("fill", "step") != "step":
            raise ValueError(
                f"fill={kwargs['fill']!r}: wang_landau_ddp shares one landscape across ranks with the reference"
                " study's per-step factor (fill='step'); windows and replicas run on one process"
                " (strategy='wang_landau'), where all walkers are one vectorized batch."
            )
        settings = sampling_defaults()
        unknown = sorted(set(kwargs) - set(settings))
        if unknown:
            raise TypeError(f"WangLandauDDPStrategy got unexpected arguments {unknown}: see WangLandauStrategy's.")
        settings.update(kwargs, fill="step")
        super().__init__(accelerator=accelerator, parallel_devices=parallel_devices,
                         cluster_environment=cluster_environment, checkpoint_io=checkpoint_io,
                         precision_plugin=precision_plugin, process_group_backend=process_group_backend,
                         timeout=timeout, start_method=start_method)
        self._init_wang_landau(**settings)
        self.start_method = start_method
        self.sync_every = sync_every
        self.base_seed = self.seed
        self._base: torch.Tensor | None = None
        self._chunks_since_sync = 0
        self._final: dict[str, Any] | None = None
        self._adopted = False
        self.sync_seconds = 0.0  # host time spent in synchronisations (communication and waiting for other ranks)
        self.chunk_seconds = 0.0  # host time spent in sampler chunks (compute)

    # -- process group -------------------------------------------------------------------------------------------------

    def _configure_launcher(self) -> None:
        """Processes started by a cluster, or ``popen``: Lightning's script launcher; otherwise a multiprocessing
        launcher that also hands rank 0's sampler state back (:class:`SamplerLauncher`)."""
        assert self.cluster_environment is not None
        if self.cluster_environment.creates_processes_externally or self.start_method == "popen":
            self._launcher = _SubprocessScriptLauncher(self.cluster_environment, self.num_processes, self.num_nodes)
        else:
            self._launcher = SamplerLauncher(self, start_method=self.start_method)

    def configure_ddp(self) -> None:
        """No ``DistributedDataParallel``: the ranks share the landscape, never gradients."""

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        """Every rank reads the whole data set: the ``DistributedSampler`` Lightning puts into the loaders holds one
        replica (each rank evaluates its own walkers on all samples, never on a shard)."""
        return {"num_replicas": 1, "rank": 0}

    @property
    def _distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    @property
    def ranks(self) -> int:
        """Number of processes sampling together."""
        return dist.get_world_size() if self._distributed else 1

    # -- sampler -------------------------------------------------------------------------------------------------------

    def _prepare(self, trainer: lightning.pytorch.Trainer) -> None:
        self.seed = self.base_seed + RANK_SEED_STRIDE * self.global_rank
        self._chunks_since_sync = 0
        super()._prepare(trainer)
        self._base = self._landscape.accumulator_vector()

    def _step_run(self, sampler, theta0: torch.Tensor, x_range) -> StepRun:
        """Each rank deposits ``f_t / N`` per step and decides nothing from the histogram inside a chunk (the real
        schedule's ``update`` runs after each synchronisation); its chunks keep torch's thread setting."""
        return StepRun(sampler, theta0, schedule=RankShare(self.schedule, self.ranks), seed=self.seed + 1,
                       x_range=x_range, observe_every=self.observe_every, threads=None)

    def _shared_ranges(self, ranges: list[tuple[float, float]]) -> list[tuple[float, float]]:
        """The union of the ranks' automatic ranges, so that every rank builds the same grid."""
        if not self._distributed:
            return ranges
        lo = torch.tensor([r[0] for r in ranges], dtype=torch.float64, device=self.root_device)
        hi = torch.tensor([r[1] for r in ranges], dtype=torch.float64, device=self.root_device)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        return list(zip(lo.tolist(), hi.tolist()))

    def _metadata_extra(self) -> dict[str, Any]:
        return {"walkers": self.walkers * self.ranks, "walkers_per_rank": self.walkers, "ranks": self.ranks,
                "sync_every": self.sync_every, "seed": self.base_seed}

    def run_chunk(self, steps: int) -> None:
        """Run ``steps`` sampler steps on this rank's walkers (depositing ``f_t / N`` per step), synchronise the
        landscape every ``sync_every`` chunks, update the schedule on the shared landscape, log."""
        if self._state is None:
            self._prepare(self.lightning_module.trainer)
        start = time.perf_counter()
        self._run.chunk(steps)
        self._state = self._run.state
        self.chunk_seconds += time.perf_counter() - start
        self._chunks_since_sync += 1
        if self._chunks_since_sync >= self.sync_every:
            self.sync_landscape()
            run = self._run
            run.schedule_state = self.schedule.update(run.schedule_state, self._landscape, self._state.step)
            if self._state.step >= self._next_snapshot:  # on the shared landscape: the same entry on every rank
                self.snapshot()
        self._layout.load_into(self.lightning_module, self._state.theta[0])
        self._log_progress(steps)

    # -- the shared landscape ----------------------------------------------------------------------------------------

    def _round_trip_counts(self) -> tuple[float, float]:
        trips = self._round_trips.round_trips
        counts = torch.stack([trips.sum(), (trips > 0).sum()]).to(torch.float64)
        if self._distributed:
            dist.all_reduce(counts)
        return float(counts[0]), float(counts[1])

    def sync_landscape(self) -> None:
        """All ranks: sum what every rank deposited since the last synchronisation into the shared landscape.

        A collective: every rank must call it at the same point (the strategy does, after every ``sync_every``
        chunks, before checkpoints and at the end of training).
        """
        start = time.perf_counter()
        current = self._landscape.accumulator_vector()
        if self._distributed:
            delta = current - self._base
            dist.all_reduce(delta)
            current = self._base + delta
            self._landscape.load_accumulator_vector(current)
        self._base = current
        self._chunks_since_sync = 0
        self.sync_seconds += time.perf_counter() - start

    def on_train_end(self) -> None:
        """All ranks: final synchronisation (and snapshot, on the shared landscape); rank 0 keeps the gathered state
        for the main process."""
        if self._state is not None and self._chunks_since_sync:
            self.sync_landscape()
        super().on_train_end()
        if self._state is None:
            return
        final = self._gathered_state_dict()
        self._final = final if self.global_rank == 0 else None

    # -- checkpoints -------------------------------------------------------------------------------------------------

    def _sampler_state(self) -> dict[str, Any]:
        """All ranks (Lightning builds checkpoints on every rank, rank 0 writes them): synchronise, gather walkers. The
        main process after a spawned fit returns what rank 0 sent."""
        if self._adopted:
            return dict(self._final or {})
        if self._chunks_since_sync:
            self.sync_landscape()
        return self._gathered_state_dict()

    def _gathered_state_dict(self) -> dict[str, Any]:
        run = self._run
        local = on_cpu({"state": self._state.state_dict(), "last_accepted": self._last_accepted,
                      "round_trips": self._round_trips.state_dict()})
        parts = [local]
        if self._distributed:
            parts = [None] * self.ranks
            dist.all_gather_object(parts, local)
        pooled = self._kind.state_type.pool([p["state"] for p in parts])
        return {
            "kind": self.sampler,
            "walkers": sum(len(p["last_accepted"]) for p in parts),
            "state": pooled,
            "landscape": self._landscape.state_dict(),
            "schedule": {k: v.clone() for k, v in run.schedule_state.items()},
            "last_accepted": torch.cat([p["last_accepted"] for p in parts]),
            "round_trips": {**parts[0]["round_trips"],
                            **{k: torch.cat([p["round_trips"][k] for p in parts]) for k in ("last_end", "crossings")}},
            "next_snapshot": self._next_snapshot,
            "setup": self.setup_record,
            "ddp": {"ranks": len(parts), "walkers_per_rank": self.walkers, "rngs": [p["state"]["rng"] for p in parts],
                    "seed": self.base_seed, "sync_every": self.sync_every},
        }

    def _rank_walkers(self, state: dict[str, Any]) -> tuple[torch.Tensor, bool]:
        """Indices of this rank's walkers in the checkpoint's pool, and whether the layout (ranks, walkers per rank)
        is the checkpoint's (an exact resume) or the pool is dealt out again."""
        ddp = state.get("ddp") or {}
        rank, walkers = self.global_rank, self.walkers
        if ddp.get("ranks") == self.ranks and ddp.get("walkers_per_rank") == walkers:
            return torch.arange(rank * walkers, (rank + 1) * walkers), True
        return deal(int(state["walkers"]), rank, walkers), False

    def _resumed_walkers(self, state: dict[str, Any]) -> torch.Tensor:
        if "run" in state:
            raise ResumeMismatch(
                "The checkpoint was written by strategy='wang_landau' with fill='visit' (windows and replicas on one"
                " process); wang_landau_ddp samples one shared landscape with fill='step'. Resume it with"
                " strategy='wang_landau' (and the same fill, replicas and windows), or start a new run."
            )
        index, _ = self._rank_walkers(state)
        return state["state"]["theta"][index]

    def _restore(self, state: dict[str, Any]) -> None:
        device = self.root_device
        pooled, total = state["state"], int(state["walkers"])
        ddp = state.get("ddp") or {}
        rank, walkers = self.global_rank, self.walkers
        index, exact = self._rank_walkers(state)
        if exact:
            rng = ddp["rngs"][rank]
        else:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed + 1 + int(pooled["step"]))
            rng = gen.get_state()
            if rank == 0:
                wanted = self.ranks * walkers
                how = "some repeat" if total < wanted else "some are left out" if total > wanted else "all kept"
                warnings.warn(
                    f"Resuming {total} checkpointed walkers ({ddp.get('ranks', 1)} rank(s)) on {self.ranks} rank(s) of"
                    f" {walkers} walkers: the pooled walkers are dealt out again ({how}) with fresh random streams;"
                    " the landscape and schedule continue unchanged.",
                    stacklevel=2,
                )
        cls, run = self._kind.state_type, self._run
        run.state = self._state = cls.from_state_dict(cls.take(pooled, index, rng), device)
        self._landscape.load_state_dict(state["landscape"])
        run.schedule_state = {k: v.to(device) for k, v in state["schedule"].items()}
        self._last_accepted = state["last_accepted"][index].to(device)
        if "round_trips" in state:
            trips = state["round_trips"]
            run.round_trips = self._round_trips = round_trips.RoundTripState.from_state_dict(
                {**trips, "last_end": trips["last_end"][index], "crossings": trips["crossings"][index]}, device)
            self._next_snapshot = int(state["next_snapshot"])
        self._chunks_since_sync = 0

    def _adopt(self, final: dict[str, Any]) -> None:
        """Main process after a spawned fit: take rank 0's gathered state (shared landscape, all walkers)."""
        device = torch.device("cpu")
        self._landscape = Landscape.from_state_dict(final["landscape"], device=device)
        self._state = STATES[final["kind"]].from_state_dict(final["state"], device)
        self._last_accepted = final["last_accepted"]
        self._final = final
        self._adopted = True


def sampling_defaults() -> dict[str, Any]:
    """The Wang-Landau arguments and their defaults, read from :class:`~lightning_entropy.WangLandauStrategy`'s
    signature (their one source)."""
    parameters = inspect.signature(WangLandauStrategy.__init__).parameters
    return {name: p.default for name, p in parameters.items() if name != "self" and name not in LIGHTNING_ARGUMENTS}


__all__ = ["RANK_SEED_STRIDE", "RankShare", "WangLandauDDPStrategy", "deal", "sampling_defaults"]
