"""What the GPU check runs on: versions, the device, torchsort's CUDA extension, and which
copy of the project Python imports (one JSON object, to ``--out``).

    python benchmarks/gpu_env.py --out results/bench/gpu/env.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import detectors


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def torchsort_cuda() -> bool:
    try:
        import torchsort.isotonic_cuda  # noqa: F401  (the compiled CUDA extension)
    except ImportError:
        return False
    return True


def describe() -> dict[str, object]:
    env: dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cpu": cpu_name(),
        "torchsort_cuda": torchsort_cuda(),
        "detectors": str(Path(detectors.__file__).resolve().parent),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env |= {
            "device_name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gb": props.total_memory / 2**30,
            "device_count": torch.cuda.device_count(),
        }
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    env = describe()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(env, indent=2) + "\n")
    print(json.dumps(env))


if __name__ == "__main__":
    main()
