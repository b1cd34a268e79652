"""The GPU check's verdicts on hand-made step results: what a GPU run must show to pass
(none of it can run here), what a CPU dry run may skip, and the script's own syntax."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_report  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def status(steps: Path, name: str, rc: int | None = 0, **extra: Any) -> None:
    record = {"name": name, "rc": rc, "seconds": 1.5, "timeout_s": 60, "ran": True, **extra}
    with (steps / "status.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


def junit(steps: Path, outcomes: list[str]) -> None:
    """A pytest JUnit file with one test case per outcome (pass, skip, fail)."""
    cases = []
    for i, outcome in enumerate(outcomes):
        inner = {"pass": "", "skip": "<skipped message='needs CUDA'/>", "fail": "<failure/>"}
        cases.append(f"<testcase classname='tests.test_x' name='t{i}'>{inner[outcome]}</testcase>")
    counts = {o: outcomes.count(o) for o in ("skip", "fail")}
    (steps / "cuda_tests.xml").write_text(
        f"<testsuites><testsuite name='pytest' tests='{len(outcomes)}' errors='0' "
        f"failures='{counts['fail']}' skipped='{counts['skip']}'>{''.join(cases)}"
        "</testsuite></testsuites>"
    )
    status(steps, "cuda_tests", rc=1 if counts["fail"] else 0)


def ledger(steps: Path, free_mb: list[float | None]) -> None:
    trials = {
        f"k{i}": {
            "status": "FINISHED",
            "started_at": 100.0 + i,
            "metrics": {"trial_wall_s": 20.0} | ({} if f is None else {"gpu_free_mb": f}),
        }
        for i, f in enumerate(free_mb)
    }
    (steps / "sweep_ledger.json").write_text(json.dumps({"trials": trials}))
    status(steps, "sweep")


@pytest.mark.parametrize(
    ("mode", "outcomes", "expected"),
    [
        ("gpu", ["pass", "pass"], "PASS"),
        ("gpu", ["pass", "skip"], "FAIL"),  # a skip on a GPU: that test never ran
        ("gpu", ["pass", "fail"], "FAIL"),
        ("cpu", ["skip", "skip"], "SKIP"),  # the dry run's expected outcome
        ("cpu", ["skip", "fail"], "FAIL"),
        ("cpu", [], "FAIL"),  # nothing collected: the marker lost its tests
    ],
)
def test_cuda_tests_must_all_pass_on_a_gpu_and_all_skip_on_a_cpu(
    tmp_path: Path, mode: str, outcomes: list[str], expected: str
) -> None:
    junit(tmp_path, outcomes)
    result = gpu_report.check(tmp_path, mode, "cuda_tests")
    assert result.status == expected, result.figure
    if mode == "gpu" and expected == "FAIL":
        assert "test_x::t1" in result.figure  # names the test that did not pass


@pytest.mark.parametrize(
    ("free_mb", "expected"),
    [
        ([80000.0, 79990.0], "PASS"),  # within the tolerance
        ([80000.0, 81000.0], "PASS"),  # more free the second time
        ([80000.0, 79000.0], "FAIL"),  # 1000 MB kept by the first trial
        ([80000.0, None], "FAIL"),  # a trial that did not say
    ],
)
def test_the_second_trial_must_find_the_first_ones_memory_released(
    tmp_path: Path, free_mb: list[float | None], expected: str
) -> None:
    ledger(tmp_path, free_mb)
    assert gpu_report.check(tmp_path, "gpu", "memory_release").status == expected
    assert gpu_report.check(tmp_path, "gpu", "sweep").status == "PASS"
    assert gpu_report.check(tmp_path, "cpu", "memory_release").status == "SKIP"


def _amp_case(amp: str, autocast: bool, **extra: Any) -> dict[str, Any]:
    return {
        "detector": "retinanet",
        "amp": amp,
        "autocast": autocast,
        "grad_scaler": amp == "fp16" and autocast,
        "losses": [2.0, 1.9],
        "scale_per_step": [32768.0, 32768.0] if amp == "fp16" and autocast else [1.0, 1.0],
        "skipped_steps": 1 if amp == "fp16" and autocast else 0,
        "sec_per_step": 0.1,
        "error": None,
        **extra,
    }


def test_amp_on_a_gpu_fails_when_a_mode_trained_in_fp32_or_a_loss_was_not_finite(
    tmp_path: Path,
) -> None:
    status(tmp_path, "amp")
    cases = [_amp_case("off", False), _amp_case("bf16", True), _amp_case("fp16", True)]
    (tmp_path / "amp.json").write_text(json.dumps({"device": "cuda", "cases": cases}))
    passed = gpu_report.check(tmp_path, "gpu", "amp")
    assert passed.status == "PASS" and "scale after the last step 32768" in passed.figure
    cases[2] = _amp_case("fp16", False)  # autocast off on a GPU: not what was asked
    (tmp_path / "amp.json").write_text(json.dumps({"device": "cuda", "cases": cases}))
    assert gpu_report.check(tmp_path, "gpu", "amp").status == "FAIL"
    assert gpu_report.check(tmp_path, "cpu", "amp").status == "PASS"  # a CPU has no fp16
    cases[1] = {"detector": "paa", "amp": "bf16", "error": "non-finite loss at iteration 0"}
    (tmp_path / "amp.json").write_text(json.dumps({"device": "cuda", "cases": cases}))
    failed = gpu_report.check(tmp_path, "cpu", "amp")
    assert failed.status == "FAIL" and "paa/bf16: non-finite" in failed.figure


def test_a_gpu_run_whose_benchmark_ran_on_the_cpu_fails(tmp_path: Path) -> None:
    status(tmp_path, "nms")
    row = {"num_boxes": 5000, "num_classes": 80, "greedy_ms": 1.0}
    row |= {"cl_balanced_ratio": 1.5, "soft_gaussian_ratio": 4.0}
    for device, expected in [("cuda", "PASS"), ("cpu", "FAIL")]:
        (tmp_path / "nms.json").write_text(json.dumps({"device": device, "nms": [row]}))
        result = gpu_report.check(tmp_path, "gpu", "nms")
        assert result.status == expected, result.figure
    assert gpu_report.check(tmp_path, "cpu", "nms").status == "PASS"  # the dry run


def test_timeouts_budget_and_missing_steps_fail(tmp_path: Path) -> None:
    status(tmp_path, "nms", rc=124)
    status(tmp_path, "correlation", rc=None, ran=False, note="not run: 3 s of the 480 s left")
    assert "timed out after 60 s" in gpu_report.check(tmp_path, "gpu", "nms").figure
    budget = gpu_report.check(tmp_path, "gpu", "correlation")
    assert budget.status == "FAIL" and "not run" in budget.figure
    assert gpu_report.check(tmp_path, "gpu", "throughput").status == "FAIL"  # never started
    status(tmp_path, "setup", rc=None, ran=False, skip=True, note="using --python")
    assert gpu_report.check(tmp_path, "gpu", "setup").status == "SKIP"


def test_the_report_names_every_check_and_exits_1_on_a_failure(tmp_path: Path) -> None:
    steps, out = tmp_path / "gpu", tmp_path / "out"
    steps.mkdir()
    junit(steps, ["pass"])
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "gpu_report.py"),
        "--steps",
        str(steps),
        "--mode",
        "gpu",
        "report",
        "--out-dir",
        str(out),
        "--wall-s",
        "12",
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 1  # most steps never ran
    report = json.loads((out / "gpu.json").read_text())
    assert [c["name"] for c in report["checks"]] == list(gpu_report.CHECKS)
    assert report["checks"][2]["status"] == "PASS"  # cuda_tests
    assert (
        "PASS cuda_tests" in done.stdout
        and "| cuda_tests | PASS |" in (out / "gpu.md").read_text()
    )


def test_the_script_parses_and_refuses_unknown_options() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    wrong = subprocess.run(["bash", str(SCRIPT), "--gpus", "2"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "unknown option --gpus" in wrong.stderr
    shown = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert shown.returncode == 0 and "--device cpu --quick" in shown.stdout
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(SCRIPT)], check=True)
