"""What runs inside Ray for a trial, without Ray: stop markers, settings, light imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.trial import (
    STOP_MARKER,
    gpu_free_at_start,
    marker_exists,
    remove_marker,
    touch_marker,
    trial_ray_settings,
)


def test_stop_marker_round_trip(tmp_path: Path) -> None:
    marker = str(tmp_path / "store" / "trials" / "abc" / STOP_MARKER)
    assert not marker_exists(marker)
    remove_marker(marker)  # nothing to remove: no error
    touch_marker(marker)  # its folder is made (a trial that never reported)
    assert marker_exists(marker) and Path(marker).is_file()
    remove_marker(marker)
    assert not marker_exists(marker)


def test_preemption_watcher_only_off_on_one_machine() -> None:
    local, cluster = trial_ray_settings(local=True), trial_ray_settings(local=False)
    assert local["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    assert "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER" not in cluster  # nodes can be drained
    assert local["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.5"


def test_trial_module_imports_neither_mlflow_nor_torch() -> None:
    """Every trial actor and training worker imports it: no driver-only weight."""
    code = "import sys, orchestrator.trial; print('mlflow' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.split() == ["False", "False"]


def test_a_gpu_worker_reports_the_free_memory_it_found(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    assert gpu_free_at_start(torch.device("cpu")) == {}  # nothing to say on a CPU
    asked = []

    def mem_get_info(device: torch.device) -> tuple[int, int]:
        asked.append(device)
        return 3 * 2**30, 8 * 2**30  # free, total bytes

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    assert gpu_free_at_start(torch.device("cuda", 1)) == {"trial/gpu_free_mb": 3072.0}
    assert asked == [torch.device("cuda", 1)]  # the worker's own device
