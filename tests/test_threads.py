"""The sampler's intra-op threads: a timed trial of one thread against torch's setting, retried with a growing
wait (lightning_entropy/core/threads.py)."""

import warnings

import pytest
import torch
from lightning.pytorch import Trainer

from lightning_entropy import WangLandauStrategy
from lightning_entropy.core import threads
from lightning_entropy.tasks import SpiralClassifier, SpiralDataModule


def test_trial_tries_each_choice_then_keeps_the_faster_and_retries_the_other_ever_more_rarely():
    trial = threads.Trial((1, 2))
    assert trial.best() == 1  # nothing measured: the safe choice
    assert trial.current() == 1
    trial.record(1, 3.0, 10)  # 0.3 s per step
    assert trial.current() == 2
    trial.record(2, 1.0, 10)  # 0.1 s per step: two threads faster
    retried = []
    for piece in range(2, 1200):
        choice = trial.current()
        if choice == 1:
            retried.append(piece)
        trial.record(choice, 3.0 if choice == 1 else 1.0, 10)
    gaps = [b - a for a, b in zip(retried, retried[1:])]
    # each retry that confirms two threads doubles the wait, up to RETRY_MAX pieces
    assert retried[0] == 1 + threads.RETRY_EVERY
    assert gaps[:4] == [2 * threads.RETRY_EVERY, 4 * threads.RETRY_EVERY, 8 * threads.RETRY_EVERY, threads.RETRY_MAX]
    assert set(gaps[3:]) == {threads.RETRY_MAX}
    # the machine gets busy: two threads now take 0.6 s per step, one thread still 0.3: the trial follows at once
    for _ in range(3):
        trial.record(trial.current(), 6.0, 10)
    assert trial.best() == 1 and trial.current() == 1
    # and the machine gets quiet again: the retry of two threads comes after RETRY_EVERY pieces, not RETRY_MAX
    for piece in range(threads.RETRY_EVERY + 1):
        choice = trial.current()
        trial.record(choice, 3.0 if choice == 1 else 1.0, 10)
    assert trial.best() == 2
    assert "best 2" in repr(trial)


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


def test_choose_a_trial_on_a_cpu_with_threads_else_the_users_setting():
    torch.set_num_threads(2)
    theta = torch.zeros(4, 3)
    trial = threads.choose(theta)
    assert isinstance(trial, threads.Trial) and trial.choices == (1, 2)
    torch.set_num_threads(1)
    assert threads.choose(theta) is None  # torch has one thread anyway
    torch.set_num_threads(2)
    assert threads.choose(theta, 3) == 3
    with pytest.raises(ValueError, match=r"threads=0: give a positive number of threads or 'auto'"):
        threads.choose(theta, 0)


def test_a_run_times_both_choices_and_leaves_the_users_setting():
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


def test_a_chunk_that_retries_a_count_runs_only_its_first_steps_on_it(monkeypatch):
    clock = [0.0]  # a machine where two threads take 10 s per step and one thread 1 s (a busy neighbour)
    monkeypatch.setattr(threads.time, "perf_counter", lambda: clock[0])
    torch.set_num_threads(2)
    trial = threads.Trial((1, 2))
    trial.record(1, 10.0, 10)
    trial.record(2, 100.0, 10)
    held = []
    for _ in range(threads.RETRY_EVERY + 2):
        with threads.using(trial, steps=100) as probe:
            counts = []
            for i in range(100):
                if probe is not None and i == probe.steps:
                    probe.switch()
                counts.append(torch.get_num_threads())
                clock[0] += 1.0 if counts[-1] == 1 else 10.0
        held.append(probe is None)
        if probe is not None:  # the retry: PROBE_STEPS steps on two threads, then on with the best, one thread
            assert counts == [2] * threads.PROBE_STEPS + [1] * (100 - threads.PROBE_STEPS)
        else:
            assert counts == [1] * 100
    assert held.count(False) == 1
    assert trial.seconds == {1: 1.0, 2: 10.0} and torch.get_num_threads() == 2  # the user's setting is back
    with threads.using(trial, steps=2 * threads.PROBE_STEPS - 1) as probe:  # too short to split: no probe
        assert probe is None
