"""The one place that touches Ray's (and Tune's) internals, and checks them loudly.

corrtune relies on a few things Ray does not promise to keep: private modules and names, and
environment variables read by Ray's internals. Each is named here, used only through this
module, and checked by :func:`check` when a sweep starts: a Ray upgrade that removes or
renames one stops the sweep with one line naming the Ray version and the missing piece,
instead of a sweep that hangs or silently loses what the internal was for.

What each internal is for:

- ``__mixins__`` on a Tune function trainable (``wrap_function`` adds them as base classes):
  the trial actor's ``cleanup`` ends its Ray Train run before Tune ends the actor, so a
  stopped trial frees its workers' resources (without it ASHA sweeps hang).
- ``ray.train._internal.session.get_session()`` and its session's ``training_thread`` and
  ``_inter_actor_queue``: in that cleanup, the thread running the trial and the queue of
  its results, drained while the run ends (or the workers block on a full queue).
- The same queue once more as the trainable returns: Tune's function session takes an item
  from it and puts it on a one-slot result queue that only the same thread drains, so the
  trainable's own last report (Tune's "done" marker), put there first when Ray Train's last
  result still sat in the queue (a driver slow to ask for results: a tracking-server
  outage, a loaded machine), deadlocks the trial actor. :func:`wait_results_taken` holds
  the trainable until Tune took that last result.
- ``TrialProgressCallback`` passed to Tune replaces the default one, which prints
  "Trial ... completed. Last result: ..." lines whatever the verbosity.
- Environment variables read by Ray Train's controller (health-check interval, metrics,
  preemption watcher, how long one start of a worker group waits for its resources), by
  Ray's state API client (``RAY_API_SERVER_ADDRESS``) and by Tune (strict metric checking,
  automatic logger callbacks, the old output engine).
- The head node's resource (``node:__internal_head__``, Ray Serve's way to pin its
  controller there): each trial's Tune actor, and so its Ray Train controller, which Ray
  Train places on the actor's node, asks for a sliver of it. A lost worker node then costs
  a trial only its workers, which Ray Train restarts from the last checkpoint.
- ``WorkerGroupStartupTimeoutError`` (Ray Train's private error for a worker group whose
  resources never came): a trial that ends on it fails with corrtune's own one-line
  reason (a lost node that did not come back) instead of Ray's paragraph.
"""

from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Callable
from typing import Any

from detectors.config import ConfigError

# Ray Train (V2) controller settings: module, constant, the variable it names.
HEALTH_CHECK_INTERVAL = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
METRICS_ENABLED = "RAY_TRAIN_METRICS_ENABLED"
PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
WORKER_GROUP_START_TIMEOUT = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
API_SERVER_ADDRESS = "RAY_API_SERVER_ADDRESS"
# Tune settings (its TUNE_ENV_VARS / AIR_ENV_VARS).
STRICT_METRIC_CHECKING_OFF = "TUNE_DISABLE_STRICT_METRIC_CHECKING"
AUTO_LOGGERS_OFF = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
NEW_OUTPUT = "RAY_AIR_NEW_OUTPUT"

_ENV_CONSTANTS = [  # (module, constant holding the variable's name, the name we set)
    ("ray.train.v2._internal.constants", "HEALTH_CHECK_INTERVAL_S_ENV_VAR", HEALTH_CHECK_INTERVAL),
    ("ray.train.v2._internal.constants", "METRICS_ENABLED_ENV_VAR", METRICS_ENABLED),
    ("ray.train.v2._internal.constants", "ENABLE_PREEMPTION_WATCHER_ENV_VAR", PREEMPTION_WATCHER),
    (
        "ray.train.v2._internal.constants",
        "WORKER_GROUP_START_TIMEOUT_S_ENV_VAR",
        WORKER_GROUP_START_TIMEOUT,
    ),
    (
        "ray._private.ray_constants",
        "RAY_API_SERVER_ADDRESS_ENVIRONMENT_VARIABLE",
        API_SERVER_ADDRESS,
    ),
]
# The resource only the head node has (ray._common.constants.HEAD_NODE_RESOURCE_NAME).
HEAD_NODE_RESOURCE = "node:__internal_head__"

_ENV_LISTS = [  # (module, list of the variables it reads, the names we set)
    ("ray.tune.constants", "TUNE_ENV_VARS", (STRICT_METRIC_CHECKING_OFF, AUTO_LOGGERS_OFF)),
    ("ray.air.constants", "AIR_ENV_VARS", (NEW_OUTPUT,)),
]


class RayCompatError(ConfigError):
    """An internal corrtune relies on is missing or changed in the installed Ray."""

    def __init__(self, missing: str) -> None:
        import ray

        super().__init__(
            f"ray {ray.__version__}",
            "",
            f"{missing}; corrtune is tested with the Ray of requirements.lock "
            "(bash scripts/setup.sh installs it)",
        )


# ------------------------------------------------------------------------ the internals
def training_thread() -> Any:
    """The thread running this trial actor's function trainable (None outside one)."""
    from ray.train._internal.session import get_session

    session = get_session()
    return None if session is None else session.training_thread


def result_queue() -> Any:
    """The queue between this trial's Ray Train run and Tune (None until created)."""
    from ray.train._internal.session import get_session

    session = get_session()
    return None if session is None else session._inter_actor_queue


def wait_results_taken(poll_s: float = 0.2, settle_s: float = 0.5) -> None:
    """Return once Tune took every result Ray Train put in this trial's queue (see the
    module's docstring): Tune's session moves one from that queue to its own result queue
    right after taking it, hence ``settle_s`` more."""
    results = result_queue()
    if results is None:
        return
    while True:
        try:
            if results.empty():
                break
        except Exception:  # the queue's actor is gone (the trial is being ended): no taker
            return
        time.sleep(poll_s)  # until Tune's driver asks for results again (after an outage)
    time.sleep(settle_s)


def workers_never_placed(error: BaseException) -> bool:
    """Whether ``error`` (raised by ``TorchTrainer.fit``) says the run's worker group could
    not get its resources in time, on its last allowed start."""
    from ray.train import ControllerError
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    return isinstance(error, ControllerError) and isinstance(
        error.controller_failure, WorkerGroupStartupTimeoutError
    )


def with_mixins(trainable: Callable[..., Any], *mixins: type) -> Callable[..., Any]:
    """``trainable`` whose Tune actor class also inherits ``mixins`` (Tune's hook)."""
    trainable.__mixins__ = mixins  # type: ignore[attr-defined]
    return trainable


def quiet_progress_callback() -> Any:
    """A Tune progress callback that prints nothing: passed to Tune, it replaces the
    default one (whose "Trial ... completed" lines ignore the verbosity setting)."""
    from ray.tune.progress_reporter import TrialProgressCallback

    class QuietTrialProgress(TrialProgressCallback):
        def _print(self, msg: str) -> None:
            pass

        def print_result(self, *args: Any, **kwargs: Any) -> None:
            pass

    return QuietTrialProgress()


# ---------------------------------------------------------------------------- checking
def _check_env_names() -> list[str]:
    problems = []
    for module, constant, name in _ENV_CONSTANTS:
        try:
            value = getattr(importlib.import_module(module), constant)
        except (ImportError, AttributeError):
            problems.append(f"{module}.{constant} (the variable {name}) is gone")
            continue
        if value != name:
            problems.append(f"{module}.{constant} is now {value!r}, not {name!r}")
    for module, listing, names in _ENV_LISTS:
        try:
            known = set(getattr(importlib.import_module(module), listing))
        except (ImportError, AttributeError):
            problems.append(f"{module}.{listing} is gone")
            continue
        problems += [f"{module} no longer reads {n}" for n in names if n not in known]
    return problems


def _check_head_resource() -> list[str]:
    try:
        from ray._common.constants import HEAD_NODE_RESOURCE_NAME
    except ImportError:
        return ["ray._common.constants.HEAD_NODE_RESOURCE_NAME is gone"]
    if HEAD_NODE_RESOURCE_NAME != HEAD_NODE_RESOURCE:
        return [f"the head node's resource is now {HEAD_NODE_RESOURCE_NAME!r}"]
    return []


def _check_startup_timeout_error() -> list[str]:
    try:
        from ray.train import ControllerError
        from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
    except ImportError as exc:
        return [f"Ray Train's worker-group start-up timeout error is gone ({exc})"]
    wrapped = ControllerError(WorkerGroupStartupTimeoutError(2))
    if getattr(wrapped, "controller_failure", None) is None:
        return ["ray.train.ControllerError no longer holds its controller_failure"]
    return []


def _check_mixins() -> list[str]:
    from ray.tune.trainable.function_trainable import wrap_function

    class Probe:
        pass

    def probe(config: dict[str, Any]) -> None:
        pass

    try:
        cls = wrap_function(with_mixins(probe, Probe))
    except Exception as exc:  # an API change: say what it was
        return [f"Tune's wrap_function failed on a probe trainable ({exc})"]
    if not issubclass(cls, Probe):
        return ["Tune's function trainables no longer take __mixins__ as base classes"]
    return []


def _check_session() -> list[str]:
    try:
        from ray.train._internal import session
    except ImportError:
        return ["ray.train._internal.session is gone"]
    if not callable(getattr(session, "get_session", None)):
        return ["ray.train._internal.session.get_session is gone"]
    source = inspect.getsource(session._TrainSession)
    return [
        f"the Tune function session no longer has {name}"
        for name in ("self.training_thread", "self._inter_actor_queue")
        if name not in source
    ]


def _check_progress_callback() -> list[str]:
    from ray.tune.progress_reporter import TrialProgressCallback
    from ray.tune.utils import callback

    source = inspect.getsource(callback._create_default_callbacks)
    if "isinstance(c, TrialProgressCallback)" not in source:
        return ["Tune adds its TrialProgressCallback even when one is passed"]
    if not callable(getattr(TrialProgressCallback, "_print", None)):
        return ["TrialProgressCallback._print is gone"]
    return []


CHECKS: dict[str, Callable[[], list[str]]] = {
    "environment variables": _check_env_names,
    "function-trainable mixins": _check_mixins,
    "Tune's function session": _check_session,
    "Tune's progress callback": _check_progress_callback,
    "the head node's resource": _check_head_resource,
    "Ray Train's start-up timeout error": _check_startup_timeout_error,
}


def problems() -> list[str]:
    """Every internal corrtune relies on that the installed Ray lacks (empty: all there)."""
    found = []
    for check in CHECKS.values():
        found += check()
    return found


def check() -> None:
    """Raise :class:`RayCompatError` naming the first missing internal."""
    found = problems()
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise RayCompatError(found[0] + more)
