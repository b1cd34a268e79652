"""The verdicts of ``benchmarks/gpu_check.sh``: one line per check, and gpu.md / gpu.json.

The script runs each step with a timeout and appends ``{"name", "rc", "seconds",
"timeout_s", "ran", "note"}`` to ``STEPS/status.jsonl``; each step leaves its own JSON (or
JUnit XML) in ``STEPS``. This module reads them and decides PASS / FAIL / SKIP per check.
The mode matters: on a GPU every CUDA test must pass (a skip is a failure: it did not
run), on the CPU they must all skip cleanly. Standard library only, so it reports even when
the project's environment could not be set up.

    python benchmarks/gpu_report.py --steps DIR --mode gpu line NAME    # one check's line
    python benchmarks/gpu_report.py --steps DIR --mode gpu report --out-dir DIR \\
        [--command TEXT] [--wall-s S] [--budget-s S]                     # gpu.md, gpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# A second trial may start with this much less free GPU memory than the first without
# failing: well under one CUDA context (about 500 MB), which a worker process left behind
# would hold, let alone the gigabytes its caching allocator keeps.
MEMORY_TOLERANCE_MB = 256.0
MIN_TIMED_STEPS = 20  # per model and batch size, after the warm-up (the floor)


@dataclass
class Check:
    name: str
    status: str  # PASS, FAIL or SKIP
    figure: str  # the measured figure, or why it failed or was skipped
    seconds: float = math.nan
    timeout_s: float = math.nan
    rc: int | None = None

    def line(self) -> str:
        took = "" if math.isnan(self.seconds) else f" ({self.seconds:.0f} s)"
        return f"{self.status:<4} {self.name:<15} {self.figure}{took}"


# ------------------------------------------------------------------------------- reading
def statuses(steps: Path) -> dict[str, dict[str, Any]]:
    """The script's record of each step (the last one of a name wins)."""
    path = steps / "status.jsonl"
    found: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                found[record["name"]] = record
    return found


def _json(steps: Path, name: str) -> dict[str, Any]:
    path = steps / f"{name}.json"
    if not path.exists():
        raise Unfinished(f"no {path.name} (see {name}.log)")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


class Unfinished(Exception):
    """A step left no usable result: the check fails with this message."""


def _off_device(report: dict[str, Any], mode: str) -> str:
    """Why a GPU run's benchmark does not count ("" when it ran where it should)."""
    if mode == "gpu" and report.get("device", "cpu") == "cpu":
        return "; it ran on the CPU, not the GPU"
    return ""


# ------------------------------------------------------------------------------ verdicts
# Each takes (steps folder, mode) and returns (status, figure); a step that exited non-zero
# fails before its verdict is asked (except where its output says more than its exit code).
def setup_verdict(steps: Path, mode: str) -> tuple[str, str]:
    return "PASS", "scripts/setup.sh: .venv ready (the device check says what it holds)"


def device_verdict(steps: Path, mode: str) -> tuple[str, str]:
    env = _json(steps, "env")
    versions = f"torch {env.get('torch')}, torchvision {env.get('torchvision')}"
    if mode == "cpu":
        return "PASS", f"cpu ({env.get('cpu')}); {versions}; CUDA not used"
    if not env.get("cuda_available"):
        return "FAIL", f"CUDA is not available to torch ({versions})"
    # A missing extension fails the CUDA tests and the correlation check, which need it.
    sort = "loaded" if env.get("torchsort_cuda") else "MISSING"
    return (
        "PASS",
        f"{env.get('device_name')} (sm {env.get('capability')}, "
        f"{env.get('memory_gb') or 0:.0f} GB), {versions}, CUDA {env.get('cuda')}; "
        f"torchsort CUDA extension {sort}",
    )


def cuda_tests_verdict(steps: Path, mode: str) -> tuple[str, str]:
    path = steps / "cuda_tests.xml"
    if not path.exists():
        raise Unfinished("pytest wrote no cuda_tests.xml (see cuda_tests.log)")
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    text = (
        f"{passed} passed, {counts['failures'] + counts['errors']} failed, "
        f"{counts['skipped']} skipped of {counts['tests']} cuda-marked tests"
    )
    bad = [
        f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None
        or case.find("error") is not None
        or (mode == "gpu" and case.find("skipped") is not None)
    ]
    named = f": {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}" if bad else ""
    if counts["tests"] == 0:
        return "FAIL", "no cuda-marked test was collected"
    if counts["failures"] or counts["errors"]:
        return "FAIL", text + named
    if mode == "cpu":
        if counts["skipped"] == counts["tests"]:
            return "SKIP", text + " (expected without a GPU)"
        return "FAIL", text + " (on a CPU every one must skip)"
    if counts["skipped"]:
        return "FAIL", text + " (on a GPU none may skip)" + named
    return "PASS", text


def amp_verdict(steps: Path, mode: str) -> tuple[str, str]:
    report = _json(steps, "amp")
    cases = report["cases"]
    broken = [f"{c['detector']}/{c['amp']}: {c['error']}" for c in cases if c.get("error")]
    if broken:
        return "FAIL", f"{len(broken)}/{len(cases)} cases failed: " + "; ".join(broken[:3])
    no_autocast = [
        f"{c['detector']}/{c['amp']}" for c in cases if c["amp"] != "off" and not c["autocast"]
    ]
    fp16 = [c for c in cases if c["amp"] == "fp16" and c["grad_scaler"]]
    scales = sorted({c["scale_per_step"][-1] for c in fp16})
    skipped = sum(c["skipped_steps"] for c in fp16)
    figure = f"{len(cases)}/{len(cases)} cases finite"
    if fp16:
        figure += (
            f"; fp16 loss scale after the last step {' / '.join(f'{s:g}' for s in scales)} "
            f"({skipped} overflowing steps skipped in all)"
        )
    by_mode = {
        amp: max((c["sec_per_step"] for c in cases if c["amp"] == amp), default=math.nan)
        for amp in ("off", "bf16", "fp16")
    }
    figure += "; slowest s/step " + ", ".join(f"{k} {v:.3f}" for k, v in by_mode.items())
    if _off_device(report, mode):
        return "FAIL", figure + _off_device(report, mode)
    if mode == "gpu" and no_autocast:
        return "FAIL", figure + f"; trained in fp32 instead: {', '.join(no_autocast[:4])}"
    if no_autocast:
        figure += f"; {len(no_autocast)} cases in fp32 (no autocast on this CPU)"
    return "PASS", figure


def throughput_verdict(steps: Path, mode: str) -> tuple[str, str]:
    report = _json(steps, "throughput")
    args, results = report["args"], report["results"]
    timed = args["iters"] * args["repeats"]
    parts = []
    for key, r in results.items():
        low, high = r["ratio_iqr"]
        ips = r["images_per_s"]
        mem = r.get("step_mem_mb") or {}
        peak = (
            f", step MB {mem['ours']:.0f}/{mem['torchvision']:.0f}"
            if mem.get("ours") is not None and mem.get("torchvision") is not None
            else ""
        )
        parts.append(
            f"{key}: {r['ratio_median']:.2f}x [{low:.2f}-{high:.2f}] "
            f"({ips['ours']:.1f} vs {ips['torchvision']:.1f} img/s{peak})"
        )
    figure = f"ours/torchvision at {args['size']} px: " + "; ".join(parts)
    wanted = {f"{d} b{b}" for d in ("retinanet", "fcos") for b in args["batch"]}
    if not wanted <= set(results):
        return "FAIL", f"missing {sorted(wanted - set(results))}; " + figure
    if _off_device(report, mode):
        return "FAIL", figure + _off_device(report, mode)
    if mode == "gpu" and timed < MIN_TIMED_STEPS:
        return "FAIL", f"only {timed} timed steps per model (< {MIN_TIMED_STEPS}); " + figure
    return "PASS", figure


def nms_verdict(steps: Path, mode: str) -> tuple[str, str]:
    report = _json(steps, "nms")
    rows = report["nms"]
    if not rows:
        return "FAIL", "no NMS timings"
    parts = [
        f"{r['num_boxes'] // 1000}k/{r['num_classes']}cls greedy {r['greedy_ms']:.2f} ms, "
        f"CL-B {r['cl_balanced_ratio']:.1f}x, Soft {r['soft_gaussian_ratio']:.1f}x"
        for r in rows
        if r["num_classes"] == max(x["num_classes"] for x in rows)
    ]
    figure = "; ".join(parts) + " (CL-B keeps greedy's count in every row)"
    if _off_device(report, mode):
        return "FAIL", figure + _off_device(report, mode)
    return "PASS", figure


def correlation_verdict(steps: Path, mode: str) -> tuple[str, str]:
    report = _json(steps, "correlation")
    rows = report["correlation"]
    first = str(report["threads"][0])
    largest = max(r["positives"] for r in rows)
    parts = [
        f"{r['kind']} {r[first]['wall_ms']:.2f} ms"
        for r in rows
        if r["pool"] == "batch" and r["positives"] == largest
    ]
    figure = f"fwd+bwd at {largest} positives, batch pool: " + ", ".join(parts)
    voc = [k for k in rows[0][first] if k.startswith("ratio_focal_voc")]
    if voc:
        worst = max(r[first][voc[0]] for r in rows)
        figure += f"; at most {worst:.3f}x a VOC-sized focal loss"
    if _off_device(report, mode):
        return "FAIL", figure + _off_device(report, mode)
    if mode == "gpu" and not report.get("torchsort_cuda"):
        return "FAIL", figure + "; Spearman did not run in torchsort's CUDA extension"
    return "PASS", figure


def _ledger_trials(steps: Path) -> list[dict[str, Any]]:
    ledger = _json(steps, "sweep_ledger")
    trials = sorted(ledger.get("trials", {}).values(), key=lambda t: t.get("started_at", 0))
    return trials


def sweep_verdict(steps: Path, mode: str) -> tuple[str, str]:
    trials = _ledger_trials(steps)
    done = [t for t in trials if t.get("status") == "FINISHED"]
    walls = ", ".join(f"{t.get('metrics', {}).get('trial_wall_s', math.nan):.0f} s" for t in done)
    figure = f"{len(done)}/{len(trials)} trials finished, one at a time ({walls})"
    return ("PASS" if len(trials) == 2 and len(done) == 2 else "FAIL"), figure


def memory_verdict(steps: Path, mode: str) -> tuple[str, str]:
    trials = _ledger_trials(steps)
    free = [t.get("metrics", {}).get("gpu_free_mb") for t in trials]
    if mode == "cpu":
        return "SKIP", "no GPU: the trials ran on the CPU (gpus_per_worker: 0)"
    if len(free) != 2 or any(f is None for f in free):
        return "FAIL", f"the ledger holds no free memory at start for each trial: {free}"
    first, second = free
    drop = first - second
    figure = (
        f"free at start: trial 1 {first:.0f} MB, trial 2 {second:.0f} MB "
        f"({-drop:+.0f} MB; tolerance -{MEMORY_TOLERANCE_MB:.0f})"
    )
    return ("PASS" if drop <= MEMORY_TOLERANCE_MB else "FAIL"), figure


# The checks, in the script's order: name -> (step whose run it reads, verdict).
CHECKS: dict[str, tuple[str, Callable[[Path, str], tuple[str, str]]]] = {
    "setup": ("setup", setup_verdict),
    "device": ("env", device_verdict),
    "cuda_tests": ("cuda_tests", cuda_tests_verdict),
    "amp": ("amp", amp_verdict),
    "throughput": ("throughput", throughput_verdict),
    "nms": ("nms", nms_verdict),
    "correlation": ("correlation", correlation_verdict),
    "sweep": ("sweep", sweep_verdict),
    "memory_release": ("sweep", memory_verdict),
}
# Steps whose exit status alone does not decide: pytest exits 1 on a failure and 5 on
# nothing collected; the verdict reads its XML instead.
READS_OUTPUT_ON_FAILURE = {"cuda_tests"}


def check(steps: Path, mode: str, name: str) -> Check:
    step, verdict = CHECKS[name]
    record = statuses(steps).get(step)
    if record is None:
        return Check(name, "FAIL", "not run (the script stopped before it)")
    timing = {"seconds": float(record["seconds"]), "timeout_s": float(record["timeout_s"])}
    rc = record.get("rc")
    if not record.get("ran", True):
        status = "SKIP" if record.get("skip") else "FAIL"
        return Check(name, status, str(record.get("note", "not run")), rc=rc, **timing)
    if rc in (124, 137):
        note = f"timed out after {record['timeout_s']:.0f} s (see {step}.log)"
        return Check(name, "FAIL", note, rc=rc, **timing)
    try:
        if rc and step not in READS_OUTPUT_ON_FAILURE:
            try:
                _, figure = verdict(steps, mode)
                note = f"; {figure}"
            except (Unfinished, KeyError, ValueError, TypeError):
                note = ""
            return Check(name, "FAIL", f"exit status {rc} (see {step}.log){note}", rc=rc, **timing)
        status, figure = verdict(steps, mode)
    except Unfinished as exc:
        return Check(name, "FAIL", str(exc), rc=rc, **timing)
    except (KeyError, ValueError, TypeError, ET.ParseError) as exc:
        return Check(
            name, "FAIL", f"unreadable result ({type(exc).__name__}: {exc})", rc=rc, **timing
        )
    return Check(name, status, figure, rc=rc, **timing)


# ------------------------------------------------------------------------------- writing
SECTIONS = (  # step outputs whose own tables gpu.md carries
    ("Training steps under each AMP mode", "amp.md"),
    ("Throughput against torchvision", "throughput.md"),
    ("NMS on the device", "nms.md"),
    ("Correlation loss on the device", "correlation.md"),
)


def markdown(report: dict[str, Any], steps: Path) -> str:
    mode = report["mode"]
    lines = [
        "# GPU check" + (" (CPU dry run: no GPU figures)" if mode == "cpu" else ""),
        "",
        f"`{report['command']}`",
        "",
        f"{report['device']}; {report['wall_s']:.0f} s end to end (budget "
        f"{report['budget_s']:.0f} s); {report['counts']['PASS']} passed, "
        f"{report['counts']['FAIL']} failed, {report['counts']['SKIP']} skipped.",
        "",
        "| check | result | figure | s | limit s |",
        "|---|---|---|---:|---:|",
    ]
    for c in report["checks"]:
        seconds = "" if c["seconds"] is None else f"{c['seconds']:.0f}"
        limit = "" if c["timeout_s"] is None else f"{c['timeout_s']:.0f}"
        figure = c["figure"].replace("|", "/")
        lines.append(f"| {c['name']} | {c['status']} | {figure} | {seconds} | {limit} |")
    for title, name in SECTIONS:
        path = steps / name
        if path.exists():
            body = path.read_text().splitlines()
            body = body[1:] if body and body[0].startswith("# ") else body  # its own title
            lines += ["", f"## {title}", *body]
    return "\n".join(lines).rstrip() + "\n"


def _finite_or_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def write_report(args: argparse.Namespace) -> int:
    steps = Path(args.steps)
    checks = [check(steps, args.mode, name) for name in CHECKS]
    counts = {s: sum(c.status == s for c in checks) for s in ("PASS", "FAIL", "SKIP")}
    env: dict[str, Any] = {}
    if (steps / "env.json").exists():
        env = json.loads((steps / "env.json").read_text())
    device = env.get("device_name") if args.mode == "gpu" else f"CPU ({env.get('cpu', '?')})"
    report = {
        "mode": args.mode,
        "command": args.command,
        "device": device or "unknown device",
        "wall_s": args.wall_s,
        "budget_s": args.budget_s,
        "counts": counts,
        "checks": [
            asdict(c)
            | {"seconds": _finite_or_none(c.seconds), "timeout_s": _finite_or_none(c.timeout_s)}
            for c in checks
        ],
        "env": env,
        "steps": str(steps),
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu.md").write_text(markdown(report, steps))
    print("gpu_check: summary")
    for c in checks:
        print("  " + c.line())
    print(
        f"gpu_check: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} "
        f"skipped in {args.wall_s:.0f} s; wrote {out / 'gpu.md'} and {out / 'gpu.json'}"
    )
    return 1 if counts["FAIL"] else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", required=True, help="the steps' folder")
    parser.add_argument("--mode", choices=("gpu", "cpu"), required=True)
    sub = parser.add_subparsers(dest="action", required=True)
    line = sub.add_parser("line", help="print the summary lines of the checks of one step")
    line.add_argument("step")
    rep = sub.add_parser("report", help="write gpu.md and gpu.json; exit 1 if a check failed")
    rep.add_argument("--out-dir", required=True)
    rep.add_argument("--command", default="bash benchmarks/gpu_check.sh")
    rep.add_argument("--wall-s", type=float, default=math.nan)
    rep.add_argument("--budget-s", type=float, default=math.nan)
    args = parser.parse_args()
    if args.action == "line":
        for name, (step, _) in CHECKS.items():
            if step == args.step:
                print(check(Path(args.steps), args.mode, name).line(), flush=True)
        return
    sys.exit(write_report(args))


if __name__ == "__main__":
    main()
