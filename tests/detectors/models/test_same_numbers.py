"""The same seed gives the same numbers: every detector's losses, statistics and detections
over three SGD steps on the smoke preset, bit for bit against ``same_numbers.json``.

A refactor of the models must leave these exactly as they were. A change that is meant to
move them (a new default, a fixed bug) rewrites the file, and says so in its commit:

    python -m tests.detectors.models.test_same_numbers --write

(from the project root, so that its own ``detectors`` is the one imported).
The numbers are those of torch 2.14.1 on x86-64 with one CPU thread and the AVX2 kernels:
a CPU with AVX-512 would otherwise run other kernels (ATen's, oneDNN's convolutions, MKL's
matrix products) that round differently, so the numbers are computed in a child process
with those three libraries held to AVX2 (``PINNED_ISA``), and ``--write`` does the same.
Held to AVX2, an AMD and an Intel CPU still differ in the last bits from the first forward
pass (MKL picks its code path by vendor), and three SGD steps carry that into different
detections, so each CPU vendor has its own file, written by the same code
(``same_numbers.json`` on AMD EPYC, ``same_numbers.GenuineIntel.json`` on Intel Xeon, both
by models unchanged since commit 3fc4c63, which matched the AMD file in CI); another
vendor or architecture skips, saying how to record its file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from detectors.config import load_config
from detectors.models import build_detector, build_nms


def cpu_vendor() -> str:
    """``vendor_id`` of /proc/cpuinfo (``AuthenticAMD``, ``GenuineIntel``), or ``unknown``."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    return next(
        (
            line.split(":", 1)[1].strip()
            for line in text.splitlines()
            if line.startswith("vendor_id")
        ),
        "unknown",
    )


# AMD's file kept the name it had before there was one per vendor.
VENDOR = cpu_vendor()
GOLDEN = Path(__file__).with_name(
    "same_numbers.json" if VENDOR == "AuthenticAMD" else f"same_numbers.{VENDOR}.json"
)
ROOT = Path(__file__).resolve().parents[3]
# Read by each library as it loads: the same kernels on every x86-64 CPU with AVX2.
PINNED_ISA = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
NUM_CLASSES = 3
STEPS = 3

# name -> (model.name, overrides): every detector plain and with its methods switched on.
_DENSE = ("retinanet", "atss", "fcos", "foveabox", "paa")
_ANCHOR_BASED = ("retinanet", "atss", "paa")
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    **{f"{n}": (n, {}) for n in (*_DENSE, "sparse_rcnn")},
    **{f"{n}+corr": (n, {"loss.corr.weight": 0.2}) for n in (*_DENSE, "sparse_rcnn")},
    "sparse_rcnn+corr_image": (
        "sparse_rcnn",
        {"loss.corr.weight": 0.2, "loss.corr.pool": "image", "loss.corr.kind": "pearson"},
    ),
    **{
        f"{n}+dc+corr_level": (
            n,
            {"loss.dc.enabled": True, "loss.corr.weight": 0.2, "loss.corr.pool": "level"},
        )
        for n in _DENSE
    },
    **{f"{n}+iac": (n, {"assign.kind": "iac", "assign.score_thr": 0.01}) for n in _ANCHOR_BASED},
    **{f"{n}-quality": (n, {"model.quality": "none"}) for n in ("atss", "fcos", "paa")},
    "retinanet+dc_raw+smooth_l1": (
        "retinanet",
        {"loss.dc.enabled": True, "loss.dc.normalize": False, "loss.reg": "smooth_l1"},
    ),
    "fcos+giou+spearman": (
        "fcos",
        {"loss.reg": "giou", "loss.corr.weight": 0.3, "loss.corr.kind": "spearman"},
    ),
    "paa-voting": ("paa", {"model.paa_score_voting": False}),
}
NMS_KINDS = ("greedy", "soft", "cl_balanced")


def batch(seed: int, size: int = 64) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, size, size, generator=gen)
    targets = []
    for num in (3, 1):
        xy = torch.rand(num, 2, generator=gen) * size / 2
        wh = 8 + torch.rand(num, 2, generator=gen) * size / 2
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=1)
        targets.append({"boxes": boxes, "labels": torch.randint(0, NUM_CLASSES, (num,))})
    return images, targets


def _hex(value: torch.Tensor | float) -> str:
    return float(value.detach() if isinstance(value, torch.Tensor) else value).hex()


def numbers(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Losses and statistics of each step, then the detections of every NMS kind."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = load_config("smoke", overrides={"model.name": name, **overrides})
        torch.manual_seed(0)
        model = build_detector(cfg, NUM_CLASSES)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        images, targets = batch(0)
        steps = []
        for it in range(STEPS):
            model.iteration = it
            losses, stats = model(images, targets)
            total = sum(losses.values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            steps.append(
                {
                    "losses": {k: _hex(v) for k, v in losses.items()},
                    "stats": {k: _hex(v) for k, v in stats.items()},
                }
            )
        model.eval()
        images, targets = batch(1)
        detections = {}
        kinds = NMS_KINDS if name != "sparse_rcnn" else ("none",)
        for kind in kinds:
            if kind != "none":
                model.nms = build_nms(load_config("smoke", overrides={"nms.kind": kind}))
            with torch.no_grad():
                outputs = model(images, targets)
            detections[kind] = [
                {key: _hex(value.double().sum()) for key, value in sorted(out.items())}
                | {"count": len(out["scores"])}
                for out in outputs
            ]
        return {"steps": steps, "detections": detections}
    finally:
        torch.set_num_threads(threads)


def _golden() -> dict[str, Any]:
    return dict(json.loads(GOLDEN.read_text()))


def _pinned() -> bool:
    return all(os.environ.get(k) == v for k, v in PINNED_ISA.items())


def every_case() -> dict[str, Any]:
    """``numbers`` of every case, computed with the kernels held to AVX2 (in a child
    process unless this one already is: the libraries read the settings as they load)."""
    if _pinned():
        # ATen took the setting (a CPU without AVX2 would fall lower, and round otherwise).
        assert torch.backends.cpu.get_cpu_capability() == "AVX2"
        return {case: numbers(*args) for case, args in sorted(CASES.items())}
    out = subprocess.run(
        [sys.executable, "-m", "tests.detectors.models.test_same_numbers", "--print"],
        cwd=ROOT,
        env=os.environ | PINNED_ISA,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(json.loads(out.stdout))


@pytest.fixture(scope="module")
def computed() -> dict[str, Any]:
    if not GOLDEN.exists():
        pytest.skip(
            f"no golden numbers for this CPU ({VENDOR}): record {GOLDEN.name} with "
            "--write from a commit whose numbers match another vendor's file"
        )
    return every_case()


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_seed_same_numbers(case: str, computed: dict[str, Any]) -> None:
    expected = _golden()[case]
    got = computed[case]
    for step, (want, have) in enumerate(zip(expected["steps"], got["steps"])):
        assert have["losses"] == want["losses"], f"step {step}"
        # New statistics may join; the recorded ones keep their values.
        assert {k: have["stats"].get(k) for k in want["stats"]} == want["stats"], f"step {step}"
    assert got["detections"] == expected["detections"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite {GOLDEN.name}")
    parser.add_argument("--print", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args()
    result = every_case()
    text = json.dumps(result, indent=1, sort_keys=True) + "\n"
    if args.print:
        sys.stdout.write(text)
    elif args.write:
        GOLDEN.write_text(text)
    else:
        same = GOLDEN.exists() and json.loads(GOLDEN.read_text()) == result
        print("same as the file" if same else "DIFFERENT from the file")


if __name__ == "__main__":
    main()
