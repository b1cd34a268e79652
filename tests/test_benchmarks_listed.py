"""``make bench`` runs every benchmark there is, and only those."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_run_all_lists_every_benchmark_script_and_nothing_else() -> None:
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks/run_all.py")
    assert spec and spec.loader
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    listed = {command[0] for command in run_all.BENCHMARKS.values()}
    present = {p.name for p in (ROOT / "benchmarks").glob("bench_*.py")}
    assert listed == present
    assert "run_all.py" in (ROOT / "Makefile").read_text()
