"""The tiny preset's time-to-AP curve: COCO AP on the synthetic val split against training
seconds (evaluation time excluded), measured by evaluating every ``--eval-every`` steps of
one run of the preset's own schedule.

    .venv/bin/python benchmarks/bench_time_to_ap.py --preset tiny --eval-every 250

The curve of one run with periodic evaluation is the curve of that schedule: AP at an
intermediate point is before the schedule's learning-rate drops, so it understates what a
shorter schedule would reach at the same time. The goal line (issue #5) is AP >= 0.5 within
600 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from detectors.config import flatten, load_config, parse_override
from detectors.engine import run_training

GOAL_AP, GOAL_S = 0.5, 600.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--set", action="append", default=[], help="dotted.key=value")
    parser.add_argument("--out", type=Path, default=Path("results/bench/time_to_ap"))
    args = parser.parse_args()
    overrides = dict(parse_override(s) for s in args.set)
    overrides["train.eval_every"] = args.eval_every
    cfg = load_config(preset=args.preset, overrides=overrides)
    points: list[dict[str, float]] = []
    load_before = os.getloadavg()[0]

    def report(record: dict[str, Any], checkpoint: Any) -> None:
        if "val/AP" not in record:
            return
        train_s = record["train/elapsed_s"] - record["train/eval_time_s"]
        point = {
            "iteration": record["iteration"],
            "train_s": train_s,
            "AP": record["val/AP"],
            "AP50": record["val/AP50"],
            "oLRP": record["val/oLRP"],
            "beta_cls": record["val/beta_cls"],
        }
        points.append(point)
        print(json.dumps({k: round(v, 4) for k, v in point.items()}), flush=True)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out_dir:
        run_training(cfg, out_dir=Path(out_dir), cache_dir=Path(".corrtune"), report=report)
    wall = time.perf_counter() - t0
    reached = next((p for p in points if p["AP"] >= GOAL_AP), None)
    result = {
        "command": "python benchmarks/bench_time_to_ap.py "
        + " ".join([f"--preset {args.preset}", f"--eval-every {args.eval_every}"])
        + "".join(f" --set {s}" for s in args.set),
        "config": flatten(cfg),
        "points": points,
        "wall_s": wall,
        "goal": {"AP": GOAL_AP, "seconds": GOAL_S},
        "goal_reached_at_s": reached["train_s"] if reached else None,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {cfg.train.num_threads or torch.get_num_threads()} "
        f"threads, load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict[str, Any]) -> str:
    final = r["points"][-1]
    verdict = (
        f"reached AP {GOAL_AP} after {r['goal_reached_at_s']:.0f} s of training"
        if r["goal_reached_at_s"] is not None
        else f"did not reach AP {GOAL_AP}"
    )
    lines = [
        f"# Time to AP: preset `{r['config']['name']}`",
        "",
        f"`{r['command']}`",
        "",
        f"{r['machine']}. Goal: AP >= {GOAL_AP} within {GOAL_S:.0f} s; this run {verdict} "
        f"(final AP {final['AP']:.3f} at {final['train_s']:.0f} s of training, "
        f"{r['wall_s']:.0f} s wall with {len(r['points'])} evaluations).",
        "",
        "| iteration | training s | AP | AP50 | oLRP | β_cls |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {p['iteration']:.0f} | {p['train_s']:.0f} | {p['AP']:.3f} | {p['AP50']:.3f} "
        f"| {p['oLRP']:.3f} | {p['beta_cls']:.3f} |"
        for p in r["points"]
    ]
    lines += [
        "",
        "Intermediate points are before the schedule's learning-rate drops (they understate",
        "what a shorter schedule would reach at that time); training seconds exclude the",
        "evaluations.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
