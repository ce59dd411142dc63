"""Hostile inputs, generated here: annotation files and image files that must give a listed
problem, a clean skip or a one-line error, never a traceback, and never cost the good entries."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gradloc.data.annotations import AnnotationError, load_aliases, load_annotations
from gradloc.cli import main
from gradloc.data.preprocess import ImageError, open_image, to_rgb_tensor
from gradloc.discovery.results import Prediction, read_predictions

CATS = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]


def coco_file(tmp_path: Path, images, annotations, categories=CATS, name="ann.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def good_image(i: int, file: str | None = None) -> dict:
    return {"id": i, "file_name": file or f"{i}.jpg", "width": 100, "height": 80}


def good_annotation(i: int, image_id, cat=1) -> dict:
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": [10, 10, 30, 20]}


def reasons(ds) -> str:
    return " | ".join(p["reason"] for p in ds.problems)


def test_duplicate_image_ids_keep_the_first_and_say_so(tmp_path):
    ds = load_annotations(coco_file(tmp_path, [good_image(1, "a.jpg"), good_image(1, "b.jpg"), good_image(2)],
                                    [good_annotation(1, 1), good_annotation(2, 2)]))
    assert [im.file for im in ds.images] == ["a.jpg", "2.jpg"]
    assert "duplicate image id 1" in reasons(ds) and "'a.jpg'" in reasons(ds)
    assert any(p["file"] == "b.jpg" for p in ds.problems)


@pytest.mark.parametrize("bad_id", [[1], {"x": 1}, True, 1.5, None])
def test_ids_that_are_not_integers_or_strings_are_listed(tmp_path, bad_id):
    images = [good_image(1), {**good_image(2), "id": bad_id}]
    anns = [good_annotation(1, 1), good_annotation(2, bad_id), {**good_annotation(3, 1), "category_id": bad_id}]
    cats = CATS + [{"id": bad_id, "name": "bird"}]
    ds = load_annotations(coco_file(tmp_path, images, anns, cats))
    assert [im.file for im in ds.images] == ["1.jpg"] and len(ds.images[0].boxes) == 1
    text = reasons(ds)
    assert "id must be an integer or string" in text and "category_id" in text and "category entry" in text


@pytest.mark.parametrize("field,value", [("width", "inf"), ("height", "-inf"), ("width", "nan"), ("width", 0),
                                         ("height", "12x")])
def test_sizes_that_are_not_positive_finite_numbers_skip_the_image(tmp_path, field, value):
    path = tmp_path / "ann.json"
    images = [good_image(1), {**good_image(2), field: 7}]
    text = json.dumps({"images": images, "annotations": [good_annotation(1, 1), good_annotation(2, 2)],
                       "categories": CATS})
    # Python's json writes and reads Infinity / NaN, as a hostile file might hold them
    literal = {"inf": "Infinity", "-inf": "-Infinity", "nan": "NaN"}.get(value, json.dumps(value))
    path.write_text(text.replace(f'"{field}": 7', f'"{field}": {literal}'))
    ds = load_annotations(path)
    assert [im.file for im in ds.images] == ["1.jpg"]
    assert "2.jpg" in [p["file"] for p in ds.problems]


def test_infinite_coordinates_and_areas(tmp_path):
    path = tmp_path / "ann.json"
    anns = [{**good_annotation(1, 1), "bbox": [10, 10, 777, 20]}, {**good_annotation(2, 1), "area": 888}]
    text = json.dumps({"images": [good_image(1)], "annotations": anns, "categories": CATS})
    path.write_text(text.replace("777", "Infinity").replace("888", "Infinity"))
    ds = load_annotations(path)
    (im,) = ds.images
    assert len(im.boxes) == 1 and "not finite; dropped" in reasons(ds)
    assert im.areas.tolist() == [600.0]  # an infinite area falls back to the box's


def test_deeply_nested_json_is_a_one_line_error(tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(AnnotationError, match="nested too deeply"):
        load_annotations(deep)
    with pytest.raises(AnnotationError, match="alias table .* nested too deeply"):
        load_aliases(deep)
    with pytest.raises(ValueError, match="predictions file .* nested too deeply"):
        read_predictions(deep)
    assert main(["evaluate", str(deep), "--images", str(tmp_path), "-o", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err
    assert "nested too deeply" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_one_bad_voc_file_does_not_stop_the_folder(tmp_path):
    ann = tmp_path / "Annotations"
    ann.mkdir()
    good = ("<annotation><filename>good.jpg</filename><size><width>100</width><height>80</height></size>"
            "<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>50</xmax><ymax>40</ymax>"
            "</bndbox></object></annotation>")
    (ann / "a.xml").write_text(good)
    (ann / "b.xml").write_bytes(b'<?xml version="1.0" encoding="no-such-codec"?><annotation/>')
    (ann / "c.xml").write_text(good.replace("<width>100</width>", "<width>1e400</width>"))
    (ann / "d.xml").write_bytes(b"\xff\xfe<annotation>")
    (ann / "e.xml").write_text(good.replace("<xmax>50</xmax>", "<xmax>inf</xmax>"))
    ds = load_annotations(tmp_path)
    assert [im.file for im in ds.images] == ["good.jpg"]  # a.xml; e.xml's one box is not finite
    files = {Path(p["file"]).name for p in ds.problems}
    assert {"b.xml", "c.xml", "d.xml"} <= files and "not finite" in reasons(ds)


@pytest.mark.parametrize("content", [[1, 2], {"images": {"a": 1}}, {"nothing": []}, "text"])
def test_predictions_that_are_not_gradlocs_are_refused_in_one_line(tmp_path, capsys, content):
    ann = coco_file(tmp_path, [good_image(1)], [good_annotation(1, 1)])
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps(content))
    assert main(["evaluate", str(ann), "--predictions", str(pred), "-o", str(tmp_path / "o")]) != 0
    assert main(["export-coco", str(pred), "-o", str(tmp_path / "x.json")]) != 0
    err = capsys.readouterr().err
    assert "not a gradloc predictions.json" in err and "Traceback" not in err


def test_records_without_a_file_are_left_out_and_bad_proposals_dropped(tmp_path):
    ann = coco_file(tmp_path, [good_image(1)], [good_annotation(1, 1)])
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps({"images": [good_image(1), {"file": "1.jpg", "proposals": [
        {"label": "cat", "box": [1, 2, "x", 4]}, {"label": "unicorn", "box": [1, 2, 3, 4]}, "junk",
        {"label": "cat", "box": [10, 10, 40, 30], "score": 0.5}], "peaks": {"cat": [1, "y"]}, "probs": [1]}]}))
    records, _ = read_predictions(pred)
    assert len(records) == 1  # the COCO image entry has no "file"
    p = Prediction.from_record(records[0])
    assert p.boxes[3].tolist() == [[10.0, 10.0, 40.0, 30.0]] and p.probs is None and p.peaks is None
    assert main(["evaluate", str(ann), "--predictions", str(pred), "-o", str(tmp_path / "o")]) == 0


def test_an_annotation_file_given_as_predictions_is_an_error_naming_it(tmp_path, capsys):
    ann = coco_file(tmp_path, [good_image(1)], [good_annotation(1, 1)])
    assert main(["evaluate", str(ann), "--predictions", str(ann), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{ann} is not a gradloc predictions.json" in err and "COCO annotation file" in err
    assert "Traceback" not in err and not (tmp_path / "o" / "metrics.json").exists()
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something-else", "images": []}))
    assert main(["export", str(other), "--format", "yolo", "-o", str(tmp_path / "y")]) == 2
    assert "its format is 'something-else'" in capsys.readouterr().err


def test_evaluate_with_nothing_scorable_exits_non_zero_in_one_line(tmp_path, capsys):
    crowd = coco_file(tmp_path, [good_image(1)], [{**good_annotation(1, 1), "iscrowd": 1}], name="crowd.json")
    assert main(["evaluate", str(crowd), "--predictions", str(crowd), "-o", str(tmp_path / "o")]) == 2
    assert "every box of its 1 images is crowd" in capsys.readouterr().err
    ann = coco_file(tmp_path, [good_image(1)], [good_annotation(1, 1)])
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps({"format": "gradloc-predictions", "images": [{"file": "elsewhere.jpg", "proposals": []}]}))
    assert main(["evaluate", str(ann), "--predictions", str(pred), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nothing to score: none of the 1 annotated images has a prediction" in err and "Traceback" not in err
    # images that are all missing from the folder: the same, naming the first
    assert main(["evaluate", str(ann), "--images", str(tmp_path / "nowhere"), "-o", str(tmp_path / "o2"),
                 "--no-baselines", "--no-gradcam", "--workers", "0"]) == 2
    assert "nothing to score" in capsys.readouterr().err


@pytest.mark.parametrize("spec", [3.5, True, [1, 2.5], {"cat": 1}, [None]])
def test_class_requests_of_the_wrong_type_get_gradlocs_message(spec):
    from gradloc.models.classes import parse_class_spec
    with pytest.raises(ValueError, match="is not a class name, an integer index"):
        parse_class_spec(spec)


def test_formats_outside_the_allow_list_are_refused_before_decoding(tmp_path):
    eps = tmp_path / "page.eps"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ImageError, match="format gradloc does not read"):
        open_image(eps)
    # also under a raster name: the content decides, not the suffix
    disguised = tmp_path / "photo.jpg"
    disguised.write_bytes(eps.read_bytes())
    with pytest.raises(ImageError, match="format gradloc does not read"):
        open_image(disguised)


def test_float_tiff_with_nan_keeps_its_finite_pixels(tmp_path):
    arr = np.full((20, 30), 0.5, np.float32)
    arr[:5] = np.nan
    arr[10:, :10] = 1.0
    path = tmp_path / "float.tif"
    Image.fromarray(arr, "F").save(path)
    rgb = to_rgb_tensor(path)
    assert rgb.shape == (3, 20, 30)
    assert int(rgb[0, 0, 0]) == 0 and int(rgb[0, 15, 20]) == 128 and int(rgb[0, 15, 5]) == 255


def test_float_rgb_tiff_that_pillow_cannot_read_is_decoded(tmp_path):
    cv2 = pytest.importorskip("cv2")
    arr = np.zeros((16, 24, 3), np.float32)
    arr[..., 0] = 1.0          # OpenCV writes BGR: blue
    arr[4, 4] = np.nan
    path = tmp_path / "rgb32f.tif"
    assert cv2.imwrite(str(path), arr)
    with pytest.raises(Exception):
        Image.open(path).load()  # the case this covers: Pillow refuses it
    rgb = to_rgb_tensor(path)
    assert rgb.shape == (3, 16, 24)
    assert rgb[:, 0, 0].tolist() == [0, 0, 255] and rgb[:, 4, 4].tolist() == [0, 0, 0]


def test_float_arrays_and_tensors_with_nan(tmp_path):
    import torch
    arr = np.full((4, 4, 3), np.nan, np.float32)
    arr[0, 0] = 1.0
    assert to_rgb_tensor(arr)[:, 0, 0].tolist() == [255] * 3 and to_rgb_tensor(arr)[:, 1, 1].tolist() == [0] * 3
    t = torch.from_numpy(arr).permute(2, 0, 1)
    assert to_rgb_tensor(t)[:, 1, 1].tolist() == [0] * 3


def test_decoding_workers_default_to_none_on_two_cores_and_refuse_negatives(monkeypatch):
    import gradloc.data.io as gio
    monkeypatch.setattr(gio.os, "cpu_count", lambda: 2)
    assert gio.decoding_workers() == 0 and gio.decoding_workers(3) == 3
    monkeypatch.setattr(gio.os, "cpu_count", lambda: 16)
    assert gio.decoding_workers() == 1 and gio.decoding_workers(0) == 0
    with pytest.raises(ValueError, match="workers must be an integer >= 0"):
        gio.decoding_workers(-1)


@pytest.mark.parametrize("below", [False, True])
def test_an_output_folder_that_is_a_file_is_a_one_line_error(tmp_path, capsys, below):
    # -o names a file, or a folder under one: the reason and the path, not Python's "[Errno 17]"
    img = tmp_path / "a.png"
    Image.new("RGB", (32, 32), (90, 30, 200)).save(img)
    taken = tmp_path / "taken"
    taken.write_text("a file")
    out = taken / "run" if below else taken
    assert main(["localize", str(img), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"gradloc: error: {'Not a directory' if below else 'File exists'}: {out} " \
                  "(a file stands where a folder is needed)"
    assert taken.read_text() == "a file"  # nothing of the user's is overwritten
