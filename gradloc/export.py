"""A ``predictions.json`` as the box formats detector training reads: COCO, Pascal VOC, YOLO.

:func:`select` keeps the proposals a pseudo-label set wants (``min_score``, best ``top_k`` per
class); :func:`export` writes them, each image under its path relative to ``relative_to`` (by
default the images' common folder), so the original layout is kept:

- ``coco``: ``DIR/annotations.json``, a COCO dataset whose annotations carry their ``score``
  (pycocotools ``COCO()`` reads it, ``loadRes`` its annotation list); categories numbered from 1,
  as COCO's files number them.
- ``voc``: ``DIR/<path>.xml`` per image: its size and one ``object`` per box, corners 1-based and
  inclusive as VOC writes them (``xmin = x0 + 1``, ``xmax = x1`` of pixel-edge xyxy, rounded).
- ``yolo``: the layout Ultralytics trains on: ``DIR/labels/<path>.txt`` per image, ``class cx cy w h``
  normalised by the image's size (an image without boxes gets an empty file: a background image),
  ``DIR/images/<path>`` a link to the image, ``DIR/data.yaml`` (``path``, ``train``, ``val``,
  ``names``) and ``DIR/classes.txt``.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import torch
from torchvision.ops import clip_boxes_to_image

from .data.io import atomic_write_text
from .models.wrn import CIFAR10_CLASSES
from .discovery.results import finite_numbers

FORMATS = ("coco", "voc", "yolo")


def select(records: list[dict], min_score: float | None = None, top_k: int | None = None,
           classes=CIFAR10_CLASSES) -> list[dict]:
    """The image records (skipped ones left out) with only the proposals kept, boxes clipped to
    the image: a label of the classifier's ``classes``, score >= ``min_score`` and, per class, the
    ``top_k`` best (records list each class's proposals best first)."""
    out = []
    for rec in records:
        w, h = rec.get("width"), rec.get("height")
        if "skipped" in rec or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (w, h)):
            continue
        per_class: dict[str, int] = {}
        kept = []
        props = rec.get("proposals")
        for prop in props if isinstance(props, list) else []:
            # a proposal without a known label, a finite box and a finite score is not a label to train on
            if not isinstance(prop, dict) or not isinstance(prop.get("label"), str) or prop["label"] not in classes:
                continue
            box, score = finite_numbers(prop.get("box"), 4), finite_numbers([prop.get("score")], 1)
            if box is None or score is None or (min_score is not None and score[0] < min_score):
                continue
            # clipped to the image once here, for every format
            box = clip_boxes_to_image(torch.tensor([box]), (h, w))[0].tolist()
            prop = {**prop, "box": box, "score": score[0]}
            per_class[prop["label"]] = per_class.get(prop["label"], 0) + 1
            if top_k is None or per_class[prop["label"]] <= top_k:
                kept.append(prop)
        out.append({**rec, "proposals": kept})
    return out


def relative_names(files: list[str], relative_to: str | Path | None = None) -> list[str]:
    """Each image's path relative to ``relative_to`` (default: the images' common folder), in
    POSIX form; a file outside that folder keeps its absolute path."""
    absolute = [os.path.abspath(f) for f in files]
    if relative_to is None:
        relative_to = os.path.commonpath([os.path.dirname(a) for a in absolute]) if absolute else "."
    base = os.path.abspath(relative_to)
    names = []
    for a in absolute:
        rel = os.path.relpath(a, base)
        names.append(Path(a).as_posix() if rel.split(os.sep)[0] == ".." else Path(rel).as_posix())
    return names


def coco_dataset(records: list[dict], names: list[str], classes=CIFAR10_CLASSES) -> dict:
    """The records as a COCO dataset (categories: the classifier's classes, id = index + 1), scores kept."""
    images, annotations = [], []
    for n, (rec, name) in enumerate(zip(records, names)):
        images.append({"id": n + 1, "file_name": name, "width": rec["width"], "height": rec["height"]})
        for prop in rec["proposals"]:
            x0, y0, x1, y1 = prop["box"]
            w, h = round(x1 - x0, 2), round(y1 - y0, 2)
            annotations.append({"id": len(annotations) + 1, "image_id": n + 1,
                                "category_id": classes.index(prop["label"]) + 1,
                                "bbox": [round(x0, 2), round(y0, 2), w, h], "area": round(w * h, 2),
                                "iscrowd": 0, "score": prop["score"]})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": c + 1, "name": name} for c, name in enumerate(classes)]}


def voc_xml(rec: dict, name: str) -> str:
    """One image's Pascal VOC annotation."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = Path(name).parent.as_posix() if Path(name).parent != Path(".") else ""
    ET.SubElement(root, "filename").text = Path(name).name
    size = ET.SubElement(root, "size")
    for key, value in (("width", rec["width"]), ("height", rec["height"]), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    for prop in rec["proposals"]:
        x0, y0, x1, y1 = prop["box"]
        xmin, ymin = min(round(x0) + 1, rec["width"]), min(round(y0) + 1, rec["height"])
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = prop["label"]
        for key in ("pose", "truncated", "difficult"):
            ET.SubElement(obj, key).text = "Unspecified" if key == "pose" else "0"
        ET.SubElement(obj, "score").text = f"{prop['score']:g}"
        bb = ET.SubElement(obj, "bndbox")
        for key, value in (("xmin", xmin), ("ymin", ymin), ("xmax", max(round(x1), xmin)), ("ymax", max(round(y1), ymin))):
            ET.SubElement(bb, key).text = str(int(value))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def yolo_lines(rec: dict, classes=CIFAR10_CLASSES) -> str:
    """One image's YOLO label file: ``class cx cy w h`` per box, normalised to [0, 1]."""
    w, h = rec["width"], rec["height"]
    lines = []
    for prop in rec["proposals"]:
        x0, y0, x1, y1 = prop["box"]
        lines.append(f"{classes.index(prop['label'])} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} "
                     f"{(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}")
    return "".join(line + "\n" for line in lines)


def write_yolo_dataset(records: list[dict], names: list[str], out: Path, classes) -> None:
    """Labels under ``out/labels``, links to the images under ``out/images`` (where the image
    exists), ``out/data.yaml`` and ``out/classes.txt``: a dataset ``yolo train data=out/data.yaml`` reads."""
    for rec, name in zip(records, names):
        label = out / "labels" / Path(name).with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(label, yolo_lines(rec, classes))
        image, source = out / "images" / name, Path(os.path.abspath(rec["file"]))
        if source.is_file() and not image.exists():
            image.parent.mkdir(parents=True, exist_ok=True)
            image.symlink_to(source)
    atomic_write_text(out / "classes.txt", "".join(c + "\n" for c in classes))
    listed = "".join(f"  {k}: {json.dumps(c)}\n" for k, c in enumerate(classes))
    atomic_write_text(out / "data.yaml", f"path: {json.dumps(os.path.abspath(out))}\ntrain: images\nval: images\n"
                                         f"names:\n{listed}")


def export(records: list[dict], fmt: str, out: Path, relative_to: str | Path | None = None,
           classes=CIFAR10_CLASSES) -> tuple[int, int]:
    """Write :func:`select`-ed ``records`` to ``out`` in ``fmt`` (see the module), labels among
    the classifier's ``classes``; returns (images, boxes) written."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    names = relative_names([r["file"] for r in records], relative_to)
    outside = [n for n in names if Path(n).is_absolute()]
    if outside and fmt != "coco":
        raise ValueError(f"{outside[0]} is outside {relative_to}: {fmt} files are written under the output folder "
                         "at each image's relative path; give --relative-to a folder above every image")
    if len(set(names)) < len(names):
        raise ValueError("two images map to the same exported name; give --relative-to their common folder")
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "coco":
        atomic_write_text(out / "annotations.json", json.dumps(coco_dataset(records, names, classes)))
    elif fmt == "voc":
        for rec, name in zip(records, names):
            path = out / Path(name).with_suffix(".xml")
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, voc_xml(rec, name))
    else:
        write_yolo_dataset(records, names, out, classes)
    return len(records), sum(len(r["proposals"]) for r in records)


def coco_results_or_dataset(records: list[dict], classes, annotations: str | None = None, aliases: str | None = None,
                            relative_to: str | None = None) -> tuple[object, str]:
    """``gradloc export-coco``: with ``annotations``, a COCO results file (the annotations' image
    and category ids, mapped onto the run's own classes through ``aliases``; images of either side
    without a counterpart are said on stderr); without, a COCO dataset of the selected proposals.
    Returns the document and what it holds, in words."""
    if annotations:
        from .data.annotations import load_aliases, load_annotations
        from .evaluation import coco
        ds = load_annotations(annotations, load_aliases(aliases, classes), classes)
        dets, unmatched, missing = coco.results_from_predictions(records, ds)
        for f in unmatched:
            print(f"gradloc: {f}: no annotated image of this name; its proposals are not in the results",
                  file=sys.stderr)
        for f in missing:
            print(f"gradloc: {f}: annotated, but no prediction for it", file=sys.stderr)
        return dets, f"{len(dets)} results for {len(ds.images) - len(missing)} annotated images"
    kept = select(records, classes=classes)
    files = [r["file"] for r in kept]
    dataset = coco_dataset(kept, files if relative_to is None else relative_names(files, relative_to), classes)
    return dataset, f"a COCO dataset of {len(dataset['images'])} images and {len(dataset['annotations'])} scored boxes"
