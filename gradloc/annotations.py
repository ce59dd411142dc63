"""Annotated image sets: COCO JSON and Pascal VOC XML, mapped onto CIFAR-10's classes.

Boxes come back as float xyxy in pixels. Nothing is dropped silently: annotations whose
class has no CIFAR-10 counterpart, boxes of zero area, boxes clipped to the image, and
malformed entries are listed in :attr:`AnnotatedSet.problems` with a reason.
XML is parsed with defusedxml, which refuses entity expansion and external entities.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .model import CIFAR10_CLASSES

# Names used by COCO, Pascal VOC and ImageNet-style sets -> CIFAR-10 class.
DEFAULT_ALIASES: dict[str, str] = {
    **{c: c for c in CIFAR10_CLASSES},
    "aeroplane": "airplane", "plane": "airplane", "aircraft": "airplane", "jet": "airplane",
    "car": "automobile", "auto": "automobile", "sports car": "automobile",
    "convertible": "automobile", "station wagon": "automobile", "limousine": "automobile",
    "boat": "ship", "lifeboat": "ship", "gondola": "ship", "vessel": "ship",
    "kitten": "cat", "puppy": "dog", "pony": "horse", "lorry": "truck",
    "pickup truck": "truck", "moving van": "truck", "police van": "truck",
    "toad": "frog", "bullfrog": "frog", "gazelle": "deer",
}


class AnnotationError(ValueError):
    """An annotation file cannot be read at all; the message says why."""


@dataclass
class AnnotatedImage:
    """One image's ground truth. ``boxes`` ``[K, 4]`` float xyxy pixels, ``labels`` ``[K]``
    CIFAR-10 indices, ``difficult`` ``[K]`` bool (VOC's flag; such boxes are not scored)."""

    file: str
    width: int
    height: int
    boxes: Tensor
    labels: Tensor
    difficult: Tensor
    image_id: int | str | None = None   # the annotation file's id (COCO), else None
    areas: Tensor | None = None          # [K] COCO's ``area`` of each box, else None (box area)

    def classes(self) -> list[int]:
        """The classes with at least one scorable (non-difficult) box, sorted."""
        return sorted(set(self.labels[~self.difficult].tolist()))

    def boxes_of(self, c: int) -> Tensor:
        return self.boxes[(self.labels == c) & ~self.difficult]


@dataclass
class AnnotatedSet:
    images: list[AnnotatedImage]
    problems: list[dict] = field(default_factory=list)   # {"file", "reason"}
    unmapped: Counter = field(default_factory=Counter)   # category name -> count
    # CIFAR-10 index -> the annotation file's category id (the lowest of those mapped onto it);
    # classes absent here are written with their index as id.
    category_ids: dict[int, int] = field(default_factory=dict)
    source: str = ""                                     # "coco" or "voc"


def load_aliases(path: str | Path | None) -> dict[str, str]:
    """The default alias table, updated from a JSON file ``{"name": "cifar class"}``."""
    aliases = dict(DEFAULT_ALIASES)
    if path:
        try:
            extra = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise AnnotationError(f"cannot read alias table {path}: {exc}") from None
        if not isinstance(extra, dict):
            raise AnnotationError(f"alias table {path} must be a JSON object")
        for k, v in extra.items():
            if v is not None and str(v).lower() not in CIFAR10_CLASSES:
                raise AnnotationError(f"alias {k!r} -> {v!r}: not a CIFAR-10 class")
            aliases[str(k).lower()] = None if v is None else str(v).lower()
    return aliases


def map_class(name: str, aliases: dict[str, str]) -> int | None:
    key = str(name).strip().lower().replace("_", " ")
    target = aliases.get(key, aliases.get(key.replace(" ", "")))
    return None if target is None else CIFAR10_CLASSES.index(target)


def _clean_box(box, width: int, height: int, where: str, problems: list) -> list[float] | None:
    """Clip a box to the image; refuse non-finite or empty ones (with a reason)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(map(lambda v: v == v and abs(v) != float("inf"), (x0, y0, x1, y1))):
        problems.append({"file": where, "reason": f"box {box} is not finite; dropped"})
        return None
    cx0, cy0 = min(max(x0, 0.0), width), min(max(y0, 0.0), height)
    cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
    if cx1 <= cx0 or cy1 <= cy0:
        problems.append({"file": where, "reason": f"box {[x0, y0, x1, y1]} has zero area inside "
                                                  f"the {width}x{height} image; dropped"})
        return None
    if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
        problems.append({"file": where, "reason": f"box {[x0, y0, x1, y1]} out of range; clipped "
                                                  f"to the {width}x{height} image"})
    return [cx0, cy0, cx1, cy1]


def _image(file, width, height, boxes, labels, difficult, image_id=None, areas=None) -> AnnotatedImage:
    return AnnotatedImage(
        file=file, width=int(width), height=int(height),
        boxes=torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
        labels=torch.tensor(labels, dtype=torch.int64),
        difficult=torch.tensor(difficult, dtype=torch.bool), image_id=image_id,
        areas=None if areas is None else torch.tensor(areas, dtype=torch.float64))


def load_coco(path: str | Path, aliases: dict[str, str] | None = None) -> AnnotatedSet:
    """Read a COCO detection JSON (``images``, ``annotations``, ``categories``).

    ``bbox`` is ``[x, y, width, height]``; ``iscrowd`` boxes are kept as difficult.
    """
    aliases = aliases or DEFAULT_ALIASES
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise AnnotationError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise AnnotationError(f"{path} is not COCO detection JSON: needs 'images' and 'annotations' lists")
    problems: list[dict] = []
    unmapped: Counter = Counter()
    cats = {}
    for c in data.get("categories") or []:
        if isinstance(c, dict) and "id" in c and "name" in c:
            cats[c["id"]] = (c["name"], map_class(c["name"], aliases))
    images: dict = {}
    for im in data["images"]:
        try:
            images[im["id"]] = {"file": str(im["file_name"]), "width": int(im["width"]),
                                "height": int(im["height"]), "boxes": [], "labels": [], "difficult": [],
                                "image_id": im["id"], "areas": []}
            if images[im["id"]]["width"] < 1 or images[im["id"]]["height"] < 1:
                raise ValueError("non-positive size")
        except (KeyError, TypeError, ValueError) as exc:
            images.pop(im.get("id") if isinstance(im, dict) else None, None)
            problems.append({"file": str(im.get("file_name", "?")) if isinstance(im, dict) else "?",
                             "reason": f"image entry without valid id/file_name/width/height ({exc}); skipped"})
    for a in data["annotations"]:
        try:
            img = images[a["image_id"]]
            x, y, w, h = (float(v) for v in a["bbox"])
            cat = a["category_id"]
        except (KeyError, TypeError, ValueError) as exc:
            problems.append({"file": str(images.get(a.get("image_id"), {}).get("file", "?"))
                             if isinstance(a, dict) else "?",
                             "reason": f"annotation {a.get('id', '?') if isinstance(a, dict) else '?'} "
                                       f"malformed ({type(exc).__name__}: {exc}); skipped"})
            continue
        name, label = cats.get(cat, (f"category {cat}", None))
        if label is None:
            unmapped[name] += 1
            problems.append({"file": img["file"], "reason": f"class {name!r} has no CIFAR-10 counterpart; not scored"})
            continue
        box = _clean_box([x, y, x + w, y + h], img["width"], img["height"], img["file"], problems)
        if box is not None:
            img["boxes"].append(box)
            img["labels"].append(label)
            img["difficult"].append(bool(a.get("iscrowd", 0)))
            area = a.get("area")
            img["areas"].append(float(area) if isinstance(area, (int, float)) and area >= 0 else w * h)
    out = [_image(**v) for v in images.values() if v["labels"]]
    category_ids: dict[int, int] = {}
    for cat_id, (_, label) in sorted((k, v) for k, v in cats.items() if isinstance(k, int)):
        if label is not None:
            category_ids.setdefault(label, cat_id)
    return AnnotatedSet(out, problems, unmapped, category_ids, "coco")


def load_voc_xml(xml_path: str | Path, aliases: dict[str, str] | None = None,
                 problems: list | None = None, unmapped: Counter | None = None) -> AnnotatedImage | None:
    """Read one Pascal VOC annotation file; None when it holds no scorable object."""
    from defusedxml import ElementTree as ET
    from defusedxml.common import DefusedXmlException

    aliases = aliases or DEFAULT_ALIASES
    problems = problems if problems is not None else []
    unmapped = unmapped if unmapped is not None else Counter()
    try:
        root = ET.parse(str(xml_path)).getroot()
    except DefusedXmlException as exc:
        raise AnnotationError(f"{xml_path}: refused unsafe XML ({type(exc).__name__})") from None
    except ET.ParseError as exc:
        raise AnnotationError(f"{xml_path}: malformed XML ({exc})") from None
    except OSError as exc:
        raise AnnotationError(f"cannot read {xml_path}: {exc.strerror or exc}") from None
    file = root.findtext("filename") or Path(xml_path).stem + ".jpg"
    try:
        width = int(float(root.findtext("size/width")))
        height = int(float(root.findtext("size/height")))
        if width < 1 or height < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise AnnotationError(f"{xml_path}: missing or invalid size/width, size/height") from None
    boxes, labels, difficult = [], [], []
    for obj in root.iter("object"):
        name = obj.findtext("name") or "?"
        label = map_class(name, aliases)
        if label is None:
            unmapped[name] += 1
            problems.append({"file": file, "reason": f"class {name!r} has no CIFAR-10 counterpart; not scored"})
            continue
        try:
            bb = obj.find("bndbox")
            # VOC corners are 1-based inclusive pixel indices -> pixel-edge xyxy.
            coords = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            coords = [coords[0] - 1, coords[1] - 1, coords[2], coords[3]]
        except (AttributeError, TypeError, ValueError):
            problems.append({"file": file, "reason": f"object {name!r} without a valid bndbox; skipped"})
            continue
        box = _clean_box(coords, width, height, file, problems)
        if box is not None:
            boxes.append(box)
            labels.append(label)
            difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    return _image(file, width, height, boxes, labels, difficult) if labels else None


def load_voc(folder: str | Path, aliases: dict[str, str] | None = None) -> AnnotatedSet:
    """Read every ``*.xml`` in ``folder/Annotations`` (or ``folder`` itself)."""
    folder = Path(folder)
    ann_dir = folder / "Annotations" if (folder / "Annotations").is_dir() else folder
    files = sorted(ann_dir.glob("*.xml"))
    if not files:
        raise AnnotationError(f"no *.xml annotation files in {ann_dir}")
    problems: list[dict] = []
    unmapped: Counter = Counter()
    images = []
    for f in files:
        try:
            im = load_voc_xml(f, aliases, problems, unmapped)
        except AnnotationError as exc:
            problems.append({"file": str(f), "reason": str(exc)})
            continue
        if im is not None:
            images.append(im)
    return AnnotatedSet(images, problems, unmapped, source="voc")


def load_annotations(path: str | Path, aliases: dict[str, str] | None = None) -> AnnotatedSet:
    """COCO JSON for a ``.json`` file, Pascal VOC for a folder or a single ``.xml``."""
    path = Path(path)
    if path.is_dir():
        return load_voc(path, aliases)
    if path.suffix.lower() == ".xml":
        problems: list = []
        unmapped: Counter = Counter()
        im = load_voc_xml(path, aliases, problems, unmapped)
        return AnnotatedSet([im] if im else [], problems, unmapped, source="voc")
    if not path.exists():
        raise AnnotationError(f"annotations not found: {path}")
    return load_coco(path, aliases)
