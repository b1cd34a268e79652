"""Overhead of each method on a full training iteration of a preset, against a baseline.

Every variant trains the same model on the same batches; iterations of the variants are
interleaved (A B C ... A B C ...) so machine noise hits them alike. The table gives, per
variant, the median and interquartile range of the iteration's wall time and of its
process CPU time, and the ratio of CPU-time medians against the baseline (on a machine
shared with other jobs, wall time also counts waiting for a core).

Variant sets:

- ``methods``: correlation loss (each coefficient, level pools), DC, IAC against the
  baseline of the preset (no correlation loss, max-IoU, no DC);
- ``cls``: the classification-loss slot and IoU-aware scoring against focal loss;
- ``amp``: ``train.amp: bf16`` (autocast; on a CPU only with native bf16) against fp32.

``--detectors atss,retinanet`` times each variant on each detector (all interleaved), each
against its own baseline: ATSS is the alignment study's, RetinaNet (9 anchors a location)
gives RS Loss nine times the pairs to rank.

    taskset -c 1 python benchmarks/bench_train_overhead.py --preset tiny --iters 30
    taskset -c 1 python benchmarks/bench_train_overhead.py --variants cls \\
        --detectors atss,retinanet --iters 25 --out results/bench/cls_losses_train
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors.config import load_config, parse_override
from detectors.data import make_loader
from detectors.engine import Trainer, build_datasets, build_optimizer
from detectors.models import build_detector

# name -> overrides; the first of each set is its baseline.
VARIANT_SETS: dict[str, dict[str, dict[str, object]]] = {
    "methods": {
        "baseline": {},
        "pearson": {"loss.corr.weight": 0.2, "loss.corr.kind": "pearson"},
        "concordance": {"loss.corr.weight": 0.2, "loss.corr.kind": "concordance"},
        "spearman_abs": {"loss.corr.weight": 0.2, "loss.corr.kind": "spearman"},
        "spearman_rel": {
            "loss.corr.weight": 0.2,
            "loss.corr.kind": "spearman",
            "loss.corr.strength_mode": "relative",
            "loss.corr.strength": 0.1,
        },
        "concordance_level": {"loss.corr.weight": 0.2, "loss.corr.pool": "level"},
        "dc": {"loss.dc.enabled": True},
        "iac": {"assign.kind": "iac"},
    },
    "cls": {
        "focal": {},
        "qfl": {"loss.cls.kind": "qfl"},
        "vfl": {"loss.cls.kind": "vfl"},
        "rs": {"loss.cls.kind": "rs"},
        "iou_aware": {"model.quality": "iou"},
    },
    "amp": {
        "fp32": {"train.amp": "off"},
        "bf16": {"train.amp": "bf16"},
    },
}


def _ratio_interval(
    times: list[float], base: list[float], samples: int = 2000
) -> tuple[float, float]:
    """95% interval of median(times) / median(base), resampling the interleaved rounds
    (paired: a round's variants ran back to back, under the same load)."""
    rng = random.Random(0)
    n = len(times)
    ratios = []
    for _ in range(samples):
        idx = [rng.randrange(n) for _ in range(n)]
        ratios.append(
            statistics.median(times[i] for i in idx) / statistics.median(base[i] for i in idx)
        )
    ratios.sort()
    return ratios[int(0.025 * samples)], ratios[int(0.975 * samples) - 1]


def _summary(seconds: list[float]) -> dict[str, float]:
    q1, _, q3 = statistics.quantiles(seconds, n=4)
    return {"median_s": statistics.median(seconds), "iqr_s": q3 - q1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--variants", choices=sorted(VARIANT_SETS), default="methods")
    parser.add_argument(
        "--set", action="append", dest="sets", help="override for every variant (repeatable)"
    )
    parser.add_argument(
        "--detectors", default="", help="comma-separated model.name values (default: the preset's)"
    )
    parser.add_argument("--iters", type=int, default=30, help="timed iterations per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    variants = VARIANT_SETS[args.variants]
    baseline = next(iter(variants))
    common = dict(parse_override(item) for item in args.sets or [])
    detectors = [d for d in args.detectors.split(",") if d] or [""]
    out = args.out or Path(
        f"results/bench/{'train_overhead' if args.variants == 'methods' else 'cls_train'}"
    )
    torch.set_num_threads(args.threads)
    load_before = [round(x, 2) for x in os.getloadavg()]
    base = load_config(preset=args.preset, overrides=common)
    train_set, _ = build_datasets(base, Path(".corrtune"))
    loader = make_loader(train_set, base.train.batch_size, shuffle=False, seed=0)
    batches = [b for _, b in zip(range(4), loader)]
    trainers = {}  # (detector, variant) -> trainer
    for detector in detectors:
        on = common | ({"model.name": detector} if detector else {})
        for name, overrides in variants.items():
            cfg = load_config(preset=args.preset, overrides=on | overrides)
            torch.manual_seed(0)
            model = build_detector(cfg, num_classes=len(train_set.classes))
            trainers[detector, name] = Trainer(
                model=model,
                optimizer=build_optimizer(model, cfg.train),
                loader=loader,
                cfg=cfg.train,
                device=torch.device("cpu"),
            )
    wall: dict[tuple[str, str], list[float]] = {key: [] for key in trainers}
    cpu: dict[tuple[str, str], list[float]] = {key: [] for key in trainers}
    for i in range(args.warmup + args.iters):
        for key, trainer in trainers.items():
            t0, c0 = time.perf_counter(), time.process_time()
            trainer.run_step(batches[i % len(batches)])
            if i >= args.warmup:
                wall[key].append(time.perf_counter() - t0)
                cpu[key].append(time.process_time() - c0)
        print(f"\r{i + 1}/{args.warmup + args.iters} rounds", end="", file=sys.stderr)
    print(file=sys.stderr)
    rows: dict[str, dict[str, Any]] = {}
    for detector, name in trainers:
        w, c = _summary(wall[detector, name]), _summary(cpu[detector, name])
        base_cpu = cpu[detector, baseline]
        rows[f"{detector}/{name}" if detector else name] = {
            "detector": detector or base.model.name,
            "overrides": variants[name],
            "wall_median_s": w["median_s"],
            "wall_iqr_s": w["iqr_s"],
            "cpu_median_s": c["median_s"],
            "cpu_iqr_s": c["iqr_s"],
            "ratio": c["median_s"] / statistics.median(base_cpu),
            "ratio_95ci": _ratio_interval(cpu[detector, name], base_cpu),
        }
    command = " ".join(["python", *map(shlex.quote, sys.argv)])
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s)"
    result = {
        "command": command,
        "preset": args.preset,
        "variants": args.variants,
        "common_overrides": common,
        "detectors": detectors,
        "baseline": baseline,
        "threads": args.threads,
        "iters": args.iters,
        "torch": torch.__version__,
        "machine": machine,
        "affinity": sorted(os.sched_getaffinity(0)),
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    shown = " ".join(f"{k}={v}" for k, v in common.items()) or "its defaults"
    lines = [
        f"# Overhead per training iteration: {args.variants} against {baseline} "
        f"({args.preset} preset, {shown})",
        "",
        f"Command: `{command}`  ",
        f"torch {torch.__version__}, CPU ({machine}), pinned to CPU(s) "
        f"{result['affinity']}; load average {load_before} before and {result['load_after']} "
        f"after. {args.iters} interleaved iterations per variant after {args.warmup} warm-up "
        "rounds, the same 4 batches for all; IQR = q3 − q1; ratio = median CPU time / "
        f"{baseline}'s (the process's CPU time: on a shared machine wall time also counts "
        "waiting for a core), with its 95% interval from resampling the rounds (paired).",
        "",
        "| detector | variant | overrides | wall median s | wall IQR s | CPU median s "
        f"| CPU IQR s | × {baseline} | 95% interval |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in rows.items():
        given = ", ".join(f"`{k}={v}`" for k, v in row["overrides"].items()) or "—"
        lines.append(
            f"| {row['detector']} | {name.rsplit('/', 1)[-1]} | {given} | "
            f"{row['wall_median_s']:.4f} | {row['wall_iqr_s']:.4f} | "
            f"{row['cpu_median_s']:.4f} | {row['cpu_iqr_s']:.4f} | {row['ratio']:.3f} | "
            f"{row['ratio_95ci'][0]:.3f}–{row['ratio_95ci'][1]:.3f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
