"""The MLflow UI's two views of the latest sweep, as links ``corrtune ui`` prints.

- its runs, sorted by the space's metric (best first): the runs page showing the sweep's
  parent run expanded, its trials under it, with the final metrics' columns (a shared
  view, below);
- MLflow's compare view of all its children: parallel coordinates, scatter plots and the
  diff of their params and metrics.

The latest sweep is the parent run (tag ``corrtune.role = sweep``) started last in the
store, over every experiment.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
import urllib.request
import webbrowser
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from detectors.config import ConfigError
from orchestrator.results import LOWER_IS_BETTER


@dataclass(frozen=True)
class SweepLinks:
    experiment: str
    parent_run_id: str
    child_run_ids: list[str]
    runs_sorted: str  # the runs page, sorted by the metric
    compare: str  # the compare view of every child


def latest_sweep_links(uri: str, base_url: str) -> SweepLinks | None:
    """The links into the UI at ``base_url`` for the latest sweep in store ``uri`` (None:
    the store holds no sweep). A SQLite store that does not exist yet is not created (a
    fresh store's schema migration would delay the server behind it by many seconds)."""
    if uri.startswith("sqlite:///") and not os.path.exists(uri.removeprefix("sqlite:///")):
        return None
    client = MlflowClient(uri)
    try:
        experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    except MlflowException as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise ConfigError("--tracking-uri", "tracking_uri", f"cannot read {uri}: {why}") from None
    if not experiments:
        return None
    parents = client.search_runs(
        list(experiments),
        filter_string="tags.`corrtune.role` = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not parents:
        return None
    parent = parents[0]
    experiment_id, parent_id = parent.info.experiment_id, parent.info.run_id
    children = client.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
        max_results=1000,
    )
    child_ids = [c.info.run_id for c in children]
    metric = parent.data.params.get("space.metric", "AP")
    space = parent.data.tags.get("corrtune.space", experiments[experiment_id])
    share_key = _share_view(client, experiment_id, parent_id, space, metric)
    base = base_url.rstrip("/")
    compare = urlencode(
        {"runs": json.dumps(child_ids), "experiments": json.dumps([experiment_id])},
        quote_via=quote,
    )
    return SweepLinks(
        experiment=experiments[experiment_id],
        parent_run_id=parent_id,
        child_run_ids=child_ids,
        runs_sorted=f"{base}/#/experiments/{experiment_id}/runs?viewStateShareKey={share_key}",
        compare=f"{base}/#/compare-runs?{compare}",
    )


# The MLflow UI's shared views (its runs page's Share button): an experiment tag
# ``mlflow.sharedViewState.<key>`` holding the view as JSON, opened by
# ``?viewStateShareKey=<key>``. Only a shared view sets the runs table's columns (MLflow 3
# shows no metric column by default); tests/orchestrator/test_ui_browser.py checks, in a
# browser, that MLflow still reads it.
SHARED_VIEW_TAG = "mlflow.sharedViewState."


def _share_view(
    client: MlflowClient, experiment_id: str, parent_id: str, space: str, metric: str
) -> str:
    """Save the view of the sweep's trials sorted by ``final/<metric>``, best first, with
    its columns; the key that opens it."""
    columns = [f"metrics.`final/{metric}`", "metrics.`final/AP50`", "metrics.`final/oLRP`"]
    view = {
        # The parent and its children (each sweep's runs carry its space's name), the
        # parent expanded: MLflow hides a parent's children until it is expanded by hand.
        "searchFilter": f"tags.`corrtune.space` = '{space}'",
        "runsExpanded": {parent_id: True},
        "orderByKey": f"metrics.`final/{metric}`",
        "orderByAsc": metric in LOWER_IS_BETTER,
        "selectedColumns": list(dict.fromkeys(columns)),
    }
    value = json.dumps(view, sort_keys=True)
    key = "corrtune" + hashlib.sha256(value.encode()).hexdigest()[:24]
    client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + key, value)
    return key


def open_when_up(base_url: str, urls: Sequence[str], timeout_s: float = 120.0) -> None:
    """Open ``urls`` in the user's browser once the server at ``base_url`` answers (in a
    thread); nothing where no browser exists (a server, CI, a shell without a display) or
    the output is not a terminal (a pipe, a process manager): no text-mode browser is ever
    started in the terminal's place."""
    no_display = sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )
    if no_display or not sys.stdout.isatty():
        return
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return

    def wait_then_open() -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{base_url}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            return
        for url in urls:
            browser.open(url)

    threading.Thread(target=wait_then_open, name="open-browser", daemon=True).start()
