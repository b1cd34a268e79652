"""Cost of the Correlation Loss (forward + backward) next to a sigmoid focal loss.

Times ``pooled_correlation_loss`` for every kind at pool sizes typical of training and for
batch / level (5 FPN levels) / image (16 images) pools, and the sigmoid focal loss over the
classification logits of a batch of comparable size, then reports the ratio. On the CPU
with the thread counts given (ratios of process CPU time); with ``--device cuda`` on the GPU
(synchronised wall time; Spearman's soft ranks then run in torchsort's CUDA extension). The
real-iteration overhead is measured elsewhere.

    python benchmarks/bench_correlation.py [--threads 2] [--device cpu] [--sizes 50 500 5000]
        [--min-time 0.5] [--min-runs 10] [--out results/bench/correlation]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors.losses.correlation import pooled_correlation_loss

KINDS: dict[str, dict[str, object]] = {
    "pearson": {"kind": "pearson"},
    "concordance": {"kind": "concordance"},
    "spearman_abs_eps1": {"kind": "spearman", "strength": 1.0, "strength_mode": "absolute"},
    "spearman_rel_0.1": {"kind": "spearman", "strength": 0.1, "strength_mode": "relative"},
}
POOL_SIZES = (50, 500, 5000)
POOLS = {"batch": None, "level": 5, "image": 16}
# (name, images, anchors per image, classes): the tiny CPU preset, and a VOC-like batch.
FOCAL_BASELINES = (("focal_tiny_16x1000x5", 16, 1000, 5), ("focal_voc_16x20000x20", 16, 20000, 20))


def time_call(
    fn: Callable[[], None],
    min_time: float = 0.5,
    min_runs: int = 10,
    device: torch.device | None = None,
) -> dict:
    """Medians of ``fn``'s wall time and process CPU time in ms, after 3 warm-up calls.

    On the CPU, CPU time is what the ratios use: on a shared machine the wall time also
    counts waiting for a core (and, with 2 threads, waiting for the second thread), which
    CPU time does not. On CUDA the wall time is taken after synchronising the device.
    """
    on_cuda = device is not None and device.type == "cuda"
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    for _ in range(3):
        fn()
    wall: list[float] = []
    cpu: list[float] = []
    start = time.perf_counter()
    while len(wall) < min_runs or time.perf_counter() - start < min_time:
        sync()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        fn()
        sync()
        cpu.append((time.process_time() - cpu0) * 1e3)
        wall.append((time.perf_counter() - wall0) * 1e3)
    return {
        "wall_ms": statistics.median(wall),
        "cpu_ms": statistics.median(cpu),
        "wall_q1_ms": statistics.quantiles(wall, n=4)[0] if len(wall) > 1 else wall[0],
        "runs": len(wall),
    }


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """The RetinaNet classification loss (torchvision's formulation), summed."""
    p = torch.sigmoid(logits)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.sum()


def focal_case(
    images: int, anchors: int, classes: int, device: torch.device
) -> Callable[[], None]:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(images * anchors, classes, generator=gen).to(device).requires_grad_()
    targets = (torch.rand(images * anchors, classes, generator=gen) < 0.01).float().to(device)

    def step() -> None:
        logits.grad = None
        sigmoid_focal_loss(logits, targets).backward()

    return step


def correlation_case(
    n: int, num_pools: int | None, options: dict[str, object], device: torch.device
) -> Callable[[], None]:
    gen = torch.Generator().manual_seed(n)
    logits = torch.randn(n, generator=gen).to(device).requires_grad_()
    ious = (torch.rand(n, generator=gen) * 0.6 + 0.4).to(device)
    pool_ids = (
        None if num_pools is None else torch.randint(0, num_pools, (n,), generator=gen).to(device)
    )

    def step() -> None:
        logits.grad = None
        out = pooled_correlation_loss(
            torch.sigmoid(logits),
            ious,
            pool_ids,
            num_pools=num_pools,
            **options,  # type: ignore[arg-type]
        )
        out.loss.backward()

    return step


def _torchsort_cuda() -> bool:
    try:
        import torchsort.isotonic_cuda  # noqa: F401
    except ImportError:
        return False
    return True


def _cell(timing: dict) -> str:
    return f"{timing['wall_ms']:.3f} / {timing['cpu_ms']:.3f}"


def markdown(report: dict) -> str:
    threads = report["threads"]
    tiny, voc = (b[0] for b in FOCAL_BASELINES)
    on_cuda = report.get("device", "cpu").startswith("cuda")
    clock = (
        "synchronised wall time (process CPU time on CUDA only counts the waits)"
        if on_cuda
        else "CPU time at the first thread count, which waiting for a busy core does not inflate"
    )
    lines = [
        f"# Correlation Loss: {'GPU' if on_cuda else 'CPU'} cost of forward + backward",
        "",
        f"Command: `{report['command']}`  ",
        f"torch {report['torch']}, {report.get('device_name', report['machine'])}, "
        f"{report['cpus']} CPU(s); load average {report['load_before']} before and "
        f"{report['load_after']} after (other jobs shared the machine). Medians of ≥ "
        f"{report.get('min_runs', 10)} runs (≥ {report.get('min_time', 0.5)} s) after 3 "
        "warm-ups; threads = torch.set_num_threads. Cells are `wall / process-CPU` ms; "
        f"ratios use {clock}.",
        "",
        "## Baselines: sigmoid focal loss over [B·A, C] logits, fwd + bwd (median ms)",
        "",
        "| baseline | elements | " + " | ".join(f"{t} thr" for t in threads) + " |",
        "|---|---:|" + "---:|" * len(threads),
    ]
    for name, per_thread in report["baselines"].items():
        cells = " | ".join(_cell(per_thread[str(t)]) for t in threads)
        lines.append(f"| {name} | {per_thread['elements']:,} | {cells} |")
    lines += [
        "",
        "## pooled_correlation_loss, fwd + bwd (median ms) and its ratio to the focal loss",
        "",
        f"Pools: batch = 1, level = 5, image = 16 (ids random). Ratios at {threads[0]} "
        f"thread(s): correlation / {tiny} and / {voc}.",
        "",
        "| kind | pool | positives | "
        + " | ".join(f"{t} thr ms" for t in threads)
        + " | × tiny focal | × VOC focal |",
        "|---|---|---:|" + "---:|" * (len(threads) + 2),
    ]
    first = str(threads[0])
    for row in report["correlation"]:
        cells = " | ".join(_cell(row[str(t)]) for t in threads)
        lines.append(
            f"| {row['kind']} | {row['pool']} | {row['positives']} | {cells} | "
            f"{row[first]['ratio_' + tiny]:.2f} | {row[first]['ratio_' + voc]:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--out", default="results/bench/correlation")
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per case, at least")
    parser.add_argument("--min-runs", type=int, default=10, help="timed calls per case, at least")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=list(POOL_SIZES), help="positives per case"
    )
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    device = torch.device(args.device)
    clock = "wall_ms" if device.type == "cuda" else "cpu_ms"  # what the ratios divide
    timing_options = {"min_time": args.min_time, "min_runs": args.min_runs, "device": device}
    load_before = [round(x, 2) for x in os.getloadavg()]

    baselines: dict[str, dict] = {}
    rows: list[dict] = []
    for thread_count in threads:
        torch.set_num_threads(thread_count)
        key = str(thread_count)
        for name, images, anchors, classes in FOCAL_BASELINES:
            entry = baselines.setdefault(name, {"elements": images * anchors * classes})
            entry[key] = time_call(focal_case(images, anchors, classes, device), **timing_options)
            print(key, name, _cell(entry[key]), flush=True)
        index = 0
        for kind_name, options in KINDS.items():
            for pool_name, num_pools in POOLS.items():
                for n in args.sizes:
                    if index == len(rows):
                        rows.append({"kind": kind_name, "pool": pool_name, "positives": n})
                    row = rows[index]
                    index += 1
                    case = correlation_case(n, num_pools, options, device)
                    timing = time_call(case, **timing_options)
                    for base_name, base in baselines.items():
                        timing["ratio_" + base_name] = timing[clock] / base[key][clock]
                    row[key] = timing
                    print(key, kind_name, pool_name, n, _cell(timing), flush=True)

    machine = f"{platform.machine()} {platform.processor() or platform.platform()}"
    report = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "torch": torch.__version__,
        "threads": threads,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else machine,
        # torchsort's compiled CUDA extension (Spearman on CUDA tensors runs there)
        "torchsort_cuda": _torchsort_cuda(),
        "ratio_clock": clock,
        "min_time": args.min_time,
        "min_runs": args.min_runs,
        "cpus": os.cpu_count(),
        "machine": machine,
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "baselines": baselines,
        "correlation": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
