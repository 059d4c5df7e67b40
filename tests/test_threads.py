"""The sampler's intra-op threads: one thread for small steps, a timed trial of one thread against torch's setting
for large ones (lightning_entropy/core/threads.py)."""

import warnings

import pytest
import torch
from lightning.pytorch import Trainer

from lightning_entropy import WangLandauStrategy
from lightning_entropy.core import threads
from lightning_entropy.tasks import SpiralClassifier, SpiralDataModule


def test_trial_tries_each_choice_then_keeps_the_faster_and_retries_the_other():
    trial = threads.Trial((1, 2))
    assert trial.best() == 2  # nothing measured: torch's setting
    assert trial.current() == 1
    trial.record(1, 3.0, 10)  # 0.3 s per step
    assert trial.current() == 2
    trial.record(2, 1.0, 10)  # 0.1 s per step: two threads faster
    chosen = []
    for _ in range(2 * threads.RETRY_EVERY):
        choice = trial.current()
        chosen.append(choice)
        trial.record(choice, 3.0 if choice == 1 else 1.0, 10)
    assert chosen.count(1) == 2 and chosen.count(2) == 2 * threads.RETRY_EVERY - 2  # one retry per RETRY_EVERY
    # the machine gets busy: two threads now take 0.6 s per step, one thread still 0.3
    for _ in range(3 * threads.RETRY_EVERY):
        choice = trial.current()
        trial.record(choice, 3.0 if choice == 1 else 6.0, 10)
    assert trial.best() == 1 and trial.current() == 1
    assert "best 1" in repr(trial)


def test_trial_rejects_fewer_than_two_choices():
    with pytest.raises(ValueError, match="at least two positive thread counts"):
        threads.Trial((2,))


def test_using_times_chunks_on_the_trial_and_restores_the_users_threads():
    torch.set_num_threads(2)
    trial = threads.Trial((1, 2))
    with threads.using(trial, steps=5):
        assert torch.get_num_threads() == 1  # the untried choice
    assert torch.get_num_threads() == 2
    assert trial.seconds[1] is not None and trial.seconds[2] is None
    with threads.using(trial):  # not a chunk (start phase, probes): the best so far, nothing recorded
        assert torch.get_num_threads() == 1
    assert trial.seconds[2] is None and trial.pieces == 1
    with pytest.raises(RuntimeError, match="boom"), threads.using(trial, steps=5):
        assert torch.get_num_threads() == 2
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2 and trial.seconds[2] is None and trial.pieces == 1


class _Flop:
    """An evaluator stand-in whose one-walker step is one matrix product of ``n`` x ``n``."""

    def __init__(self, n: int) -> None:
        self.a = torch.randn(n, n)

    def value_and_grad(self, theta, bias):
        return (self.a @ self.a).sum().reshape(1, 1), None, None


def test_choose_one_thread_for_small_steps_a_trial_for_large_ones(monkeypatch):
    torch.set_num_threads(2)
    theta = torch.zeros(4, 3)
    assert threads.choose(_Flop(4), theta) == 1  # 128 FLOP per walker
    large = threads.choose(_Flop(512), theta)  # 4 x 2.7e8 FLOP
    assert isinstance(large, threads.Trial) and large.choices == (1, 2)
    torch.set_num_threads(1)
    assert threads.choose(_Flop(512), theta) is None  # torch has one thread anyway
    torch.set_num_threads(2)
    assert threads.choose(_Flop(512), theta, 3) == 3
    with pytest.raises(ValueError, match=r"threads=0: give a positive number of threads or 'auto'"):
        threads.choose(_Flop(4), theta, 0)


def test_a_large_step_run_times_both_choices_and_leaves_the_users_setting(monkeypatch):
    monkeypatch.setattr(threads, "SMALL_STEP_FLOP", 0.0)  # the spiral network counts as a large step
    torch.set_num_threads(2)
    strategy = WangLandauStrategy(walkers=8, variables=("train_loss",), start="uniform", steps_per_lightning_step=5,
                                  seed=0)
    trainer = Trainer(strategy=strategy, max_steps=6, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(SpiralClassifier(), datamodule=SpiralDataModule())
    trial = strategy._run.threads
    assert isinstance(trial, threads.Trial) and trial.choices == (1, 2)
    assert all(seconds is not None and seconds > 0 for seconds in trial.seconds.values())
    assert trial.pieces >= 6
    assert torch.get_num_threads() == 2
