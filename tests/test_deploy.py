"""deploy/: the Ray cluster-launcher YAML, the KubeRay RayJob and its image.

Nothing is deployed: each file is loaded, every command it runs is parsed by the command
line it names (corrtune's, Ray's, MLflow's), and the versions it names are the lock's.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


def _cluster() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "cluster.yaml").read_text()))


def _rayjob() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "rayjob.yaml").read_text()))


def _parses(command: click.Command, name: str, args: list[str]) -> None:
    """``args`` are valid for ``command`` (a subcommand path is followed), or it fails."""
    ctx = command.make_context(name, list(args), resilient_parsing=False)
    if isinstance(command, click.Group):
        sub_name, sub, rest = command.resolve_command(ctx, ctx.protected_args + ctx.args)
        assert sub is not None, f"{name}: no subcommand {sub_name}"
        _parses(sub, str(sub_name), rest)


def _corrtune_words(command: str) -> list[str]:
    words = shlex.split(command)
    start = next(i for i, w in enumerate(words) if w.endswith("corrtune"))
    return words[start + 1 :]


def _check_corrtune(command: str) -> None:
    import typer.main

    from orchestrator.cli import app

    words = _corrtune_words(command)
    _parses(typer.main.get_command(app), "corrtune", words)
    if words[0] == "sweep":
        space = words[1]
        assert (ROOT / space).exists(), f"{space} is not in the project"
        preset = words[words.index("--preset") + 1] if "--preset" in words else None
        if preset:
            assert (ROOT / "detectors/presets" / f"{preset}.yaml").exists(), preset


def _commands(config: dict[str, Any], *sections: str) -> list[str]:
    return [str(c) for s in sections for c in config.get(s) or []]


def test_cluster_yaml_is_a_valid_cluster_launcher_config() -> None:
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = _cluster()
    jsonschema.validate(config, schema)  # the schema `ray up` checks the file against
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert workers and all(t["max_workers"] >= 1 for t in workers)
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}  # no trial workers


def test_every_node_runs_setup_sh_at_one_pinned_commit() -> None:
    setup = _commands(_cluster(), "setup_commands")
    checkout = [c for c in setup if "git checkout" in c]
    assert len(checkout) == 1
    commit = checkout[0].split()[-1]
    assert re.fullmatch(r"[0-9a-f]{40}", commit), commit  # pinned: no branch, no tag
    assert any(c.endswith("bash scripts/setup.sh") for c in setup)
    assert (ROOT / "scripts/setup.sh").exists()
    # The same commit is the image's tag in the RayJob.
    images = {
        c["image"]
        for spec in _pod_specs(_rayjob())
        for c in spec["containers"]  # head and workers
    }
    assert images == {f"corrtune:{commit}"}
    # A commit of this repository (where its history is at hand).
    git = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--is-shallow-repository"],
        capture_output=True,
        text=True,
    )
    if git.returncode == 0 and git.stdout.strip() == "false":
        found = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"])
        assert found.returncode == 0, f"{commit} is not a commit of this repository"


def _pod_specs(job: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = job["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [g["template"]["spec"] for g in groups]


def test_cluster_commands_parse_with_the_tools_they_call() -> None:
    from mlflow.cli import cli as mlflow_cli
    from ray.scripts.scripts import cli as ray_cli

    config = _cluster()
    commands = _commands(
        config, "head_start_ray_commands", "worker_start_ray_commands", "setup_commands"
    )
    tools = {"ray": ray_cli, "mlflow": mlflow_cli}
    checked = set()
    for command in commands:
        for part in re.split(r"&&|;", command.replace("$RAY_HEAD_IP", "10.0.0.1")):
            words = shlex.split(part.split(">", 1)[0])
            words = words[1:] if words[:1] == ["nohup"] else words
            if words and words[0].startswith(".venv/bin/"):
                tool = words[0].removeprefix(".venv/bin/")
                assert Path(sys.executable).with_name(tool).exists(), f"no {tool} in .venv"
                _parses(tools[tool], tool, words[1:])
                checked.add(f"{tool} {words[1]}")
    assert {"ray start", "mlflow server"} <= checked
    # The sweep the file documents (`# corrtune-sweep: ...`) parses with corrtune's CLI.
    documented = [
        line.split("corrtune-sweep:", 1)[1]
        for line in (DEPLOY / "cluster.yaml").read_text().splitlines()
        if line.startswith("# corrtune-sweep:")
    ]
    assert len(documented) == 1
    _check_corrtune(documented[0])


def test_rayjob_runs_a_corrtune_sweep_on_the_locks_ray() -> None:
    job = _rayjob()
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    _check_corrtune(job["spec"]["entrypoint"])
    assert _corrtune_words(job["spec"]["entrypoint"])[0] == "sweep"
    lock = _lock()
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == lock["ray"]
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert all(
        "nvidia.com/gpu" in c["resources"]["limits"]
        for g in workers
        for c in g["template"]["spec"]["containers"]
    )


def test_the_image_is_the_locks_ray_and_python_with_the_venv_first() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^FROM rayproject/ray:(\S+)-py(\d)(\d+)-gpu$", dockerfile, re.M)
    assert base is not None, "FROM rayproject/ray:<ray>-py<python>-gpu"
    assert base.group(1) == _lock()["ray"]
    python = (int(base.group(2)), int(base.group(3)))
    assert (3, 11) <= python < (3, 13)  # pyproject's requires-python
    assert "RUN bash scripts/setup.sh" in dockerfile
    assert "ENV PATH=/app/.venv/bin:$PATH" in dockerfile  # KubeRay's `ray start` is the lock's


@pytest.mark.parametrize("url", ["s3://"])
def test_s3_storage_in_the_deploy_files_has_its_client_in_the_lock(url: str) -> None:
    texts = [(DEPLOY / n).read_text() for n in ("cluster.yaml", "rayjob.yaml")]
    assert any(url in t for t in texts)
    # pyarrow's S3 filesystem (Ray's storage) and boto3 (MLflow's S3 artifacts).
    assert {"pyarrow", "boto3"} <= set(_lock())
