"""Fault injection on the command line: SIGTERM and SIGKILL mid-run, then resume; read-only and locked run directories."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lightning_entropy import Landscape
from lightning_entropy.cli import ConfigError, compose_config, run
from lightning_entropy.cli.rundir import claim

# Small enough for a test, long enough (40 Lightning steps) to be stopped in the middle; a checkpoint every step.
RUN = ["trainer.max_steps=40", "trainer.max_time=null", "trainer.progress_bar=false", "trainer.threads=1",
       "baseline.enabled=false", "sampler.walkers=8", "sampler.steps_per_lightning_step=40", "sampler.start_steps=10",
       "trainer.checkpoint_minutes=0.0001", "plot.dpi=40"]
CLI = [sys.executable, "-c", "from lightning_entropy.cli import main; main()"]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")


def _cli(out: Path, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *RUN, f"hydra.run.dir={out}", *extra], env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _start(out: Path) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *RUN, f"hydra.run.dir={out}"], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(out: Path, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not (out / "checkpoint.ckpt").exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run's landscape."""
    out = tmp_path_factory.mktemp("reference")
    done = _cli(out)
    assert done.returncode == 0, done.stderr[-3000:]
    return Landscape.load(out / "landscape.npz")


def _same(a: Landscape, b: Landscape) -> None:
    np.testing.assert_array_equal(a.histogram, b.histogram)
    np.testing.assert_array_equal(a.entropy, b.entropy)
    assert a.walker_steps == b.walker_steps


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_interrupted_run_resumes_to_the_uninterrupted_landscape(tmp_path, reference, sig):
    out = tmp_path / "run"
    process = _start(out)
    _wait_for_checkpoint(out, process)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    if sig == signal.SIGTERM:
        assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
        assert "interrupted by SIGTERM" in stderr and f"resume={out}" in stderr
        partial = Landscape.load(out / "landscape.npz")  # what was sampled is written, and readable
        assert 0 < partial.walker_steps < reference.walker_steps
        summary = json.loads((out / "summary.json").read_text())
        assert summary["interrupted"] == "SIGTERM" and summary["nonfinite_moves"] == 0
    else:
        assert process.returncode == -signal.SIGKILL
    assert not list(out.glob(".*.tmp"))  # atomic writes: no half-written file left behind
    done = _cli(out, f"resume={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    _same(Landscape.load(out / "landscape.npz"), reference)


def test_sigterm_in_the_start_phase_exits_non_zero_at_once(tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen([*CLI, *RUN, "sampler.start=adam", "sampler.start_steps=100000000",
                                f"hydra.run.dir={out}"], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 180
    while not (out / ".lightning-entropy.lock").exists():  # the job has claimed its directory: past the imports
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    time.sleep(1.0)
    t = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert time.monotonic() - t < 30
    assert "interrupted by SIGTERM" in stderr


def test_a_locked_run_directory_is_refused_before_any_work(tmp_path):
    out = tmp_path / "run"
    held = claim(out)  # another run holds it
    try:
        with pytest.raises(ConfigError, match=r"is in use by another lightning-entropy run \(pid \d+\).*hydra.run.dir"):
            run(compose_config(RUN[:-2]), out, echo=lambda _: None)
    finally:
        held.close()
    assert sorted(p.name for p in out.iterdir()) == [".lightning-entropy.lock"]  # nothing written


def test_an_unwritable_run_directory_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"is not writable.*hydra.run.dir"):
        claim(blocker / "run")  # a directory that cannot be created
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories; the case above covers the check")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match=r"is not writable"):
            run(compose_config(RUN[:-2]), ro, echo=lambda _: None)
    finally:
        ro.chmod(0o700)


def test_resume_from_a_directory_without_checkpoint_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"resume=.*no checkpoint.ckpt there"):
        run(compose_config([*RUN, f"resume={tmp_path}"]), tmp_path / "run", echo=lambda _: None)
    assert not (tmp_path / "run").exists()


def test_the_baseline_process_dies_with_its_parent(tmp_path):
    """A parent killed by SIGKILL takes its baseline process with it (PDEATHSIG / parent polling)."""
    code = ("import subprocess, sys, json, time\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import sys, time\\n"
            "from lightning_entropy.cli.baseline_process import die_with_parent\\n"
            "die_with_parent(int(sys.argv[1])); time.sleep(60)', str(__import__('os').getpid())])\n"
            "print(p.pid, flush=True); time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=_env())
    child = int(parent.stdout.readline())
    time.sleep(2.0)  # the child has installed its guard
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        if Path(f"/proc/{child}/stat").exists() and Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
            return  # a zombie: dead, waiting for init to reap it
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the child outlived its parent")


def test_resume_from_a_corrupt_checkpoint_is_refused(tmp_path):
    (tmp_path / "checkpoint.ckpt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ConfigError, match=r"checkpoint.ckpt is corrupt or truncated"):
        run(compose_config([*RUN, f"resume={tmp_path}"]), tmp_path / "run", echo=lambda _: None)
    assert not (tmp_path / "run").exists()
