"""What ``--data PATH`` means to every command, and the report of ``corrtune data check``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detectors.config import ExperimentConfig


def data_overrides(path: Path | None) -> dict[str, Any]:
    """The config values that point a run at the dataset at ``path`` (a folder, a COCO JSON
    or a YOLO YAML): its kind, the absolute path, its training and validation splits as the
    dataset names them (left to the config when none fits: the loader's error then lists
    the splits there are), and no explicit split files or class list from before."""
    if path is None:
        return {}
    from detectors.data import detect_layout

    root = str(path.expanduser().resolve())
    layout = detect_layout(root)
    train, val = layout.default_splits()
    out: dict[str, Any] = {"data.kind": layout.kind, "data.root": root, "data.classes": []}
    for split in ("train", "val"):
        out |= {f"data.{split}.ann_file": "", f"data.{split}.images": ""}
    if train is not None:
        out["data.train_split"] = train
    if val is not None:
        out["data.val_split"] = val
    return out


def check_report(
    path: Path,
    cfg: ExperimentConfig,
    *,
    kind: str | None = None,
    split: str | None = None,
    decode_images: bool = True,
    source: str = "",
) -> str:
    """``corrtune data check``: every problem of the dataset at ``path``, then its box
    sizes at ``cfg``'s input size against ``cfg``'s detector (after ``cfg``'s ``fit.*``
    settings, fitted to the boxes checked, when it has any at ``auto``)."""
    from detectors.data import check_dataset
    from detectors.fit import fit_to, fitted_values, geometry_report

    report = check_dataset(kind or "auto", path, split=split, decode_images=decode_images)
    if report.box_sizes is None:
        return report.format()
    fitted = fit_to(cfg, report.box_sizes) if cfg.fit.pending else cfg
    report.geometry = geometry_report(report.box_sizes, fitted)
    text = report.format()
    changes = fitted_values(cfg, fitted)
    if changes:
        values = " ".join(f"{k}={v}" for k, v in changes.items())
        text += f"\n  {source or 'the config'} fits to these boxes (fit.* auto): {values}"
    return text
