"""``orchestrator/ui.py``: when ``corrtune ui`` may open a browser."""

from __future__ import annotations

import io
import sys
import webbrowser
from pathlib import Path

import pytest

from orchestrator import ui


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _never(*_: object) -> None:
    raise AssertionError("webbrowser.get was called")


@pytest.mark.parametrize(
    ("tty", "display"), [(False, ":0"), (True, None)], ids=["piped", "no-display"]
)
def test_no_browser_for_a_pipe_or_without_a_display(
    monkeypatch: pytest.MonkeyPatch, tty: bool, display: str | None
) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(sys, "stdout", _Tty() if tty else io.StringIO())
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if display:
        monkeypatch.setenv("DISPLAY", display)
    else:
        monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setattr(webbrowser, "get", _never)
    ui.open_when_up("http://127.0.0.1:9", ["http://127.0.0.1:9/x"])  # returns, opens nothing


def test_a_terminal_with_a_display_asks_for_the_browser(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = []

    def get(*_: object) -> None:
        asked.append(True)
        raise webbrowser.Error("none here")

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(sys, "stdout", _Tty())
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(webbrowser, "get", get)
    ui.open_when_up("http://127.0.0.1:9", ["http://127.0.0.1:9/x"])
    assert asked == [True]


def test_a_store_that_does_not_exist_has_no_sweep_and_is_not_created(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    assert ui.latest_sweep_links(f"sqlite:///{db}", "http://127.0.0.1:5000") is None
    assert not db.exists()
