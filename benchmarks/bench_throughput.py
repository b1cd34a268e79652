"""Training throughput of our detectors next to torchvision's, run side by side.

Our RetinaNet R50-FPN against ``torchvision.models.detection.retinanet_resnet50_fpn`` and
our FCOS R50-FPN against ``fcos_resnet50_fpn`` (random init, ``weights=None,
weights_backbone=None``): same architecture (ResNet-50, FPN 256 on P3-P7, 4-conv heads,
trainable BatchNorm, no frozen stages), same square input size, same batch and the same
random boxes; one training step = forward + backward + SGD step. Repeats alternate between
the two models so machine noise hits both alike; the reported figure is the median over
repeats of ``ours / torchvision`` images per second (> 1: ours is faster), with the
interquartile range of the per-repeat ratios; when that range holds 1, or is wider than a
quarter of the median, the comparison is inconclusive and the report says so. Peak memory
of a training step: on CUDA ``max_memory_allocated`` (both models and their optimizer
states are resident, so also the peak above what was allocated before the step: the step's
own activations, gradients and workspaces); on the CPU the peak resident set size above the
built model's, each model measured alone in a fresh subprocess (RSS is per process;
``--no-memory`` skips those subprocesses).

    python benchmarks/bench_throughput.py [--size 320] [--batch 2 [8 ...]] [--iters 20]
        [--repeats 5] [--warmup 1] [--threads 2] [--device cpu] [--no-memory]
        [--out results/bench/throughput]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors.config import load_config
from detectors.models import build_detector

NUM_CLASSES = 20
# Our config matching each torchvision reference.
OURS: dict[str, dict[str, Any]] = {
    "retinanet": {"model.norm": "none", "loss.reg": "l1"},  # torchvision v1: no head norm, L1
    "fcos": {"model.norm": "group", "loss.reg": "giou", "model.center_sampling_radius": 1.5},
}
TORCHVISION = {
    "retinanet": torchvision.models.detection.retinanet_resnet50_fpn,
    "fcos": torchvision.models.detection.fcos_resnet50_fpn,
}


def random_batch(
    batch: int, size: int, device: torch.device, seed: int = 0
) -> tuple[Tensor, list[dict[str, Tensor]]]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=gen)
    targets = []
    for _ in range(batch):
        xy = torch.rand(4, 2, generator=gen) * size * 0.6
        wh = size * (0.1 + 0.3 * torch.rand(4, 2, generator=gen))
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=1)
        labels = torch.randint(1, NUM_CLASSES, (4,), generator=gen)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return images.to(device), targets


def ours(name: str, size: int, device: torch.device) -> nn.Module:
    overrides = {
        "model.name": name,
        "model.backbone": "resnet50",
        "model.fpn_channels": 256,
        "model.head_convs": 4,
        "model.min_level": 3,
        "model.max_level": 7,
        "data.image_size": size,
        **OURS[name],
    }
    return build_detector(load_config(overrides=overrides), NUM_CLASSES).to(device).train()


def reference(name: str, size: int, device: torch.device) -> nn.Module:
    model = TORCHVISION[name](
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES, min_size=size, max_size=size
    )
    return model.to(device).train()


def step_fn(model: nn.Module, is_ours: bool, batch: Any) -> Callable[[], None]:
    images, targets = batch
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    image_list = list(images)

    def step() -> None:
        if is_ours:
            losses, _ = model(images, targets)
        else:
            losses = model(image_list, targets)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    return step


def timed(step: Callable[[], None], iters: int, device: torch.device) -> list[float]:
    """Seconds of each of ``iters`` steps."""
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def peak_mb(step: Callable[[], None], device: torch.device) -> tuple[float, float]:
    """Peak allocated MB during one step, and the peak above what was allocated before it."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return peak / 2**20, (peak - before) / 2**20


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_peak_mb(name: str, which: str, args: argparse.Namespace) -> float:
    """Peak RSS growth of two training steps of one model, in a fresh process."""
    code = (
        "import sys; sys.argv = ['bench']; import bench_throughput as b; "
        f"print(b._child_peak({name!r}, {which!r}, {args.size}, {args.batch}, {args.threads}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).parent,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def _child_peak(name: str, which: str, size: int, batch: int, threads: int) -> float:
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    data = random_batch(batch, size, device)
    torch.manual_seed(0)
    model = ours(name, size, device) if which == "ours" else reference(name, size, device)
    step = step_fn(model, which == "ours", data)
    step()  # optimizer state and allocator pools exist after the first step
    base = _rss_mb()
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak (VmHWM) to now
    step()
    return _vm_hwm_mb() - base


def _vm_hwm_mb() -> float:
    """Peak resident set size since the last reset (``VmHWM`` of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


def quartiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return q[0], q[2]


def verdict(median: float, low: float, high: float) -> str:
    """ "ours faster" / "torchvision faster" when the interquartile range of the ratios
    stays on one side of 1 and is narrower than a quarter of the median; else inconclusive."""
    if low <= 1.0 <= high or (high - low) > 0.25 * median:
        return "inconclusive (the spread allows no verdict)"
    return "ours faster" if low > 1.0 else "torchvision faster"


def compare(
    name: str, batch_size: int, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    args = argparse.Namespace(**{**vars(args), "batch": batch_size})
    batch = random_batch(args.batch, args.size, device)
    torch.manual_seed(0)
    steps = {
        "ours": step_fn(ours(name, args.size, device), True, batch),
        "torchvision": step_fn(reference(name, args.size, device), False, batch),
    }
    for step in steps.values():  # warm-up: allocator, cudnn autotuning, first-call costs
        for _ in range(args.warmup):
            step()
    memory: dict[str, float | None] = dict.fromkeys(steps)
    step_memory: dict[str, float | None] = dict.fromkeys(steps)
    if device.type == "cuda":
        for key, step in steps.items():
            memory[key], step_memory[key] = peak_mb(step, device)
    elif args.memory:
        memory = {k: cpu_peak_mb(name, k, args) for k in steps}
    seconds: dict[str, list[list[float]]] = {k: [] for k in steps}
    for repeat in range(args.repeats):
        order = list(steps) if repeat % 2 == 0 else list(reversed(steps))
        for key in order:
            seconds[key].append(timed(steps[key], args.iters, device))
    # Per repeat, the median step (one slow step from other load does not move it).
    median = {k: [statistics.median(r) for r in v] for k, v in seconds.items()}
    ratios = [t / o for o, t in zip(median["ours"], median["torchvision"])]
    fastest = {k: min(min(r) for r in v) for k, v in seconds.items()}
    low, high = quartiles(ratios)
    return {
        "batch": args.batch,
        "images_per_s": {k: args.batch / statistics.median(v) for k, v in median.items()},
        "sec_per_step": seconds,
        "peak_mem_mb": memory,
        "step_mem_mb": step_memory,  # CUDA: the peak above the resident models and states
        "ratio_median": statistics.median(ratios),
        "ratio_iqr": [low, high],
        "verdict": verdict(statistics.median(ratios), low, high),
        "ratios": ratios,
        # On a shared machine other load only slows steps down: the fastest step of each is
        # the least disturbed estimate.
        "ratio_fastest_step": fastest["torchvision"] / fastest["ours"],
    }


def markdown(report: dict[str, Any]) -> str:
    a = report["args"]
    lines = [
        "# Training throughput: ours vs torchvision",
        "",
        f"`{report['command']}`",
        "",
        f"{report['device']}, {a['threads']} threads, input {a['size']}x{a['size']}, "
        f"batch {', '.join(map(str, a['batch']))}, {a['iters']} timed steps x "
        f"{a['repeats']} interleaved repeats (after {a.get('warmup', 1)} warm-up step(s) each); "
        f"torch {report['torch']}, torchvision {report['torchvision']}; load average "
        f"{report['load_average'][0]:.1f} -> {report['load_average'][1]:.1f} on "
        f"{report['cpu_count']} cores.",
        "",
        "| detector | batch | ours img/s | torchvision img/s | ratio (median) | IQR "
        "| verdict | ratio (fastest step) | peak MB ours / tv | step MB ours / tv |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def pair(mem: dict[str, float | None] | None) -> str:
        if not mem or mem.get("ours") is None or mem.get("torchvision") is None:
            return "-"
        return f"{mem['ours']:.0f} / {mem['torchvision']:.0f}"

    for name, r in report["results"].items():
        ips = r["images_per_s"]
        low, high = r["ratio_iqr"]
        lines.append(
            f"| {name.split()[0]} R50-FPN | {r['batch']} | {ips['ours']:.2f} | "
            f"{ips['torchvision']:.2f} | {r['ratio_median']:.2f}x | {low:.2f}-{high:.2f} | "
            f"{r['verdict']} | {r['ratio_fastest_step']:.2f}x | {pair(r['peak_mem_mb'])} | "
            f"{pair(r.get('step_mem_mb'))} |"
        )
    lines += [
        "",
        "ratio = ours / torchvision images per second (> 1: ours is faster): per repeat the",
        "median step of each, then the median (and interquartile range) over the interleaved",
        "repeats; and from each model's fastest single step (robust to other load).",
        "Peak MB: CUDA max allocated in a step (both models and their optimizer states are",
        "resident); step MB: CUDA, that peak above what was allocated before the step. CPU:",
        "peak RSS growth over a step above the built model with its optimizer state (each",
        "model alone in a fresh process; - with --no-memory).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, nargs="+", default=[2])
    parser.add_argument("--iters", type=int, default=20, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model first")
    parser.add_argument(
        "--no-memory",
        dest="memory",
        action="store_false",
        help="CPU: skip the peak-RSS subprocesses (CUDA memory costs nothing and is kept)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--detectors", nargs="+", default=sorted(TORCHVISION))
    parser.add_argument("--out", default="results/bench/throughput")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = os.getloadavg()
    results = {
        f"{name} b{batch}": compare(name, batch, args, device)
        for name in args.detectors
        for batch in args.batch
    }
    report = {
        "command": shlex.join(["python", *sys.argv]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "args": vars(args),
        # 1-minute load averages before and after: above the core count, other jobs shared
        # the CPU and the ratios are noise.
        "load_average": [load_before[0], os.getloadavg()[0]],
        "cpu_count": os.cpu_count(),
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
