"""The sweep's ledger: ``.corrtune/sweeps/<name>/ledger.json``, what a resume builds on.

It maps each trial key to its MLflow run id, status and final metrics, and keeps what the
sweep was started with (the space as it was, the options that shape its trials, where its
checkpoints are), so a resumed sweep reuses its parent and child runs, restores those
options, and says exactly what changed when something did. Written atomically after every
change: a crash leaves the previous version, never half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detectors import jsonio

# Ledger statuses of trials that a resumed sweep does not run again. STOPPED: ended early by
# the scheduler (ASHA); its MLflow run is FINISHED with a ``corrtune.stopped_at`` tag.
ENDED = ("FINISHED", "STOPPED")


def ledger_path(workdir: Path, name: str) -> Path:
    return sweep_dir(workdir, name) / "ledger.json"


def sweep_dir(workdir: Path, name: str) -> Path:
    """Where sweep ``name`` of ``workdir`` keeps its state (ledger, default checkpoints)."""
    return workdir / ".corrtune" / "sweeps" / name


@dataclass
class Ledger:
    """Trial key -> run id (and status), persisted atomically after every change."""

    path: Path
    parent_run_id: str = ""
    space_digest: str = ""
    trials: dict[str, dict[str, Any]] = field(default_factory=dict)
    sweep_wall_s: float = 0.0  # summed over every invocation (resumes included)
    storage: str = ""  # where Ray keeps the sweep's checkpoints (a resume looks there)
    # What the sweep was started with: the space's definition (orchestrator.space.Space
    # .definition()) and the options that shape its trials (orchestrator.resume).
    space: dict[str, Any] = field(default_factory=dict)
    invocation: dict[str, Any] = field(default_factory=dict)
    repeats: int = 0  # seeds per configuration planned so far (a resume may add, not drop)

    @classmethod
    def load(cls, path: Path) -> Ledger:
        if not path.exists():
            return cls(path)
        data = json.loads(path.read_text())
        return cls(
            path,
            data.get("parent_run_id", ""),
            data.get("space_digest", ""),
            data.get("trials", {}),
            float(data.get("sweep_wall_s", 0.0)),
            str(data.get("storage", "")),
            dict(data.get("space", {})),
            dict(data.get("invocation", {})),
            int(data.get("repeats", 0)),
        )

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "parent_run_id": self.parent_run_id,
            "space_digest": self.space_digest,
            "trials": self.trials,
            "sweep_wall_s": self.sweep_wall_s,
            "storage": self.storage,
            "space": self.space,
            "invocation": self.invocation,
            "repeats": self.repeats,
        }
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".ledger-")
        with os.fdopen(fd, "w") as f:
            f.write(jsonio.dumps(payload, indent=2, sort_keys=True, default=str))
        os.replace(tmp, self.path)

    def finished(self) -> set[str]:
        """Trials that ended for good: finished, or stopped early by the scheduler (ASHA
        decided they were not worth finishing; a resume does not run them again)."""
        return {k for k, v in self.trials.items() if v.get("status") in ENDED}

    def failed(self) -> list[str]:
        return sorted(k for k, v in self.trials.items() if v.get("status") == "FAILED")
