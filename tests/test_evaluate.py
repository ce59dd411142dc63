"""Metrics on hand-computed cases, annotation readers on small fixtures, unsafe XML refused."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from gradloc.discovery.results import Prediction
from gradloc.data.annotations import (AnnotatedImage, AnnotatedSet, AnnotationError, load_aliases,
                                 load_annotations, load_coco, load_voc)
from gradloc.cli import main
from gradloc.evaluation.baselines import baseline_centred, baseline_whole_image, centred_box
from gradloc.evaluation.evaluate import subset
from gradloc.evaluation.metrics import (corloc, inclusive_iou, max_box_acc_v2, pointing_game, recall_and_mbo, score,
                             top1_localization, wsol_boxes, wsol_gt_boxes)


def img(file, w, h, boxes, labels, difficult=None):
    return AnnotatedImage(file, w, h, torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
                          torch.tensor(labels), torch.tensor(difficult or [False] * len(labels)))


def test_known_iou():
    # 10x10 boxes overlapping in a 5x10 strip: IoU = 50 / 150.
    assert box_iou(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[5.0, 0, 15, 10]])).item() == pytest.approx(1 / 3)


def test_corloc_exactly_two_thirds():
    ds = AnnotatedSet([img("a", 100, 100, [[0, 0, 50, 50]], [3]),
                       img("b", 100, 100, [[10, 10, 60, 60], [50, 50, 100, 100]], [5, 3]),
                       ])
    preds = [
        Prediction(boxes={3: torch.tensor([[0.0, 0, 50, 50]])}),                      # hit (IoU 1)
        Prediction(boxes={5: torch.tensor([[10.0, 10, 60, 60]]),                      # hit
                          3: torch.tensor([[0.0, 0, 10, 10], [50.0, 50, 100, 100]])}),  # top-1 misses
    ]
    res = corloc(ds, preds)
    assert res["n"] == 3
    assert res["0.5"] == pytest.approx(2 / 3)
    assert res["per_class@0.5"] == {"cat": 0.5, "dog": 1.0}
    rec = recall_and_mbo(ds, preds, ks=(1, 2))
    assert rec["recall@1"] == pytest.approx(2 / 3) and rec["recall@2"] == 1.0


def test_difficult_boxes_are_not_scored():
    ds = AnnotatedSet([img("a", 10, 10, [[0, 0, 5, 5], [5, 5, 10, 10]], [1, 2], [False, True])])
    assert ds.images[0].classes() == [1]
    assert corloc(ds, [Prediction(boxes={1: torch.tensor([[0.0, 0, 5, 5]])})])["n"] == 1


def test_top1_localization_needs_the_right_class():
    ds = AnnotatedSet([img("a", 10, 10, [[0, 0, 10, 10]], [1]), img("b", 10, 10, [[0, 0, 10, 10]], [2])])
    full = torch.tensor([[0.0, 0, 10, 10]])
    preds = [Prediction(boxes={1: full}, probs=torch.eye(10)[1]),
             Prediction(boxes={2: full}, probs=torch.eye(10)[7])]  # wrong class: a miss
    assert top1_localization(ds, preds) == 0.5


def test_max_box_acc_v2_follows_wsolevaluation_by_hand():
    # A 224x224 image (no resizing): the map is 1 on rows 0-99, columns 0-99 and 0 elsewhere.
    m = torch.zeros(224, 224)
    m[:100, :100] = 1.0
    # Every threshold keeps that square; its contour's box is (0, 0, 100, 100) in wsolevaluation's
    # convention (x + w, inclusive corners), area 101 * 101. The ground truth [0, 0, 100, 150]
    # (pixel edges) becomes (0, 0, 100, 150), area 101 * 151: IoU = 10201 / 15251 = 0.669.
    ds = AnnotatedSet([img("a", 224, 224, [[0, 0, 100, 150]], [0])])
    res = max_box_acc_v2(ds, [Prediction(boxes={}, maps={0: m})])
    assert res["0.3"] == 1.0 and res["0.5"] == 1.0 and res["0.7"] == 0.0
    assert res["v2"] == pytest.approx(2 / 3)
    assert inclusive_iou(np.array([[0, 0, 100, 100]]), np.array([[0, 0, 100, 150]]))[0, 0] == pytest.approx(10201 / 15251)


def test_max_box_acc_v2_thresholds_and_contours():
    # Two squares: value 1.0 (20 px) and 0.5 (60 px). wsolevaluation keeps pixels strictly above
    # int(tau * 255): the 0.5 square (uint8 127) is kept up to tau = 0.49 (threshold 124) and
    # dropped from tau = 0.50 (threshold 127). Every contour gives a box.
    score_map = np.zeros((224, 224), np.float32)
    score_map[10:30, 10:30] = 1.0
    score_map[100:160, 100:160] = 0.5
    boxes, which = wsol_boxes(score_map, np.array([0.49, 0.5]))
    assert sorted(map(tuple, boxes[which == 0].tolist())) == [(10, 10, 30, 30), (100, 100, 160, 160)]
    assert boxes[which == 1].tolist() == [[10, 10, 30, 30]]
    # Nothing kept: the box (0, 0, 0, 0), as in wsolevaluation.
    assert wsol_boxes(np.zeros((8, 8), np.float32), np.array([0.5]))[0].tolist() == [[0, 0, 0, 0]]
    # Ground truth of a 448x112 image resized to 224x224, corners truncated.
    assert wsol_gt_boxes(torch.tensor([[3.0, 5.0, 101.0, 111.0]]), 448, 112).tolist() == [[1, 10, 50, 222]]
    # The large square matches a box of the ground truth only while it is kept.
    ds = AnnotatedSet([img("a", 224, 224, [[100, 100, 160, 160]], [0])])
    res = max_box_acc_v2(ds, [Prediction(boxes={}, maps={0: torch.from_numpy(score_map)})])
    assert res["v2"] == 1.0 and res["best_threshold@0.7"] == 0.0


def test_max_box_acc_v2_resizes_low_resolution_maps():
    # An 8x8 map whose top-left 4x4 quarter is hot, on a 640x480 image whose object is that quarter:
    # bicubic resizing to 224x224 keeps the quarter at the right thresholds.
    m = torch.zeros(8, 8)
    m[:4, :4] = 1.0
    ds = AnnotatedSet([img("a", 640, 480, [[0, 0, 320, 240]], [0])])
    assert max_box_acc_v2(ds, [Prediction(boxes={}, maps={0: m})])["v2"] == 1.0


def test_pointing_game_tolerance():
    ds = AnnotatedSet([img("a", 224, 224, [[100, 100, 150, 150]], [4])])
    inside = [Prediction(boxes={}, peaks={4: (120.0, 120.0)})]
    near = [Prediction(boxes={}, peaks={4: (160.0, 120.0)})]   # 10 px away, tolerance 15 px
    far = [Prediction(boxes={}, peaks={4: (170.0, 120.0)})]    # 20 px away
    assert pointing_game(ds, inside) == 1.0 and pointing_game(ds, near) == 1.0
    assert pointing_game(ds, far) == 0.0


def test_baselines_boxes():
    assert centred_box(100, 50, 0.25).tolist() == [[25.0, 12.5, 75.0, 37.5]]
    ds = AnnotatedSet([img("a", 100, 100, [[0, 0, 100, 100]], [0])])
    assert score(ds, baseline_whole_image(ds))["corloc"]["0.5"] == 1.0
    assert score(ds, baseline_centred(ds, 0.25))["corloc"]["0.5"] == 0.0


def test_subset_first_or_random():
    items = list(range(10))
    assert subset(items, None) == items and subset(items, 3) == [0, 1, 2] and subset(items, 20, 1) == items
    drawn = subset(items, 4, seed=5)
    assert len(set(drawn)) == 4 and drawn == sorted(drawn) and drawn == subset(items, 4, seed=5)
    assert {tuple(subset(items, 4, seed=s)) for s in range(5)} != {(0, 1, 2, 3)}


def write_coco(path, **override):
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                       {"id": 2, "file_name": "b.png", "width": 40, "height": 30}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [5, 5, 10, 10]},
                            {"id": 2, "image_id": 1, "category_id": 99, "bbox": [0, 0, 3, 3]},
                            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [30, 20, 20, 20]},
                            {"id": 4, "image_id": 2, "category_id": 3, "bbox": [1, 1, 0, 5]},
                            {"id": 5, "image_id": 2}],
            "categories": [{"id": 7, "name": "car"}, {"id": 3, "name": "cat"}, {"id": 99, "name": "person"}]}
    coco.update(override)
    path.write_text(json.dumps(coco))
    return path


def test_coco_reader_reports_every_problem(tmp_path):
    ds = load_coco(write_coco(tmp_path / "a.json"))
    assert [im.file for im in ds.images] == ["a.png", "b.png"]
    assert ds.images[0].labels.tolist() == [1]  # car -> automobile
    assert ds.images[1].boxes.tolist() == [[30.0, 20.0, 40.0, 30.0]]  # clipped
    reasons = " ".join(p["reason"] for p in ds.problems)
    assert "'person' has no CIFAR-10 counterpart" in reasons
    assert "clipped" in reasons and "zero area" in reasons and "malformed" in reasons
    assert ds.unmapped == {"person": 1}


def test_coco_malformed_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        load_coco(bad)
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(AnnotationError, match="needs 'images' and 'annotations'"):
        load_coco(bad)


def test_files_with_a_byte_order_mark_read_as_without(tmp_path):
    # Windows editors write UTF-8 with a BOM, which json.loads refuses
    plain = write_coco(tmp_path / "plain.json")
    marked = tmp_path / "marked.json"
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    a, b = load_coco(plain), load_coco(marked)
    assert [im.file for im in a.images] == [im.file for im in b.images]
    assert all(torch.equal(x.boxes, y.boxes) and torch.equal(x.labels, y.labels) for x, y in zip(a.images, b.images))
    aliases = tmp_path / "aliases.json"
    aliases.write_bytes(b"\xef\xbb\xbf" + json.dumps({"person": "horse"}).encode())
    assert load_coco(marked, load_aliases(aliases)).unmapped == {}


def test_alias_override(tmp_path):
    f = tmp_path / "aliases.json"
    f.write_text(json.dumps({"person": "horse", "car": None}))
    ds = load_coco(write_coco(tmp_path / "a.json"), load_aliases(f))
    assert ds.images[0].labels.tolist() == [7]  # person -> horse; car now unmapped
    assert ds.unmapped == {"car": 1}
    f.write_text(json.dumps({"person": "unicorn"}))
    with pytest.raises(AnnotationError, match="not a CIFAR-10 class"):
        load_aliases(f)


VOC = """<annotation><filename>{name}</filename><size><width>50</width><height>40</height></size>
<object><name>{cls}</name><difficult>{diff}</difficult>
<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>20</xmax><ymax>10</ymax></bndbox></object>
<object><name>person</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object>
</annotation>"""


def test_voc_reader(tmp_path):
    ann = tmp_path / "voc" / "Annotations"
    ann.mkdir(parents=True)
    (ann / "1.xml").write_text(VOC.format(name="1.jpg", cls="aeroplane", diff=0))
    (ann / "2.xml").write_text(VOC.format(name="2.jpg", cls="boat", diff=1))
    (ann / "3.xml").write_text("<annotation><unclosed>")
    ds = load_voc(tmp_path / "voc")
    assert [im.file for im in ds.images] == ["1.jpg", "2.jpg"]
    assert ds.images[0].boxes.tolist() == [[0.0, 0.0, 20.0, 10.0]]  # 1-based inclusive -> edges
    assert ds.images[0].labels.tolist() == [0] and ds.images[1].labels.tolist() == [8]
    assert ds.images[1].difficult.tolist() == [True] and ds.images[1].classes() == []
    assert any("malformed XML" in p["reason"] for p in ds.problems)
    assert ds.unmapped["person"] == 2


BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<annotation><filename>&lol3;</filename><size><width>5</width><height>5</height></size></annotation>"""
EXTERNAL = """<?xml version="1.0"?>
<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<annotation><filename>&xxe;</filename><size><width>5</width><height>5</height></size></annotation>"""


@pytest.mark.parametrize("text", [BOMB, EXTERNAL])
def test_unsafe_xml_is_refused(tmp_path, text):
    f = tmp_path / "evil.xml"
    f.write_text(text)
    with pytest.raises(AnnotationError, match="refused unsafe XML"):
        load_annotations(f)
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "evil.xml").write_text(text)
    ds = load_voc(tmp_path)
    assert ds.images == [] and "refused unsafe XML" in ds.problems[0]["reason"]


def two_image_set(tmp_path, missing: bool = False):
    """Two random 40x30 images, a car in a and a cat in b, as a COCO file; with ``missing``, a third
    annotated image whose file does not exist. Returns (images folder, annotation file)."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.RandomState(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.randint(0, 255, (30, 40, 3)).astype(np.uint8)).save(images / name)
    entries = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
               {"id": 2, "file_name": "b.png", "width": 40, "height": 30}]
    boxes = [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [5, 5, 10, 10]},
             {"id": 2, "image_id": 2, "category_id": 3, "bbox": [0, 0, 20, 20]}]
    if missing:
        entries.append({"id": 3, "file_name": "missing.png", "width": 40, "height": 30})
        boxes.append({"id": 3, "image_id": 3, "category_id": 3, "bbox": [0, 0, 20, 20]})
    return images, write_coco(tmp_path / "ann.json", images=entries, annotations=boxes)


def test_evaluate_cli_runs_and_scores_predictions(tmp_path, random_weights_file):
    images, ann = two_image_set(tmp_path, missing=True)
    out = tmp_path / "ev"
    assert main(["evaluate", str(ann), "--images", str(images), "-o", str(out),
                 "--weights", str(random_weights_file), "--workers", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    names = set(metrics["results"])
    assert {"gradloc (gradient)", "Grad-CAM (final features, CAM box)", "CAM (CAM box)", "best centred box",
            "whole image", "random boxes"} <= names
    assert metrics["info"]["skipped"][0]["reason"] == "file not found"
    assert metrics["results"]["whole image"]["corloc"]["n"] == 2  # scored on the readable images
    for f in ("report.md", "corloc_vs_iou.png", "iou_histogram.png", "per_class.png", "examples.png"):
        assert (out / f).is_file(), f
    # The same images through `localize`, then scored from predictions.json without the model.
    loc = tmp_path / "loc"
    assert main(["localize", str(images), "-o", str(loc), "--weights", str(random_weights_file),
                 "--classes", "all", "--top-k", "10", "--vis-limit", "0"]) == 0
    out2 = tmp_path / "ev2"
    assert main(["evaluate", str(ann), "--predictions", str(loc / "predictions.json"), "-o", str(out2)]) == 0
    m2 = json.loads((out2 / "metrics.json").read_text())["results"]
    (name,) = [n for n in m2 if n.startswith("gradloc")]
    assert m2[name]["corloc"]["0.5"] == metrics["results"]["gradloc (gradient)"]["corloc"]["0.5"]
    assert m2[name]["pointing"] == metrics["results"]["gradloc (gradient)"]["pointing"]


def test_make_synthetic_boxes_are_exact(tmp_path):
    from .conftest import shared_file
    from gradloc.data.synthetic import make_synthetic
    cifar = shared_file("cifar10-jpeg.tar.gz")
    path = make_synthetic(cifar, tmp_path / "syn", n=6, canvas=(96, 96), seed=3)
    ds = load_coco(path)
    assert len(ds.images) == 6 and ds.problems == []
    for im in ds.images:
        assert len(set(im.labels.tolist())) == len(im.labels)  # different classes per canvas
        b = im.boxes
        assert ((b[:, 2] - b[:, 0]) == (b[:, 3] - b[:, 1])).all()  # square pasted tiles
        assert box_iou(b, b).fill_diagonal_(0).max() == 0 if len(b) > 1 else True


def test_evaluate_excludes_listed_images(tmp_path, random_weights_file):
    images, ann = two_image_set(tmp_path)
    (tmp_path / "trained.txt").write_text("# trained on\na.png\n")
    out = tmp_path / "ev"
    assert main(["evaluate", str(ann), "--images", str(images), "-o", str(out), "--weights", str(random_weights_file),
                 "--workers", "0", "--exclude", str(tmp_path / "trained.txt"), "--no-gradcam"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["info"]["images"] == 1 and metrics["results"]["whole image"]["corloc"]["n"] == 1


def test_presence_by_hand():
    """Four claims over two images, three pairs to find: ranked by score they go right, wrong
    (absent class), right, wrong (box misses); a crowd-only class counts neither way."""
    from gradloc.evaluation.metrics import presence
    ds = AnnotatedSet([img("a", 100, 100, [[0, 0, 50, 50], [50, 50, 100, 100]], [3, 5]),
                       img("b", 100, 100, [[10, 10, 60, 60], [0, 0, 9, 9]], [1, 2], [False, True])])
    preds = [
        Prediction(boxes={3: torch.tensor([[0.0, 0, 50, 50]]), 5: torch.tensor([[0.0, 0, 10, 10]]),
                          7: torch.tensor([[0.0, 0, 10, 10]])},
                   scores={3: torch.tensor([0.9]), 5: torch.tensor([0.2]), 7: torch.tensor([0.8])}),
        Prediction(boxes={1: torch.tensor([[10.0, 10, 60, 60]]), 2: torch.tensor([[0.0, 0, 9, 9]])},
                   scores={1: torch.tensor([0.5]), 2: torch.tensor([0.99])}),
    ]
    p = presence(ds, preds)
    assert (p["claims"], p["pairs"]) == (4, 3)
    # precision after each claim 1, 1/2, 2/3, 2/4; recall 1/3, 1/3, 2/3, 2/3; all-points AP = 1/3 + 1/3 * 2/3
    assert p["AP"] == pytest.approx(1 / 3 + 2 / 9)
    assert p["at_min_score"]["0.5"] == {"claims": 3, "precision": pytest.approx(2 / 3), "recall": pytest.approx(2 / 3)}
    assert p["at_min_score"]["0.9"] == {"claims": 1, "precision": 1.0, "recall": pytest.approx(1 / 3)}
    assert p["best_f1"] == pytest.approx(2 / 3) and p["best_f1_min_score"] == 0.5


def test_evaluate_request_all_asks_the_models_own_classes(tmp_path, random_weights_file):
    images, ann = two_image_set(tmp_path)
    out = tmp_path / "ev"
    assert main(["evaluate", str(ann), "--images", str(images), "-o", str(out), "--weights", str(random_weights_file),
                 "--workers", "0", "--request", "all", "--top-k", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["info"]["request"] == "all"
    assert set(metrics["results"]) == {"gradloc (gradient)", "Grad-CAM (final features, CAM box)", "CAM (CAM box)"}
    for name, m in metrics["results"].items():
        assert m["presence"]["claims"] == 20 and m["presence"]["pairs"] == 2, name  # ten classes per image
    assert "Present or absent" in (out / "report.md").read_text() and (out / "presence_pr.png").is_file()
