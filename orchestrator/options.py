"""The options of one ``corrtune sweep`` invocation (the command line's, as one object)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SweepOptions:
    preset: str | None = None  # replaces the space's base preset
    overrides: dict[str, Any] = field(default_factory=dict)  # --set, applied to every trial
    repeats: int | None = None  # --repeats: replaces the space's repeats (may only grow)
    resume: bool = False
    address: str | None = None  # Ray cluster; None = RAY_ADDRESS or an embedded local Ray
    # Ray storage (path or URI): checkpoints and Tune's state; default: the sweep's folder
    # (<workdir>/.corrtune/sweeps/<name>/ray), or where an earlier run of the sweep put them.
    storage: str | None = None
    tracking_uri: str | None = None
    workdir: Path = field(default_factory=Path.cwd)
    results_dir: Path | None = None  # default <workdir>/results
    verbose: bool = False
    max_concurrent: int = 0  # overrides the space's max_concurrent when > 0
    # False: Ray's own defaults instead of corrtune's settings that cut per-trial start-up
    # (trial_ray_settings, NO_API_SERVER, reused trial actors); benchmarks compare the two.
    tuned_ray: bool = True
    # Tests only: trial key -> iteration after whose report that trial's workers die once.
    inject_worker_fault: dict[str, int] = field(default_factory=dict)
