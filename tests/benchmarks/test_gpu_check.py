"""benchmarks/gpu_check.sh end to end in its CPU dry mode: every step of the GPU check runs
here at tiny sizes (a 2-trial Ray sweep included), so the script cannot rot while no GPU
machine is at hand. 5.5 minutes measured on one busy core (the Ray sweep: 3.5 of them);
less on 2 idle cores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What a CPU may skip: the set-up (this test's own Python is used), the CUDA tests (all
# must skip) and the GPU memory comparison (the sweep's trials ran on the CPU).
EXPECTED_SKIPS = {"setup", "cuda_tests", "memory_release"}
CHECKS = [
    "setup",
    "device",
    "cuda_tests",
    "amp",
    "throughput",
    "nms",
    "correlation",
    "sweep",
    "memory_release",
]


def committed_results() -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in (ROOT / "results").rglob("*") if p.is_file()}


@pytest.mark.slow
def test_the_gpu_check_runs_end_to_end_on_the_cpu(tmp_path: Path) -> None:
    before = committed_results()
    done = subprocess.run(
        [
            "bash",
            str(ROOT / "benchmarks" / "gpu_check.sh"),
            *("--device", "cpu", "--quick", "--out", str(tmp_path), "--python", sys.executable),
        ],
        capture_output=True,
        text=True,
        timeout=1500,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["mode"] == "cpu"
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert list(statuses) == CHECKS
    for name, status in statuses.items():
        assert status == ("SKIP" if name in EXPECTED_SKIPS else "PASS"), (name, report)
    # One summary line per check as it ends, and again in the closing summary.
    for name, status in statuses.items():
        assert done.stdout.count(f"{status:<4} {name} ") == 2, name
    assert "6 passed, 0 failed, 3 skipped" in done.stdout
    markdown = (tmp_path / "gpu.md").read_text()
    assert "CPU dry run" in markdown and "## Throughput against torchvision" in markdown
    steps = tmp_path / "gpu"
    amp = json.loads((steps / "amp.json").read_text())
    assert len(amp["cases"]) == 18 and all(c["error"] is None for c in amp["cases"])
    ledger = json.loads((steps / "sweep_ledger.json").read_text())
    assert [t["status"] for t in ledger["trials"].values()] == ["FINISHED"] * 2
    # A dry run writes where it is told, never over the committed figures.
    assert committed_results() == before
