"""Run every benchmark (each in its own process) and print a summary of their RESULT lines.

Usage:
    .venv/bin/python benchmarks/run_all.py                 # all five, ~8-10 minutes on 2 cores
    .venv/bin/python benchmarks/run_all.py throughput      # a subset, by name
    .venv/bin/python benchmarks/run_all.py --log out.txt   # also keep the full output
    .venv/bin/python benchmarks/run_all.py --strict        # exit 1 if a target is missed (not only on crashes)

Environment (passed through): BENCH_THREADS (default 2), OMP_WAIT_POLICY (default PASSIVE), see _common.py.
The numbers recorded in docs/PERFORMANCE.md come from this script.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = ("throughput", "mnist_step", "lightning_overhead", "memory", "ddp")


def main(argv: list[str]) -> int:
    strict = "--strict" in argv
    log_path = None
    if "--log" in argv:
        log_path = argv[argv.index("--log") + 1]
    names = [a for a in argv if a in SCRIPTS] or list(SCRIPTS)
    header = (f"benchmarks run {dt.datetime.now().isoformat(timespec='seconds')} on {platform.node()}"
              f" ({os.cpu_count()} CPUs, {platform.platform()})")
    print(header, flush=True)
    log = [header]
    summary, crashed = [], []
    for name in names:
        print(f"\n##### {name} #####", flush=True)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, os.path.join(HERE, f"{name}.py")], capture_output=True, text=True,
                              check=False)
        took = time.perf_counter() - start
        out = proc.stdout + (("\n[stderr]\n" + proc.stderr) if proc.returncode != 0 else "")
        print(out, flush=True)
        print(f"({name}: {took:.0f} s, exit {proc.returncode})", flush=True)
        log += [f"\n##### {name} #####", out, f"({name}: {took:.0f} s, exit {proc.returncode})"]
        if proc.returncode != 0:
            crashed.append(name)
            summary.append(f"{name}: CRASHED (exit {proc.returncode})")
        summary += [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    print("\n===== summary =====")
    print("\n".join(summary))
    log += ["\n===== summary =====", *summary]
    if log_path:
        with open(log_path, "w") as fh:
            fh.write("\n".join(log) + "\n")
    failed = [line for line in summary if line.rstrip().endswith("FAIL")]
    if crashed or (strict and failed):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
