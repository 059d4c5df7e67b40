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
