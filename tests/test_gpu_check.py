"""benchmarks/gpu_check.py runs in its quick CPU mode and writes one table (the GPU run uses the same code)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_gpu_check_quick_on_cpu(tmp_path, monkeypatch):
    # one thread: torch is loaded here with OpenMP's spinning wait policy, which collapses 2 threads on a busy machine
    monkeypatch.setenv("BENCH_THREADS", "1")
    sys.modules.pop("_common", None)
    sys.path.insert(0, str(BENCH))
    threads = torch.get_num_threads()
    try:
        spec = importlib.util.spec_from_file_location("gpu_check", BENCH / "gpu_check.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out = tmp_path / "table.md"
        assert module.main(["--device", "cpu", "--quick", "--no-ddp", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(str(BENCH))
        sys.modules.pop("_common", None)
    text = out.read_text()
    for family in ("spiral MLP", "MNIST CNN", "CIFAR ResNet", "char_lm", "modular_arithmetic"):
        assert family in text
    assert "GEMM" in text and "batched" in text and "linear chain" in text
    assert "skipped" not in text and "out of memory" not in text


def test_the_roofline_counts_a_steps_operations_and_names_its_bound(monkeypatch):
    """benchmarks/_common: dispatch_profile counts what a call dispatches (two operations, their outputs' bytes) and
    bound() names the limit that explains at least half the step, else the operations' own overhead."""
    monkeypatch.setenv("BENCH_THREADS", "1")
    sys.modules.pop("_common", None)
    sys.path.insert(0, str(BENCH))
    threads = torch.get_num_threads()
    try:
        import _common as C

        a, b = torch.ones(1000), torch.ones(1000)
        ops, nbytes = C.dispatch_profile(lambda: (a + b) * b)
        assert (ops, nbytes) == (2, 2 * 1000 * 4)
        assert C.op_floor_seconds(calls=200) > 0
        assert C.bound(0.9, 0.1, 0.05, 10, 1e-3, 1e-6).startswith("arithmetic")
        assert C.bound(0.01, 0.1, 0.6, 370, 4e-3, 6e-6).startswith("dispatch")
        overhead = C.bound(0.01, 0.2, 0.3, 370, 4e-3, 3.5e-6)
        assert overhead.startswith("per-operation overhead") and "370 operations at 10.8 us" in overhead
        assert C.bound(0.02, 0.1, 0.03, 600, 0.1, 5e-6).startswith("kernel efficiency")
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(str(BENCH))
        sys.modules.pop("_common", None)
