"""run_training end to end on tiny data: the full metric set comes out, bad data is counted."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from detectors.config import load_config
from detectors.engine import run_training

SUITE_KEYS = {
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "beta_img",
    "beta_cls",
    "oLRP",
    "oLRP_Loc",
    "oLRP_FP",
    "oLRP_FN",
    "AP_upper",
    "AP_lower",
}


def test_smoke_training_reports_every_measure(tmp_path: Path) -> None:
    cfg = load_config(
        preset="smoke",
        overrides={"loss.corr.weight": 0.2, "train.iterations": 2, "train.log_every": 1},
    )
    records: list[dict[str, float]] = []
    final = run_training(
        cfg,
        out_dir=tmp_path / "out",
        cache_dir=tmp_path / "cache",
        report=lambda record, ckpt: records.append(record),
    )
    assert set(final) >= SUITE_KEYS
    assert [r["iteration"] for r in records] == [1, 2]
    first = records[0]
    # the methods' own statistics reach the reports
    for key in (
        "train/loss_corr",
        "train/corr_coefficient",
        "train/corr_skipped_pools",
        "train/num_pos",
        "train/recalled_anchors",
    ):
        assert key in first and math.isfinite(first[key])
    assert "val/AP" in records[-1] and "val/AP" not in first
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["AP"] == final["AP"]
    assert (tmp_path / "out" / "checkpoint.pt").is_file()


@pytest.mark.bccd
def test_bccd_preset_trains_and_reports_voc_map(tmp_path: Path, bccd_root: Path) -> None:
    cfg = load_config(
        preset="bccd",
        overrides={"data.root": str(bccd_root), "train.iterations": 1, "data.image_size": 96},
    )
    final = run_training(cfg, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert {"VOC_mAP", "VOC07_mAP"} <= set(final)
    assert 0.0 <= final["VOC_mAP"] <= 1.0
    # one of BCCD's two zero-area boxes is in the train split: dropped and counted
    assert final["data_problems"] == 1.0


@pytest.mark.bccd
def test_the_same_images_through_voc_coco_and_yolo_train_to_the_same_metrics(
    tmp_path: Path, bccd_layouts: dict[str, Path]
) -> None:
    from detectors.data import detect_layout

    finals = {}
    for name in ("voc", "coco_export", "yolo_mapping"):
        layout = detect_layout(bccd_layouts[name])
        train_split, val_split = layout.default_splits()
        overrides = {
            "data.kind": layout.kind,
            "data.root": str(bccd_layouts[name]),
            "data.train_split": train_split,
            "data.val_split": val_split,
            "data.image_size": 96,
            "nms.score_threshold": 0.0,  # detections to score after 4 steps
        }
        cfg = load_config(preset="smoke", overrides=overrides)
        finals[name] = run_training(cfg, out_dir=tmp_path / name, cache_dir=tmp_path / "cache")
    voc = finals.pop("voc")
    assert voc["num_detections"] > 0 and voc["data_problems"] == 1.0
    assert 0 < voc["beta_img"] < 1  # a number every weight of the model moves
    for name, final in finals.items():
        shared = {k: v for k, v in voc.items() if not k.startswith("VOC") and "time" not in k}
        mine = {k: v for k, v in final.items() if "time" not in k}
        assert mine == pytest.approx(shared, nan_ok=True, rel=0, abs=0), name
