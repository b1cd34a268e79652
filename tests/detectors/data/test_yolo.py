"""The YOLO loader: normalised boxes, polygons, images without labels, and the bad-data rules
every loader shares (degenerate boxes dropped and counted, one error naming the file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from detectors.data import DataError, YOLODataset, build_dataset, check_dataset
from detectors.data.layout import read_yolo_yaml
from detectors.data.yolo import label_path


def _yolo(
    root: Path, labels: dict[str, str], *, split: str = "train", names: str = "[a, b]"
) -> Path:
    for stem, text in labels.items():
        image = root / "images" / split / f"{stem}.jpg"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 20)).save(image)
        if text is not None:
            label_path(image).parent.mkdir(parents=True, exist_ok=True)
            label_path(image).write_text(text)
    (root / "data.yaml").write_text(
        f"train: images/{split}\nval: images/{split}\nnames: {names}\n"
    )
    return root


def test_label_path_follows_ultralytics() -> None:
    assert label_path(Path("/d/images/train/x.jpg")) == Path("/d/labels/train/x.txt")
    # only the last images/ folder is swapped
    assert label_path(Path("/images/d/images/a/x.png")) == Path("/images/d/labels/a/x.txt")


def test_boxes_are_normalised_cx_cy_w_h_and_polygons_give_their_box(tmp_path: Path) -> None:
    root = _yolo(
        tmp_path,
        {
            "one": "1 0.5 0.5 0.5 0.5\n\n0 0.125 0.25 0.25 0.5\n",  # blank line skipped
            "poly": "0 0.1 0.1 0.3 0.2 0.2 0.6\n",  # a triangle: its bounding box
        },
    )
    dataset = build_dataset("yolo", root=root, split="train", image_size=None, train=False)
    assert dataset.classes == ["a", "b"] and dataset.category_ids == [1, 2]
    first, second = dataset.records
    assert first.boxes.tolist() == [[10, 5, 30, 15], [0, 0, 10, 10]]
    assert first.labels.tolist() == [1, 0] and first.image_id == 1
    assert second.boxes[0].tolist() == pytest.approx([4, 2, 12, 12])
    gt = dataset.coco.loadAnns(dataset.coco.getAnnIds(imgIds=[1]))
    assert [a["bbox"] for a in gt] == [[10, 5, 20, 10], [0, 0, 10, 10]]


def test_images_without_labels_have_no_objects(tmp_path: Path) -> None:
    root = _yolo(tmp_path, {"empty": "", "none": None, "box": "0 0.5 0.5 0.2 0.2\n"})
    dataset = build_dataset("yolo", root=root, split="train", image_size=None, train=False)
    assert [len(r.boxes) for r in dataset.records] == [1, 0, 0]  # box, empty, none
    _, target = dataset[2]
    assert target["boxes"].shape == (0, 4)


def test_bad_boxes_are_dropped_or_clipped_and_counted(tmp_path: Path) -> None:
    root = _yolo(
        tmp_path,
        {"x": "0 0.5 0.5 0 0.2\n0 0.5 0.5 -0.1 0.2\n0 0.95 0.5 0.2 0.2\n0 nan 0.5 0.1 0.1\n"},
    )
    dataset = YOLODataset([root / "images" / "train"], names=["a", "b"])
    assert dataset.problems == {
        "zero-area box dropped": 1,
        "inverted box dropped": 1,
        "box clipped to image": 1,
        "non-finite box dropped": 1,
    }
    assert dataset.records[0].boxes.tolist() == [[34, 8, 40, 12]]
    assert {p.path for p in dataset.problem_details} == {str(root / "labels" / "train" / "x.txt")}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("2 0.5 0.5 0.1 0.1", "line 1: unknown class 2 (names has 2: 0..1)"),
        ("0.5 0.5 0.5 0.1 0.1", "line 1: unknown class 0.5"),
        ("0 0.5 0.5 0.1", "line 1: expected 'class cx cy w h'"),
        ("0 a b c d", "line 1: expected 'class cx cy w h' numbers"),
    ],
)
def test_a_bad_line_is_one_error_naming_the_file_and_line(
    tmp_path: Path, line: str, message: str
) -> None:
    root = _yolo(tmp_path, {"x": line + "\n"})
    with pytest.raises(DataError) as info:
        build_dataset("yolo", root=root, split="train", image_size=None, train=False)
    assert info.value.path == str(root / "labels" / "train" / "x.txt")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_label_file_without_its_image_is_a_missing_image(tmp_path: Path) -> None:
    root = _yolo(tmp_path, {"x": "0 0.5 0.5 0.1 0.1\n"})
    (root / "labels" / "train" / "gone.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match="label file without an image") as info:
        build_dataset("yolo", root=root, split="train", image_size=None, train=False)
    assert info.value.path == str(root / "labels" / "train" / "gone.txt")
    report = check_dataset("auto", root, split="train")
    assert report.counts["image file not found"] == 1 and report.num_images == 1


def test_check_reports_a_split_it_cannot_read_and_checks_the_others(tmp_path: Path) -> None:
    root = _yolo(tmp_path, {"x": "0 0.5 0.5 0.1 0.1\n"})
    (root / "data.yaml").write_text("train: images/train\ntest: images/test\nnames: [a, b]\n")
    report = check_dataset("auto", root)
    assert report.num_images == 1 and report.num_errors == 1
    assert str(report.problems[0]) == (
        f"{root / 'images' / 'test'}: bad split file "
        "(split 'test': image folder or image list not found)"
    )


def test_classes_select_and_order_by_name(tmp_path: Path) -> None:
    root = _yolo(tmp_path, {"x": "0 0.5 0.5 0.1 0.1\n1 0.2 0.2 0.1 0.1\n"})
    dataset = YOLODataset([root / "images" / "train"], names=["a", "b"], classes=["b"])
    assert dataset.classes == ["b"] and dataset.records[0].labels.tolist() == [0]
    assert len(dataset.coco.getAnnIds()) == 1
    with pytest.raises(DataError, match="unknown class 'c'"):
        YOLODataset([root / "images" / "train"], names=["a", "b"], classes=["c"])


def test_yaml_names_as_list_or_mapping_and_its_mistakes(tmp_path: Path) -> None:
    root = _yolo(tmp_path, {"x": ""}, names="{0: a, 1: b}")
    assert read_yolo_yaml(root / "data.yaml")[2] == ["a", "b"]
    (root / "data.yaml").write_text("train: images/train\nnames: {0: a, 2: b}\n")
    with pytest.raises(DataError, match=r"names: the keys must be 0\.\.1"):
        read_yolo_yaml(root / "data.yaml")
    (root / "data.yaml").write_text("train: images/train\nnc: 3\nnames: [a, b]\n")
    with pytest.raises(DataError, match="nc: 3 but names lists 2 classes"):
        read_yolo_yaml(root / "data.yaml")
    (root / "data.yaml").write_text("train: images/nope\nnames: [a]\n")
    with pytest.raises(DataError, match="image folder or image list not found") as info:
        build_dataset("yolo", root=root, split="train", image_size=None, train=False)
    assert info.value.path == str(root / "images" / "nope")


def test_a_stale_path_and_exported_relative_splits_still_resolve(tmp_path: Path) -> None:
    # An annotation tool's export: splits ../train/images relative to a folder above.
    for split in ("train", "valid"):
        image = tmp_path / split / "images" / "x.jpg"
        image.parent.mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(image)
    (tmp_path / "data.yaml").write_text(
        "path: old/place\ntrain: ../train/images\nval: ../valid/images\nnames: [a]\n"
    )
    root, splits, _ = read_yolo_yaml(tmp_path / "data.yaml")
    assert root == tmp_path and splits["val"] == [tmp_path / "valid" / "images"]
