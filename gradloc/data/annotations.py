"""Annotated image sets: COCO JSON and Pascal VOC XML, mapped onto a classifier's classes
(CIFAR-10's by default, through :data:`DEFAULT_ALIASES`; a user model's by their own names).

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

from ..models.wrn import CIFAR10_CLASSES

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


def read_json(path: str | Path, what: str = "") -> object:
    """A JSON file's content, or :class:`AnnotationError` naming the file: unreadable, not UTF-8,
    not JSON, or nested too deeply for the parser. A leading byte-order mark (as Windows editors
    write) is read past."""
    label = f"{what} {path}" if what else str(path)
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise AnnotationError(f"cannot read {label}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"{label} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{label} is not valid JSON: {exc}") from None
    except RecursionError:
        raise AnnotationError(f"{label}: JSON nested too deeply to read") from None


def _is_id(v) -> bool:
    """COCO ids are integers or strings (a bool, list, object or float is no id)."""
    return isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))


def _finite_size(v) -> int:
    """A positive, finite image side (ValueError otherwise)."""
    f = float(v)
    if not (f == f and abs(f) != float("inf")) or int(f) < 1:
        raise ValueError(f"size {v!r} is not a positive finite number")
    return int(f)


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
    class_names: tuple = CIFAR10_CLASSES                 # the classes ``labels`` index
    problems: list[dict] = field(default_factory=list)   # {"file", "reason"}
    unmapped: Counter = field(default_factory=Counter)   # category name -> count
    # CIFAR-10 index -> the annotation file's category id (the lowest of those mapped onto it);
    # classes absent here are written with their index as id.
    category_ids: dict[int, int] = field(default_factory=dict)
    source: str = ""                                     # "coco" or "voc"


def default_aliases(classes=CIFAR10_CLASSES) -> dict[str, str]:
    """Annotation names -> class names: :data:`DEFAULT_ALIASES` for CIFAR-10, each class's own
    name for another classifier's classes."""
    return dict(DEFAULT_ALIASES) if tuple(classes) == CIFAR10_CLASSES else {c.lower(): c.lower() for c in classes}


def load_aliases(path: str | Path | None, classes=CIFAR10_CLASSES) -> dict[str, str]:
    """The default alias table of ``classes``, updated from a JSON file ``{"name": "class"}``."""
    aliases = default_aliases(classes)
    known = {c.lower() for c in classes}
    if path:
        extra = read_json(path, "alias table")
        if not isinstance(extra, dict):
            raise AnnotationError(f"alias table {path} must be a JSON object")
        for k, v in extra.items():
            if v is not None and (not isinstance(v, str) or v.lower() not in known):
                what = "a CIFAR-10 class" if tuple(classes) == CIFAR10_CLASSES else "one of the classifier's classes"
                raise AnnotationError(f"alias {k!r} -> {v!r}: not {what}")
            aliases[str(k).lower()] = None if v is None else str(v).lower()
    return aliases


def _short(v, limit: int = 60) -> str:
    """A value as a short repr for a problem message."""
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "..."


def map_class(name: str, aliases: dict[str, str], classes=CIFAR10_CLASSES) -> int | None:
    """An annotation's class name -> the index of its class among ``classes`` (None: none)."""
    key = str(name).strip().lower().replace("_", " ")
    target = aliases.get(key, aliases.get(key.replace(" ", "")))
    index = {c.lower(): i for i, c in enumerate(classes)}
    return None if target is None else index.get(target)


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


def load_coco(path: str | Path, aliases: dict[str, str] | None = None, classes=CIFAR10_CLASSES) -> AnnotatedSet:
    """Read a COCO detection JSON (``images``, ``annotations``, ``categories``).

    ``bbox`` is ``[x, y, width, height]``; ``iscrowd`` boxes are kept as difficult. Categories
    are mapped onto ``classes`` through ``aliases`` (default: :func:`default_aliases`).
    """
    aliases = aliases or default_aliases(classes)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise AnnotationError(f"{path} is not COCO detection JSON: needs 'images' and 'annotations' lists")
    problems: list[dict] = []
    unmapped: Counter = Counter()
    cats = {}
    for c in data.get("categories") or []:
        if isinstance(c, dict) and _is_id(c.get("id")) and "name" in c:
            cats[c["id"]] = (str(c["name"]), map_class(str(c["name"]), aliases, classes))
        else:
            problems.append({"file": str(path), "reason": f"category entry without an integer or string id "
                                                          f"and a name ({_short(c)}); ignored"})
    images: dict = {}
    for im in data["images"]:
        file = str(im.get("file_name", "?")) if isinstance(im, dict) else "?"
        try:
            if not isinstance(im, dict) or not _is_id(im.get("id")):
                raise ValueError(f"id must be an integer or string, got {_short(im.get('id') if isinstance(im, dict) else im)}")
            if im["id"] in images:
                raise ValueError(f"duplicate image id {im['id']!r} (first used by {images[im['id']]['file']!r})")
            if not isinstance(im.get("file_name"), str) or not im["file_name"]:
                raise ValueError("file_name must be a non-empty string")
            images[im["id"]] = {"file": im["file_name"], "width": _finite_size(im["width"]),
                                "height": _finite_size(im["height"]), "boxes": [], "labels": [], "difficult": [],
                                "image_id": im["id"], "areas": []}
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            problems.append({"file": file, "reason": f"image entry without valid id/file_name/width/height ({exc}); skipped"})
    for a in data["annotations"]:
        try:
            if not isinstance(a, dict) or not _is_id(a.get("image_id")) or a["image_id"] not in images:
                raise KeyError("image_id names no valid image")
            img = images[a["image_id"]]
            x, y, w, h = (float(v) for v in a["bbox"])
            cat = a["category_id"]
            if not _is_id(cat):
                raise ValueError(f"category_id {_short(cat)} is not an integer or string")
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            img_id = a.get("image_id") if isinstance(a, dict) else None
            problems.append({"file": str(images[img_id]["file"]) if _is_id(img_id) and img_id in images else "?",
                             "reason": f"annotation {_short(a.get('id', '?')) if isinstance(a, dict) else '?'} "
                                       f"malformed ({type(exc).__name__}: {exc}); skipped"})
            continue
        name, label = cats.get(cat, (f"category {cat}", None))
        if label is None:
            unmapped[name] += 1
            problems.append({"file": img["file"], "reason": f"class {name!r} has no {_counterpart(classes)}; not scored"})
            continue
        box = _clean_box([x, y, x + w, y + h], img["width"], img["height"], img["file"], problems)
        if box is not None:
            img["boxes"].append(box)
            img["labels"].append(label)
            img["difficult"].append(bool(a.get("iscrowd", 0)))
            area = a.get("area")
            finite = isinstance(area, (int, float)) and not isinstance(area, bool) and 0 <= area < float("inf")
            img["areas"].append(float(area) if finite else (box[2] - box[0]) * (box[3] - box[1]))
    out = [_image(**v) for v in images.values() if v["labels"]]
    category_ids: dict[int, int] = {}
    for cat_id, (_, label) in sorted((k, v) for k, v in cats.items() if isinstance(k, int)):
        if label is not None:
            category_ids.setdefault(label, cat_id)
    return AnnotatedSet(out, tuple(classes), problems, unmapped, category_ids, "coco")


def load_voc_xml(xml_path: str | Path, aliases: dict[str, str] | None = None,
                 problems: list | None = None, unmapped: Counter | None = None,
                 classes=CIFAR10_CLASSES) -> AnnotatedImage | None:
    """Read one Pascal VOC annotation file; None when it holds no scorable object."""
    from defusedxml import ElementTree as ET
    from defusedxml.common import DefusedXmlException

    aliases = aliases or default_aliases(classes)
    problems = problems if problems is not None else []
    unmapped = unmapped if unmapped is not None else Counter()
    try:
        root = ET.parse(str(xml_path)).getroot()
    except DefusedXmlException as exc:
        raise AnnotationError(f"{xml_path}: refused unsafe XML ({type(exc).__name__})") from None
    except (ET.ParseError, ValueError, LookupError, RecursionError) as exc:  # bad encodings too
        raise AnnotationError(f"{xml_path}: malformed XML ({type(exc).__name__}: {exc})") from None
    except OSError as exc:
        raise AnnotationError(f"cannot read {xml_path}: {exc.strerror or exc}") from None
    file = root.findtext("filename") or Path(xml_path).stem + ".jpg"
    try:
        width = _finite_size(root.findtext("size/width"))
        height = _finite_size(root.findtext("size/height"))
    except (TypeError, ValueError, OverflowError):
        raise AnnotationError(f"{xml_path}: missing or invalid size/width, size/height") from None
    boxes, labels, difficult = [], [], []
    for obj in root.iter("object"):
        name = obj.findtext("name") or "?"
        label = map_class(name, aliases, classes)
        if label is None:
            unmapped[name] += 1
            problems.append({"file": file, "reason": f"class {name!r} has no {_counterpart(classes)}; not scored"})
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


def load_voc(folder: str | Path, aliases: dict[str, str] | None = None, classes=CIFAR10_CLASSES) -> AnnotatedSet:
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
            im = load_voc_xml(f, aliases, problems, unmapped, classes)
        except AnnotationError as exc:
            problems.append({"file": str(f), "reason": str(exc)})
            continue
        if im is not None:
            images.append(im)
    return AnnotatedSet(images, tuple(classes), problems, unmapped, source="voc")


def load_annotations(path: str | Path, aliases: dict[str, str] | None = None, classes=CIFAR10_CLASSES) -> AnnotatedSet:
    """COCO JSON for a ``.json`` file, Pascal VOC for a folder or a single ``.xml``, with its
    classes mapped onto ``classes`` (a classifier's class names; CIFAR-10's by default)."""
    path = Path(path)
    if path.is_dir():
        return load_voc(path, aliases, classes)
    if path.suffix.lower() == ".xml":
        problems: list = []
        unmapped: Counter = Counter()
        im = load_voc_xml(path, aliases, problems, unmapped, classes)
        return AnnotatedSet([im] if im else [], tuple(classes), problems, unmapped, source="voc")
    if not path.exists():
        raise AnnotationError(f"annotations not found: {path}")
    return load_coco(path, aliases, classes)


def _counterpart(classes) -> str:
    return "CIFAR-10 counterpart" if tuple(classes) == CIFAR10_CLASSES else "counterpart among the classifier's classes"
