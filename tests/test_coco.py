"""COCO results files, COCO AP/AR from pycocotools, export of localize runs."""
import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from gradloc.data.annotations import load_annotations
from gradloc.cli import main
from gradloc.evaluation import coco

ANNOTATIONS = {
    "images": [{"id": 11, "file_name": "a.png", "width": 80, "height": 60},
               {"id": 12, "file_name": "b.png", "width": 80, "height": 60}],
    "annotations": [
        {"id": 1, "image_id": 11, "category_id": 3, "bbox": [10, 10, 30, 20], "area": 600, "iscrowd": 0},
        {"id": 2, "image_id": 12, "category_id": 17, "bbox": [40, 20, 30, 30], "area": 900, "iscrowd": 0},
        {"id": 3, "image_id": 12, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0}],
    # COCO's own ids: 3 is car (-> automobile), 17 cat, 1 person (no CIFAR-10 class)
    "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 17, "name": "cat"}],
}


def predictions(records):
    return {"format": "gradloc-predictions", "version": 1, "images": records, "skipped": []}


def record(file, proposals):
    return {"file": file, "width": 80, "height": 60, "predicted": "cat", "probs": None,
            "proposals": [{"box": b, "score": s, "label": lab} for b, s, lab in proposals]}


def pycocotools_stats(ann_path, results_path, use_cats=1):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_path))
        dt = gt.loadRes(str(results_path))
        ev = COCOeval(gt, dt, "bbox")
        ev.params.useCats = use_cats
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


@pytest.fixture()
def annotated(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(ANNOTATIONS))
    return path


def test_results_use_the_files_ids_and_load_in_pycocotools(tmp_path, annotated):
    ds = load_annotations(annotated)
    assert coco.category_map(ds)[1] == 3 and coco.category_map(ds)[3] == 17  # automobile, cat
    assert len(set(coco.category_map(ds).values())) == 10  # classes absent from the file get free ids
    recs = [record("a.png", [([10, 10, 40, 30], 0.9, "automobile"), ([0, 0, 20, 20], 0.5, "automobile")]),
            record("b.png", [([42, 22, 70, 50], 0.8, "cat")]),
            record("elsewhere.png", [([0, 0, 5, 5], 0.1, "cat")])]
    dets, unmatched, missing = coco.results_from_predictions(recs, ds)
    assert unmatched == ["elsewhere.png"] and missing == []
    assert {d["image_id"] for d in dets} == {11, 12} and {d["category_id"] for d in dets} == {3, 17}
    assert dets[0]["bbox"] == [10.0, 10.0, 30.0, 20.0]
    path = tmp_path / "res.json"
    path.write_text(json.dumps(dets))
    stats = pycocotools_stats(annotated, path)
    ours = coco.coco_eval(coco.ground_truth(ds), dets)
    # Against the file as given, person (no detections) counts; against the scored set it does not.
    assert coco.evaluate_against_file(annotated, dets)["AR100"] == pytest.approx(stats[8], abs=1e-9)
    assert ours["AR100"] > stats[8]
    assert ours["per_class"]["automobile"]["AR100"] == pytest.approx(1.0)
    assert 0 < ours["per_class"]["cat"]["AR100"] < 1  # IoU 0.75: found at 0.5-0.75 only


def test_class_agnostic_ar_keeps_proposals_with_another_label(annotated):
    ds = load_annotations(annotated)
    gt = coco.ground_truth(ds)
    # Exact boxes, both labelled "dog", a class with no ground truth in the file.
    dog = coco.category_map(ds)[5]
    dets = [{"image_id": 11, "category_id": dog, "bbox": [10, 10, 30, 20], "score": 0.9},
            {"image_id": 12, "category_id": dog, "bbox": [40, 20, 30, 30], "score": 0.9}]
    m = coco.coco_metrics(gt, dets)
    assert m["per_class"]["AR100"] == 0.0
    assert m["class_agnostic"]["AR100"] == pytest.approx(1.0)


def test_empty_results_score_zero(annotated):
    ds = load_annotations(annotated)
    m = coco.coco_metrics(coco.ground_truth(ds), [])
    assert m["per_class"]["AR100"] == 0.0 and m["class_agnostic"]["AR1"] == 0.0


def test_evaluate_writes_results_whose_pycocotools_ar_is_in_metrics(tmp_path, annotated, random_weights_file):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.RandomState(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.randint(0, 255, (60, 80, 3)).astype(np.uint8)).save(images / name)
    out = tmp_path / "ev"
    assert main(["evaluate", str(annotated), "--images", str(images), "-o", str(out),
                 "--weights", str(random_weights_file), "--workers", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["results"]
    for name, m in metrics.items():
        path = out / m["coco"]["results_file"]
        stats = pycocotools_stats(annotated, path)
        assert m["coco"]["against_annotation_file"]["AR100"] == pytest.approx(stats[8], abs=1e-9), name
        # and against the ground truth gradloc wrote (the mapped, scored set)
        scored = pycocotools_stats(out / "coco" / "ground_truth.json", path)
        assert m["coco"]["per_class"]["AR100"] == pytest.approx(scored[8], abs=1e-9), name
        assert m["coco"]["class_agnostic"]["AR100"] == pytest.approx(
            pycocotools_stats(out / "coco" / "ground_truth.json", path, use_cats=0)[8], abs=1e-9), name
    assert metrics["whole image"]["coco"]["per_class"]["AR100"] >= 0
    assert "AR@100" in (out / "report.md").read_text()


def test_export_coco_cli(tmp_path, annotated, capsys):
    preds = tmp_path / "predictions.json"
    preds.write_text(json.dumps(predictions([record("a.png", [([10, 10, 40, 30], 0.9, "automobile")]),
                                             record("x/other.png", [([0, 0, 5, 5], 0.2, "cat")])])))
    res = tmp_path / "results.json"
    assert main(["export-coco", str(preds), "--annotations", str(annotated), "-o", str(res)]) == 0
    err = capsys.readouterr().err
    assert "x/other.png: no annotated image" in err and "b.png: annotated, but no prediction" in err
    assert json.loads(res.read_text()) == [{"image_id": 11, "category_id": 3, "bbox": [10.0, 10.0, 30.0, 20.0],
                                            "score": 0.9}]
    pycocotools_stats(annotated, res)  # loads
    ds_path = tmp_path / "dataset.json"
    assert main(["export-coco", str(preds), "-o", str(ds_path)]) == 0
    d = json.loads(ds_path.read_text())
    assert [im["file_name"] for im in d["images"]] == ["a.png", "x/other.png"]
    # automobile, CIFAR-10's class 1, is category 2: COCO files number categories from 1
    assert d["annotations"][0] == {"id": 1, "image_id": 1, "category_id": 2, "bbox": [10.0, 10.0, 30.0, 20.0],
                                   "area": 600.0, "iscrowd": 0, "score": 0.9}
    assert [c["id"] for c in d["categories"]] == list(range(1, 11)) and d["categories"][1]["name"] == "automobile"
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert main(["export-coco", str(bad), "-o", str(tmp_path / "x.json")]) == 2
    assert "not a gradloc predictions.json" in capsys.readouterr().err


def test_fiftyone_imports_the_exported_dataset(tmp_path):
    fo = pytest.importorskip("fiftyone")
    Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save(tmp_path / "a.png")
    preds = tmp_path / "predictions.json"
    preds.write_text(json.dumps(predictions([record(str(tmp_path / "a.png"), [([10, 10, 40, 30], 0.9, "cat")])])))
    assert main(["export-coco", str(preds), "-o", str(tmp_path / "labels.json"), "--relative-to", str(tmp_path)]) == 0
    ds = fo.Dataset.from_dir(dataset_type=fo.types.COCODetectionDataset, data_path=str(tmp_path),
                             labels_path=str(tmp_path / "labels.json"), label_field="gradloc")
    (sample,) = list(ds)
    (det,) = sample["gradloc_detections"].detections if "gradloc_detections" in sample else sample["gradloc"].detections
    assert det.label == "cat" and det.confidence == pytest.approx(0.9)
