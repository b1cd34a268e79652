"""What --resume restores from the ledger, what it refuses, and the command it prints."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import pytest

from detectors.config import ConfigError
from orchestrator.ledger import Ledger
from orchestrator.options import SweepOptions
from orchestrator.resume import check_space, invocation, restore, resume_command
from orchestrator.space import load_space

SPACE = """
name: demo
base: smoke
parameters:
  loss.corr.weight: {values: [0.0, 0.2]}
"""


def _ledger(tmp_path: Path, **given: object) -> Ledger:
    ledger = Ledger(tmp_path / "ledger.json")
    ledger.invocation = invocation(SweepOptions(**given))  # type: ignore[arg-type]
    return ledger


def test_omitted_options_come_back_from_the_ledger_and_it_says_so(tmp_path: Path) -> None:
    ledger = _ledger(
        tmp_path, preset="smoke", overrides={"train.iterations": 3}, tracking_uri="http://x:1"
    )
    opts, said = restore(SweepOptions(resume=True, workdir=tmp_path), ledger, "demo")
    assert opts.preset == "smoke"
    assert opts.overrides == {"train.iterations": 3}
    assert opts.tracking_uri == "http://x:1"
    assert said.startswith("resuming with the options the sweep was started with:")
    assert "--preset smoke" in said and "--set train.iterations=3" in said


def test_given_options_that_match_are_fine_and_say_nothing(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, preset="smoke")
    opts, said = restore(SweepOptions(resume=True, preset="smoke"), ledger, "demo")
    assert (opts.preset, said) == ("smoke", "")


@pytest.mark.parametrize(
    ("given", "key"),
    [
        ({"preset": "tiny"}, "--preset"),
        ({"overrides": {"train.iterations": 9}}, "--set"),
        ({"tracking_uri": "http://other:5000"}, "--tracking-uri"),
    ],
)
def test_a_different_option_that_must_match_is_refused(
    tmp_path: Path, given: dict, key: str
) -> None:
    ledger = _ledger(
        tmp_path, preset="smoke", overrides={"train.iterations": 3}, tracking_uri="http://x:1"
    )
    with pytest.raises(ConfigError) as raised:
        restore(SweepOptions(resume=True, **given), ledger, "demo")
    assert raised.value.source == key
    assert "was started with" in str(raised.value)


def test_repeats_may_grow_but_never_shrink(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, repeats=3)
    grown, _ = restore(SweepOptions(resume=True, repeats=5), ledger, "demo")
    assert grown.repeats == 5
    kept, said = restore(SweepOptions(resume=True), ledger, "demo")
    assert kept.repeats == 3 and "--repeats 3" in said
    with pytest.raises(ConfigError, match="cannot run fewer"):
        restore(SweepOptions(resume=True, repeats=2), ledger, "demo")


def test_another_address_is_allowed(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, address="10.0.0.1:6379")
    opts, _ = restore(SweepOptions(resume=True, address="local"), ledger, "demo")
    assert opts.address == "local"


def test_a_changed_space_names_what_changed_and_what_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "demo.yaml"
    path.write_text(SPACE)
    before = load_space(path)
    ledger = Ledger(tmp_path / "ledger.json")
    ledger.space_digest, ledger.space = before.digest(), before.definition()
    ledger.trials = {"k": {"status": "FINISHED"}}
    path.write_text(SPACE.replace("[0.0, 0.2]", "[0.0, 0.3]"))
    folder = tmp_path / ".corrtune/sweeps/demo"
    with pytest.raises(ConfigError) as raised:
        check_space(load_space(path), ledger, folder, tmp_path)
    text = str(raised.value)
    assert "parameters.loss.corr.weight.values: [0.0, 0.2] -> [0.0, 0.3]" in text
    assert "1 finished trial(s) kept" in text
    assert "delete" not in text.lower()  # never advises throwing the state away
    # The preset is part of the space's definition: another one is a change too.
    with pytest.raises(ConfigError, match='base: "smoke" -> "tiny"'):
        check_space(load_space(path, preset="tiny"), ledger, folder, tmp_path)


def test_repeats_and_control_are_not_changes_of_the_space(tmp_path: Path) -> None:
    path = tmp_path / "demo.yaml"
    path.write_text(SPACE)
    ledger = Ledger(tmp_path / "ledger.json")
    before = load_space(path)
    ledger.space_digest, ledger.space = before.digest(), before.definition()
    path.write_text(SPACE + "repeats: 4\ncontrol: {loss.corr.weight: 0.0}\n")
    check_space(load_space(path), ledger, tmp_path / "f", tmp_path)  # no error


def test_the_resume_command_repeats_every_option_and_parses_back() -> None:
    opts = SweepOptions(
        preset="smoke",
        overrides={"train.iterations": 3, "data.root": "/my data"},
        repeats=5,
        tracking_uri="http://127.0.0.1:5000",
        address="127.0.0.1:6379",
    )
    line = resume_command("search_spaces/nms.yaml", opts, "s3://bucket/prefix")
    words = shlex.split(line)
    assert words[:3] == ["corrtune", "sweep", "search_spaces/nms.yaml"]
    assert words[-1] == "--resume"
    pairs = dict(zip(words[3:-1:2], words[4:-1:2], strict=False))
    assert pairs["--preset"] == "smoke" and pairs["--repeats"] == "5"
    assert pairs["--storage"] == "s3://bucket/prefix"
    assert pairs["--tracking-uri"] == "http://127.0.0.1:5000"
    assert pairs["--address"] == "127.0.0.1:6379"
    sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    assert sets == ["train.iterations=3", "data.root=/my data"]
    plain = resume_command("s.yaml", dataclasses.replace(SweepOptions()), None)
    assert plain == "corrtune sweep s.yaml --resume"
