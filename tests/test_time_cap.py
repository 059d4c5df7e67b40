"""The time cap covers everything: the Adam start phase, the chunks of sampler steps, the baseline, the report.

No test asserts a duration: each checks what the cap changed (steps run against steps asked for, what the run says
about it), with step counts far beyond what could fit, so the outcome does not depend on the machine's speed.
"""

import math
import time
import warnings

import pytest
import torch
from lightning.pytorch import Trainer

from lightning_entropy import WangLandauStrategy
from lightning_entropy.cli import compose_config, run
from lightning_entropy.core.start import PROBE_STEPS, start_walkers
from lightning_entropy.strategies.budget import StepClock, forecast
from lightning_entropy.tasks import SpiralClassifier, SpiralDataModule

pytestmark = pytest.mark.usefixtures("one_thread")


def _slow_gradient(seconds: float):
    """The gradient of a quadratic bowl, each call taking ``seconds`` (a model this expensive per step)."""

    def gradient(theta: torch.Tensor) -> torch.Tensor:
        time.sleep(seconds)
        return 2 * theta

    return gradient


def _start(steps: int, budget: float | None, walkers: int = 16, seconds: float = 0.02):
    bound = torch.ones(5)
    return start_walkers("adam", walkers=walkers, bound=bound, generator=torch.Generator().manual_seed(0),
                         module_theta=torch.zeros(5), train_loss_gradient=_slow_gradient(seconds), steps=steps,
                         lr=0.05, time_budget=budget)


# -- the start phase ----------------------------------------------------------------------------------------------


def test_start_runs_shorten_to_the_budget_and_keep_the_walkers_spread():
    theta, report = _start(steps=100_000, budget=0.3)  # 100,000 steps of >= 20 ms cannot fit in 0.3 s
    assert report.shortened and PROBE_STEPS <= report.ran < 100
    assert report.ran == max(PROBE_STEPS, int(0.3 / report.seconds_per_step))  # the steps its measured cost allows
    radius = theta.norm(dim=1)
    assert len(torch.unique(radius)) > 4  # stopping points spread over the shorter run: many loss levels
    assert radius.min() < radius.max() * 0.9
    assert report.describe()["shortened_by_time"] is True


def test_a_start_that_fits_is_the_start_without_a_budget():
    gradient = lambda th: 2 * th  # noqa: E731
    kwargs = dict(walkers=8, bound=torch.ones(3), module_theta=torch.zeros(3), train_loss_gradient=gradient,
                  steps=40, lr=0.05)
    plain, _ = start_walkers("adam", generator=torch.Generator().manual_seed(1), **kwargs)
    budgeted, report = start_walkers("adam", generator=torch.Generator().manual_seed(1), time_budget=3600.0,
                                     **kwargs)
    torch.testing.assert_close(budgeted, plain, rtol=0, atol=0)
    assert report.ran == report.requested == 40 and not report.shortened


def test_a_spent_budget_still_gives_walkers_inside_the_box():
    theta, report = _start(steps=1000, budget=0.0)
    assert report.ran <= PROBE_STEPS and report.shortened
    assert (theta.abs() <= 1).all() and torch.isfinite(theta).all()


# -- the strategy under Trainer(max_time) --------------------------------------------------------------------------


def test_max_time_bounds_the_start_phase_and_a_chunk_too_long_for_it():
    """start_steps and steps_per_lightning_step far beyond what 3 s allow: the start is shortened (with a warning
    that names the knobs), the one Lightning step runs fewer sampler steps, and the fit ends."""
    strategy = WangLandauStrategy(walkers=8, start="adam", start_steps=10**7, steps_per_lightning_step=10**7,
                                  start_budget=0.25)
    trainer = Trainer(strategy=strategy, max_steps=5, max_time={"seconds": 3}, accelerator="cpu", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(SpiralClassifier(), datamodule=SpiralDataModule())
    report = strategy.start_report
    assert report.shortened and report.ran < 10**7
    assert strategy.landscape.metadata["start_phase"]["steps_run"] == report.ran
    assert any("start_budget" in str(w.message) and "max_time" in str(w.message) for w in caught)
    assert any("allow about" in str(w.message) for w in caught)  # the forecast: the cap ends the run early
    assert 0 < strategy.sampler_steps < 10**7  # the chunk was cut to the time left
    assert trainer.global_step < 5


def test_step_clock_shortens_only_what_does_not_fit():
    clock = StepClock(prior=0.5)
    assert clock.steps_for(100, None) == 100  # no cap
    assert clock.steps_for(100, 60.0) == 100  # 50 s fit in 60 s
    assert clock.steps_for(100, 10.0) == 20
    assert clock.steps_for(100, 0.1) == 1  # at least one step
    clock.record(10, 100.0)  # the first chunk (compilation) counts until a second one replaces it
    assert clock.per_step == 10.0
    clock.record(10, 1.0)
    assert clock.per_step == pytest.approx(0.1)
    assert StepClock().steps_for(100, 1.0) == 100  # nothing known yet: as asked


def test_forecast_says_when_the_cap_ends_the_run_first():
    text, share = forecast(0.5, 1000, 100.0, 64)
    assert share == pytest.approx(0.2) and "200 more steps" in text and "1,000" in text and "max_time" in text
    text, share = forecast(0.01, 1000, 100.0, 64)
    assert share >= 1 and "within" in text and "estimated" not in text
    assert "estimated from the start phase" in forecast(0.01, 1000, 100.0, 64, measured=False)[0]
    assert forecast(None, 1000, 100.0, 64)[0] == ""


# -- the job --------------------------------------------------------------------------------------------------------


def test_the_job_keeps_to_its_cap_and_says_what_the_cap_cut(tmp_path):
    """A cap of 6 s with a start, a chunk and a baseline each far too long for it: all three are cut, and the summary
    and stdout say so."""
    lines = []
    overrides = ["trainer.max_time=00:00:00:06", "trainer.max_steps=50", "trainer.progress_bar=false",
                 "trainer.threads=0", "sampler.walkers=8", "sampler.start_steps=10000000",
                 "sampler.steps_per_lightning_step=10000000", "baseline.epochs=10000000", "baseline.seeds=[0,1]",
                 "baseline.parallel=false"]
    summary = run(compose_config(overrides), tmp_path, echo=lines.append)
    assert summary["stopped_by"] == "max_time" and summary["time_cap_s"] == 6
    assert summary["start_phase"]["shortened_by_time"]
    assert 0 < summary["steps"] < 10**7 and summary["lightning_steps"] < 50
    assert summary["baseline"]["stopped_by_time"]
    assert all(0 < f["epoch"] < 10**7 for f in summary["baseline"]["final"])
    text = "\n".join(lines)
    assert "stopped by the time cap trainer.max_time=00:00:00:06" in text
    assert "start phase shortened by the time cap" in text and "baseline stopped by the time cap" in text
    assert math.isfinite(summary["wall_time_s"])


def test_a_run_within_its_steps_says_max_steps(tmp_path):
    overrides = ["trainer.max_steps=2", "trainer.progress_bar=false", "trainer.threads=0", "sampler.walkers=8",
                 "sampler.start_steps=5", "sampler.steps_per_lightning_step=5", "baseline.epochs=3",
                 "baseline.seeds=[0]", "baseline.parallel=false"]
    lines = []
    summary = run(compose_config(overrides), tmp_path, echo=lines.append)
    assert summary["stopped_by"] == "max_steps" and summary["steps"] == 10
    assert not summary["start_phase"]["shortened_by_time"] and not summary["baseline"]["stopped_by_time"]
    assert not any("time cap" in line and "stopped" in line for line in lines)



def test_a_step_that_cannot_fit_is_not_started_and_the_run_says_max_time():
    """Once sampling has begun, a Lightning step whose single sampler step would already pass the cap runs none and
    ends the fit (a step of a large model would otherwise overrun the cap by its whole length)."""
    from lightning.pytorch.callbacks import Callback

    from lightning_entropy.cli.deadline import stopped_by

    class Slower(Callback):  # from the second Lightning step on, a sampler step "costs" 10,000 s
        def on_train_batch_end(self, trainer, *args):
            trainer.strategy._clock._per_step = 1e4

    strategy = WangLandauStrategy(walkers=8, start="uniform", steps_per_lightning_step=5)
    trainer = Trainer(strategy=strategy, max_steps=50, max_time={"seconds": 60}, accelerator="cpu", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[Slower()])
    trainer.fit(SpiralClassifier(), datamodule=SpiralDataModule())
    assert strategy.sampler_steps == 5 and trainer.global_step == 2  # the second Lightning step ran no sampler step
    assert strategy.stopped_by_time and stopped_by(trainer) == "max_time"


@pytest.mark.parametrize("command", [True, False])
def test_the_command_counts_its_cap_from_its_process_start_a_caller_from_the_call(tmp_path, monkeypatch, command):
    """The console script's imports and composition count against trainer.max_time; a program that calls main()
    (a test session, a notebook) long after it started does not lose its cap to its own age."""
    import sys

    main_module = sys.modules["lightning_entropy.cli.main"]
    monkeypatch.setattr(main_module, "process_age", lambda: 3.0 if command else 10_000.0)
    monkeypatch.setattr(main_module, "_is_command", lambda: command)
    out = tmp_path / "run"
    argv = ["trainer.max_steps=1", "trainer.progress_bar=false", "trainer.threads=0", "sampler.walkers=8",
            "sampler.start_steps=2", "sampler.steps_per_lightning_step=2", "baseline.enabled=false",
            f"hydra.run.dir={out}", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    monkeypatch.setattr(sys, "argv", ["lightning-entropy", *argv])
    monkeypatch.chdir(tmp_path)
    main_module.main()
    summary = __import__("json").loads((out / "summary.json").read_text())
    startup = summary["timings"]["startup_s"]
    assert (startup >= 3.0) if command else (startup < 1000.0)
    assert summary["stopped_by"] == "max_steps"
