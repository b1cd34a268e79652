import copy
import math
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from detectors.metrics import (
    ap_bounds,
    beta_cls,
    beta_img,
    coco_ap,
    coco_from_dict,
    evaluate_detections,
    olrp,
)
from detectors.metrics.suite import (
    BOOTSTRAP_METRICS,
    METRIC_NAMES,
    PER_CATEGORY_PREFIX,
    SUITE_METRICS,
    VOC_METRICS,
)

from .conftest import EvaluatedCase

MLFLOW_SAFE = re.compile(r"^[A-Za-z0-9_\-./ ]+$")
FIXED_KEYS = {
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AP_upper", "AP_lower", "AP50_upper", "AP50_lower", "AP75_upper", "AP75_lower",
    "beta_img", "beta_cls", "oLRP", "oLRP_Loc", "oLRP_FP", "oLRP_FN", "num_detections",
}  # fmt: skip


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-12


@pytest.mark.bccd
def test_suite_equals_the_separate_measures_on_bccd(bccd_case: EvaluatedCase) -> None:
    rng = np.random.default_rng(0)
    pairs = [(rng.random(5), rng.random(5)) for _ in range(20)]
    suite = evaluate_detections(bccd_case.coco_gt(), bccd_case.detections, pre_nms_pairs=pairs)
    separate: dict[str, float] = {
        **coco_ap(bccd_case.coco_gt(), bccd_case.detections),
        **ap_bounds(bccd_case.coco_gt(), bccd_case.detections),
        "beta_img": beta_img(pairs),
        "beta_cls": beta_cls(bccd_case.coco_gt(), bccd_case.detections),
        "num_detections": float(len(bccd_case.detections)),
    }
    lrp = olrp(bccd_case.coco_gt(), bccd_case.detections)
    separate.update(
        oLRP=lrp["oLRP"], oLRP_Loc=lrp["oLRP_Loc"], oLRP_FP=lrp["oLRP_FP"], oLRP_FN=lrp["oLRP_FN"]
    )
    assert set(suite) == set(separate) == FIXED_KEYS | {"AP/Platelets", "AP/RBC", "AP/WBC"}
    assert all(_same(suite[k], separate[k]) for k in suite), {
        k: (suite[k], separate[k]) for k in suite if not _same(suite[k], separate[k])
    }
    # AP agrees with pycocotools itself, not only with coco_ap
    assert suite["AP"] == pytest.approx(bccd_case.evaluator.stats[0], abs=1e-12)
    assert suite["beta_cls"] > 0.2 and suite["AP_lower"] < suite["AP"] < suite["AP_upper"]


def test_keys_are_mlflow_safe_and_values_floats(
    make_dataset: Callable[..., dict[str, Any]], make_detections: Callable[..., list[dict]]
) -> None:
    dataset = make_dataset(2)
    dataset["categories"][0]["name"] = "traffic light (red)"
    dataset["categories"][1]["name"] = "person's bag: large"
    result = evaluate_detections(coco_from_dict(dataset), make_detections(dataset, 2))
    assert all(MLFLOW_SAFE.match(key) for key in result)
    assert "AP/traffic light _red_" in result and "AP/person_s bag_ large" in result
    assert all(type(value) is float for value in result.values())
    assert math.isnan(result["beta_img"])  # no pairs given


def test_the_metric_names_are_exactly_what_the_suite_returns(
    make_dataset: Callable[..., dict[str, Any]], make_detections: Callable[..., list[dict]]
) -> None:
    # What a sweep's `metric` may name (orchestrator.space checks against these).
    dataset = make_dataset(4)
    result = evaluate_detections(coco_from_dict(dataset), make_detections(dataset, 4), bootstrap=5)
    per_category = {k for k in result if k.startswith(PER_CATEGORY_PREFIX)}
    assert len(per_category) == len(dataset["categories"])
    assert set(result) - per_category == set(SUITE_METRICS) | set(BOOTSTRAP_METRICS)
    assert set(SUITE_METRICS) == FIXED_KEYS
    assert set(METRIC_NAMES) == set(SUITE_METRICS) | set(BOOTSTRAP_METRICS) | set(VOC_METRICS)


def test_empty_detections(
    make_dataset: Callable[..., dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    result = evaluate_detections(coco_from_dict(make_dataset(1)), [], pre_nms_pairs=[])
    assert capsys.readouterr().out == ""
    assert set(FIXED_KEYS) <= set(result)
    assert result["AP"] == result["AP_upper"] == result["AP_lower"] == 0.0
    assert result["oLRP"] == result["oLRP_FN"] == 1.0
    assert result["num_detections"] == 0.0
    assert all(math.isnan(result[k]) for k in ("beta_img", "beta_cls", "oLRP_Loc", "oLRP_FP"))


def test_does_not_modify_its_inputs(
    make_dataset: Callable[..., dict[str, Any]], make_detections: Callable[..., list[dict]]
) -> None:
    dataset = make_dataset(3, crowd_rate=0.1)
    dets = make_detections(dataset, 3)
    coco_gt = coco_from_dict(dataset)
    before_gt, before_dets = copy.deepcopy(coco_gt.dataset), copy.deepcopy(dets)
    evaluate_detections(coco_gt, dets)
    assert coco_gt.dataset == before_gt and dets == before_dets


def test_detections_on_unknown_images_are_an_error(
    make_dataset: Callable[..., dict[str, Any]],
) -> None:
    dets = [{"image_id": 123456, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]
    with pytest.raises(ValueError, match="123456"):
        evaluate_detections(coco_from_dict(make_dataset(0)), dets)


def test_metrics_package_imports_neither_ray_nor_mlflow() -> None:
    code = (
        "import sys, detectors.metrics; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'ray', 'mlflow'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
