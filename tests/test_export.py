"""gradloc export: predictions.json -> COCO, Pascal VOC XML and YOLO labels, read back by
independent readers (pycocotools, gradloc's VOC reader, a YOLO parser written here)."""
import contextlib
import io
import json
from pathlib import Path

import pytest

from gradloc.data.annotations import load_voc_xml
from gradloc.cli import main
from gradloc.models.wrn import CIFAR10_CLASSES

RECORDS = [
    {"file": "photos/bird/a.jpg", "width": 200, "height": 100, "proposals": [
        {"box": [10.4, 20.0, 110.6, 90.2], "score": 0.9, "label": "bird"},
        {"box": [0.0, 0.0, 50.0, 40.0], "score": 0.3, "label": "bird"},
        {"box": [120.0, 10.0, 199.0, 99.0], "score": 0.6, "label": "ship"}]},
    {"file": "photos/boat/sub/b.png", "width": 64, "height": 48, "proposals": [
        {"box": [-3.0, 4.0, 70.0, 40.0], "score": 0.7, "label": "ship"}]},
    {"file": "photos/boat/c.jpg", "width": 30, "height": 30, "proposals": []},
    {"file": "photos/broken.jpg", "skipped": "not an image"},
]


def write_predictions(tmp_path: Path) -> Path:
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps({"format": "gradloc-predictions", "version": 1, "images": RECORDS}))
    return path


def expected(min_score=None, top_k=None):
    """Per kept image: its (label, box clipped to the image) list, in the records' order."""
    out = {}
    for rec in RECORDS[:3]:
        counts, kept = {}, []
        for p in rec["proposals"]:
            if min_score is not None and p["score"] < min_score:
                continue
            counts[p["label"]] = counts.get(p["label"], 0) + 1
            if top_k is None or counts[p["label"]] <= top_k:
                x0, y0, x1, y1 = p["box"]
                kept.append((p["label"], [max(x0, 0), max(y0, 0), min(x1, rec["width"]), min(y1, rec["height"])]))
        out[rec["file"][len("photos/"):]] = kept
    return out


def read_yolo(folder: Path, name: str, size) -> list:
    classes = (folder / "classes.txt").read_text().split()
    w, h = size
    out = []
    for line in (folder / "labels" / Path(name).with_suffix(".txt")).read_text().splitlines():
        c, cx, cy, bw, bh = line.split()
        cx, cy, bw, bh = float(cx) * w, float(cy) * h, float(bw) * w, float(bh) * h
        out.append((classes[int(c)], [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]))
    return out


def assert_boxes(got, want, tol):
    assert [g[0] for g in got] == [w[0] for w in want]
    for (_, g), (_, w) in zip(got, want):
        assert g == pytest.approx(w, abs=tol)


@pytest.mark.parametrize("min_score,top_k", [(None, None), (0.5, None), (None, 1)])
def test_yolo_and_voc_read_back_the_boxes_image_by_image(tmp_path, min_score, top_k, capsys):
    preds = write_predictions(tmp_path)
    flags = (["--min-score", str(min_score)] if min_score is not None else []) + \
        (["--top-k", str(top_k)] if top_k is not None else [])
    sizes = {r["file"][len("photos/"):]: (r["width"], r["height"]) for r in RECORDS[:3]}
    assert main(["export", str(preds), "--format", "yolo", "-o", str(tmp_path / "yolo")] + flags) == 0
    assert "1 skipped images left out" in capsys.readouterr().err
    assert (tmp_path / "yolo" / "classes.txt").read_text().split() == list(CIFAR10_CLASSES)
    assert main(["export", str(preds), "--format", "voc", "-o", str(tmp_path / "voc")] + flags) == 0
    for name, want in expected(min_score, top_k).items():
        assert_boxes(read_yolo(tmp_path / "yolo", name, sizes[name]), want, 1e-3)
        xml = tmp_path / "voc" / Path(name).with_suffix(".xml")
        im = load_voc_xml(xml, {c: c for c in CIFAR10_CLASSES})
        if not want:
            assert im is None and (tmp_path / "yolo" / "labels" / Path(name).with_suffix(".txt")).read_text() == ""
            continue
        assert (im.file, im.width, im.height) == (Path(name).name, *sizes[name])
        assert_boxes([(CIFAR10_CLASSES[int(c)], b) for c, b in zip(im.labels, im.boxes.tolist())], want, 1.0)
    assert not (tmp_path / "voc" / "broken.xml").exists()


def test_coco_export_reads_in_pycocotools_with_scores(tmp_path):
    from pycocotools.coco import COCO

    preds = write_predictions(tmp_path)
    assert main(["export", str(preds), "--format", "coco", "-o", str(tmp_path / "c"), "--min-score", "0.5"]) == 0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "c" / "annotations.json"))
        dt = gt.loadRes(gt.dataset["annotations"])
    files = {im["id"]: im["file_name"] for im in gt.dataset["images"]}
    got = {}
    for a in dt.dataset["annotations"]:
        x, y, w, h = a["bbox"]
        got.setdefault(files[a["image_id"]], []).append((gt.cats[a["category_id"]]["name"], [x, y, x + w, y + h]))
        assert a["score"] >= 0.5
    for name, want in expected(0.5).items():
        assert_boxes(got.get(name, []), want, 0.01)


def test_export_refuses_images_outside_relative_to_and_bad_top_k(tmp_path, capsys):
    preds = write_predictions(tmp_path)
    assert main(["export", str(preds), "--format", "voc", "-o", str(tmp_path / "v"),
                 "--relative-to", str(tmp_path / "photos" / "bird")]) == 2
    assert "is outside" in capsys.readouterr().err
    assert main(["export", str(preds), "--format", "yolo", "-o", str(tmp_path / "y"), "--top-k", "0"]) == 2
    assert "--top-k must be >= 1" in capsys.readouterr().err


def test_hostile_records_export_what_is_valid_and_nothing_else(tmp_path):
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps({"format": "gradloc-predictions", "images": [
        {"file": "a.jpg", "width": 10, "height": 10, "proposals": [
            "junk", {"label": ["cat"], "box": [0, 0, 5, 5], "score": 1}, {"label": "cat", "box": [0, 0, "x", 5], "score": 1},
            {"label": "cat", "box": [0, 0, 5, 5]}, {"label": "cat", "box": [0, 0, 5, 5], "score": "NaN"},
            {"label": "cat", "box": [1, 1, 6, 6], "score": 0.7}]},
        {"file": "b.jpg", "width": True, "height": 10, "proposals": []},
        {"file": "c.jpg", "width": 10, "height": 10, "proposals": {"not": "a list"}}]}))
    for fmt in ("coco", "voc", "yolo"):
        assert main(["export", str(path), "--format", fmt, "-o", str(tmp_path / fmt)]) == 0
    assert (tmp_path / "yolo" / "labels" / "a.txt").read_text() == "3 0.350000 0.350000 0.500000 0.500000\n"
    assert (tmp_path / "yolo" / "labels" / "c.txt").read_text() == ""
    assert not (tmp_path / "yolo" / "labels" / "b.txt").exists()


def test_yolo_export_is_the_dataset_layout_ultralytics_reads_and_coco_numbers_categories_from_1(tmp_path):
    from PIL import Image
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    records = []
    for name in ("a.jpg", "sub/b.png"):
        Image.new("RGB", (40, 20)).save(photos / name)
        records.append({"file": str(photos / name), "width": 40, "height": 20,
                        "proposals": [{"box": [4.0, 2.0, 24.0, 12.0], "score": 0.8, "label": "ship"}]})
    preds = tmp_path / "predictions.json"
    preds.write_text(json.dumps({"format": "gradloc-predictions", "version": 1, "images": records}))
    out = tmp_path / "yolo"
    assert main(["export", str(preds), "--format", "yolo", "-o", str(out)]) == 0
    for name in ("a.jpg", "sub/b.png"):
        assert (out / "images" / name).resolve() == (photos / name).resolve()  # images/ beside labels/
        assert (out / "labels" / Path(name).with_suffix(".txt")).read_text() == "8 0.350000 0.350000 0.500000 0.500000\n"
    yaml = pytest.importorskip("yaml")
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["path"] == str(out.resolve()) and data["train"] == data["val"] == "images"
    assert data["names"] == dict(enumerate(CIFAR10_CLASSES))
    assert main(["export", str(preds), "--format", "coco", "-o", str(tmp_path / "coco")]) == 0
    coco = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    assert [c["id"] for c in coco["categories"]] == list(range(1, 11))
    assert {a["category_id"] for a in coco["annotations"]} == {9}  # ship, CIFAR-10's 8, is category 9
