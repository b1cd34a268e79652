"""What a resumed sweep takes from its ledger, what it refuses, and the command that
resumes it.

A sweep records the options that shape its trials (``--preset``, ``--set``, ``--repeats``)
and where its runs live (``--tracking-uri``, ``--address``; ``--storage`` is checked where
the checkpoints are found). ``--resume`` without them restores them and says so; given,
``--preset``, ``--set`` and ``--tracking-uri`` must match; ``--address`` may differ (a
cluster can move; ``--address local`` runs on an embedded Ray); ``--repeats`` may grow
(more seeds), never shrink. A changed space is refused with what changed, key by key.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path
from typing import Any

from detectors.config import ConfigError
from orchestrator.ledger import Ledger
from orchestrator.options import SweepOptions
from orchestrator.space import Space
from orchestrator.tracking import tracking_uri

RECORDED = ("preset", "overrides", "repeats", "tracking_uri", "address")


def invocation(opts: SweepOptions) -> dict[str, Any]:
    """What the ledger records of an invocation: the options as the user gave them."""
    return {
        "preset": opts.preset,
        "overrides": dict(opts.overrides),
        "repeats": opts.repeats,
        "tracking_uri": opts.tracking_uri,
        "address": opts.address,
        "storage": opts.storage,
    }


def _shown(name: str, value: Any) -> str:
    if name == "overrides":
        return " ".join(f"--set {k}={_yaml(v)}" for k, v in value.items()) or "no --set"
    return f"--{name.replace('_', '-')} {value}" if value not in (None, "") else f"no --{name}"


def _yaml(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def restore(opts: SweepOptions, ledger: Ledger, space_name: str) -> tuple[SweepOptions, str]:
    """``opts`` of a ``--resume`` completed from the ledger; and a line saying what was
    restored ("" if nothing). Raises ConfigError for a given option that must match."""
    recorded = ledger.invocation
    if not opts.resume or not recorded:
        return opts, ""
    restored: dict[str, Any] = {}
    for name in RECORDED:
        given, before = getattr(opts, name), recorded.get(name)
        if before in (None, "", {}):
            continue
        if given in (None, "", {}):
            restored[name] = before
            continue
        if name == "address" or given == before:
            continue
        if name == "repeats":
            if given < before:
                raise ConfigError(
                    "--repeats",
                    "repeats",
                    f"sweep {space_name!r} runs {before} seeds per configuration; it cannot "
                    "run fewer (raise --repeats to add seeds)",
                )
            continue
        if name == "tracking_uri" and tracking_uri(given, opts.workdir) == tracking_uri(
            before, opts.workdir
        ):
            continue
        raise ConfigError(
            f"--{name.replace('_', '-')}" if name != "overrides" else "--set",
            name,
            f"sweep {space_name!r} was started with {_shown(name, before)}; resume it with "
            f"the same (or leave it out: --resume restores it), not {_shown(name, given)}",
        )
    if not restored:
        return opts, ""
    line = "resuming with the options the sweep was started with: " + " ".join(
        _shown(n, v) for n, v in restored.items()
    )
    return dataclasses.replace(opts, **restored), line


def check_space(space: Space, ledger: Ledger, sweep_folder: Path, workdir: Path) -> None:
    """Refuse to resume a sweep whose space changed: say what changed, what a resume would
    keep, and how to start another sweep without losing this one."""
    if not ledger.space_digest or ledger.space_digest == space.digest():
        return
    changes = _differences(ledger.space, space.definition()) if ledger.space else []
    what = (
        "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
        if changes
        else f"hash {ledger.space_digest} -> {space.digest()}"
    )
    done = len(ledger.finished())
    raise ConfigError(
        space.path,
        "parameters",
        f"the space changed since sweep {space.name!r} started: {what}. Undo the change to "
        f"resume it ({done} finished trial(s) kept), or give the space another `name` to "
        f"start a new sweep beside it (the state in {sweep_folder.relative_to(workdir)} and "
        "the MLflow runs of this one stay as they are)",
    )


def _differences(before: Any, after: Any, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs between two nested mappings."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[str] = []
        for key in sorted(set(before) | set(after), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in after:
                out.append(f"{name} removed (was {json.dumps(before[key])})")
            elif key not in before:
                out.append(f"{name} added ({json.dumps(after[key])})")
            else:
                out += _differences(before[key], after[key], name)
        return out
    if before != after:
        return [f"{prefix}: {json.dumps(before)} -> {json.dumps(after)}"]
    return []


def resume_command(space_path: str | Path, opts: SweepOptions, storage_given: str | None) -> str:
    """The exact command that resumes: every option the sweep was started with, repeated
    (``--resume`` would restore them; written out, the line works as it is, anywhere)."""
    words = ["corrtune", "sweep", str(space_path)]
    if opts.preset:
        words += ["--preset", opts.preset]
    for key, value in opts.overrides.items():
        words += ["--set", f"{key}={_yaml(value)}"]
    if opts.repeats:
        words += ["--repeats", str(opts.repeats)]
    if storage_given:
        words += ["--storage", storage_given]
    if opts.tracking_uri:
        words += ["--tracking-uri", opts.tracking_uri]
    if opts.address:
        words += ["--address", opts.address]
    return shlex.join([*words, "--resume"])


def checkpoint_storage(given: str | None, ledger: Ledger, folder: Path) -> str:
    """Where Ray keeps the sweep's checkpoints: ``--storage``, else where an earlier run of
    the sweep kept them (a resume must look there), else ``<sweep folder>/ray``."""
    if given and "://" not in given:
        given = str(Path(given).expanduser().resolve())
    if given and ledger.storage and given != ledger.storage:
        raise ConfigError(
            "--storage",
            "storage",
            f"this sweep keeps its checkpoints in {ledger.storage}; resume it with that "
            "--storage (or none)",
        )
    return given or ledger.storage or str(folder / "ray")
