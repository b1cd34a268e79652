"""``corrtune eval``: score a saved checkpoint on a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from detectors.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    from_dict,
    upgrade_stored,
)
from detectors.data import make_loader
from detectors.data.splits import build_split
from detectors.engine import evaluate
from detectors.models import build_detector, check_settings


def evaluate_checkpoint(
    path: Path, overrides: dict[str, Any], cache_dir: Path, *, classes_by_name: bool = False
) -> dict[str, float]:
    """Rebuild the checkpoint's model from its own config (+ ``overrides``) and evaluate it
    on the validation split of that config.

    The dataset's classes must be the model's: the same names in another order are matched
    by name; other names are one error naming both lists, which, when some names are shared,
    offers ``classes_by_name``: evaluate those by name (the model's other classes and the
    dataset's other boxes left out).
    """
    if not path.is_file():
        raise ConfigError(str(path), "", "no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        values = upgrade_stored(state["config"])
    except Exception as exc:  # a truncated or foreign file: say so in one line
        raise ConfigError(str(path), "", f"not a corrtune checkpoint ({exc})") from None
    trained = from_dict(values, str(path))
    cfg = from_dict(apply_overrides(values, overrides, "--set"), str(path))
    check_settings(cfg, dict.fromkeys(overrides, "--set"), default_source=str(path))
    model_classes = list(state.get("classes") or _trained_classes(trained, cache_dir))
    val_set = build_split(cfg, "val", cache_dir, train=False)
    if val_set.classes != model_classes:
        _check_classes(path, model_classes, val_set.classes, cfg, classes_by_name)
        val_set.relabel(model_classes)
    model = build_detector(cfg, num_classes=len(model_classes))
    try:
        # The weights the run's own evaluations used (its weight average, if it kept one).
        model.load_state_dict(state.get("eval_model") or state["model"])
    except RuntimeError as exc:  # a --set that changed the architecture
        first = str(exc).strip().splitlines()
        raise ConfigError(
            str(path),
            "",
            "the checkpoint's weights do not fit the model this config builds (a --set "
            f"changed its architecture?): {first[1].strip() if len(first) > 1 else first[0]}",
        ) from None
    loader = make_loader(val_set, cfg.train.batch_size, shuffle=False, seed=0)
    return evaluate(model, loader, val_set, torch.device("cpu"))


def _trained_classes(cfg: ExperimentConfig, cache_dir: Path) -> list[str]:
    """The class names of a checkpoint from before they were saved in it: its config's
    list, else those of the training split it names."""
    if cfg.data.classes:
        return list(cfg.data.classes)
    return list(build_split(cfg, "train", cache_dir, train=False, image_size=None).classes)


def _check_classes(
    path: Path, model: list[str], dataset: list[str], cfg: ExperimentConfig, by_name: bool
) -> None:
    """Nothing when the dataset can be scored in the model's labels; else the one error."""
    if sorted(model) == sorted(dataset):
        return  # the same names in another order: matched by name
    shared = [name for name in model if name in dataset]
    if shared and by_name:
        return
    where = cfg.data.root or cfg.data.kind
    text = (
        f"the model was trained on {len(model)} classes {model}, the dataset {where} "
        f"(split {cfg.data.val_split}) has {len(dataset)} {dataset}"
    )
    if shared:
        text += (
            f"; {len(shared)} names are shared ({', '.join(shared)}): --classes-by-name "
            "evaluates those, matched by name"
        )
    else:
        text += "; no class name is shared"
    raise ConfigError(str(path), "", text)
