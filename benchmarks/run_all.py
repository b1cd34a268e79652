"""``make bench``: every benchmark of ``benchmarks/``, one after the other, with the
arguments its results in ``results/bench/`` were made with (CPU; the GPU figures come from
``benchmarks/gpu_check.sh``). ``--list`` prints them; ``--only NAME ...`` runs some.

Each benchmark measures ratios against a baseline run side by side and writes its own
``results/bench/<name>.{md,json}``; run them on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

BENCHMARKS: dict[str, list[str]] = {
    "metrics": ["bench_metrics.py"],
    "nms": ["bench_nms.py"],
    "correlation": ["bench_correlation.py"],
    "cls_losses": ["bench_cls_losses.py"],
    "data": ["bench_data.py"],
    "train_overhead": ["bench_train_overhead.py", "--iters", "30"],
    "amp": ["bench_amp.py"],
    "throughput": ["bench_throughput.py", "--size", "256", "--batch", "2", "--threads", "2"],
    "time_to_ap": ["bench_time_to_ap.py"],
    "sweep_overhead": ["bench_sweep_overhead.py"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the commands; run nothing")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=None)
    args = parser.parse_args()
    chosen = args.only or list(BENCHMARKS)
    failed = []
    for name in chosen:
        command = [sys.executable, str(HERE / BENCHMARKS[name][0]), *BENCHMARKS[name][1:]]
        print(f"== {name}: {shlex.join(command)}", flush=True)
        if args.list:
            continue
        started = time.perf_counter()
        code = subprocess.call(command, cwd=HERE.parent)
        print(f"== {name}: exit {code} after {time.perf_counter() - started:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
