"""Starting or joining Ray for a sweep (the driver's side).

Without ``--address``/``RAY_ADDRESS`` corrtune always starts a fresh embedded Ray in this
process, even when another one runs on the machine; with one, it joins that cluster.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from detectors.config import ConfigError
from orchestrator import ray_compat

# Where a state-API query goes on a Ray without a dashboard (the API server; the embedded
# one, or a cluster started without it): nowhere. Ray Train's placement-group cleaner asks
# the state API every second whether its controller lives; with no address it looks for a
# cluster for 40 s per question instead, and each trial's shutdown waits 12 s for it to
# stop. With an address where nothing listens, each question fails at once (the cleaner
# could not have told either way) and the cleaner stops when asked.
NO_API_SERVER = "http://127.0.0.1:0"


def is_local(address: str | None) -> bool:
    """Whether a sweep with ``--address address`` runs on an embedded Ray."""
    return not address and not os.environ.get("RAY_ADDRESS")


def start_ray(address: str | None, verbose: bool, tuned: bool = True) -> bool:
    """Join ``address`` / ``RAY_ADDRESS`` or start an embedded Ray; True if this call
    connected (the caller then disconnects; a joined cluster keeps running)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    level = logging.INFO if verbose else logging.ERROR
    kwargs: dict[str, Any] = {
        "log_to_driver": verbose,
        "logging_level": level,
        "include_dashboard": False,
    }
    env = {"PYTHONWARNINGS": "ignore"}
    if address:
        try:
            context = ray.init(address=address, runtime_env={"env_vars": env}, **kwargs)
            if tuned and not context.dashboard_url:  # a cluster without the state API too
                ray.shutdown()
                env[ray_compat.API_SERVER_ADDRESS] = NO_API_SERVER  # for this job's processes
                ray.init(address=address, runtime_env={"env_vars": env}, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(
                "--address", "address", f"cannot join the Ray cluster at {address!r}: {first}"
            ) from None
        return True
    # "local": always a fresh embedded instance. A bare ray.init() would attach to any
    # cluster a `ray start` left running on this machine (and die with it).
    if not tuned:
        ray.init(address="local", runtime_env={"env_vars": env}, **kwargs)
        return True
    # Variables set while Ray starts reach every worker process (the raylet starts them
    # with its own environment) without a job runtime_env, which would keep the raylet
    # from handing its pre-started worker processes to the first actors.
    env.setdefault(ray_compat.API_SERVER_ADDRESS, NO_API_SERVER)
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update({k: v for k, v in env.items() if not os.environ.get(k)})
    try:
        ray.init(address="local", **kwargs)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return True


def stop_ray() -> None:
    import ray

    ray.shutdown()


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))
