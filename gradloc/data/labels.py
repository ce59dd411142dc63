"""Image-level labels in: the classes each photograph of a labelled collection holds.

:func:`read_labels` turns a label source into one class list per image file, so that a
collection labelled by folder (``photos/bird/...``), by a ``file,class`` CSV or by a COCO file
is localised image by image, each image for its own classes:

- ``"folders"``: an image's class is its parent folder's name, through the alias table
  (``boat/`` is ship, ``car/`` automobile); a folder naming no class leaves its images unlabelled.
- ``FILE.csv``: a header row ``file,class``, one row per (image, class); several rows give an
  image several classes.
- ``FILE.json``: a COCO file's image-level classes: the categories of each image's
  annotations (their boxes unused).

File names in a CSV or COCO file are taken relative to that file's folder, to each folder given,
or as absolute paths. What does not match (a listed file that is not among the images, an unknown
class) is a :attr:`ImageLabels.problems` line each; an image without a label is skipped with its
reason, never silently given another class.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .annotations import DEFAULT_ALIASES, _is_id, map_class, read_json
from ..models.wrn import CIFAR10_CLASSES


@dataclass
class ImageLabels:
    """Per image (its real path) the CIFAR-10 indices it is labelled with, what did not match,
    and for each unlabelled image the reason."""

    source: str
    classes: dict[str, list[int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    unlabelled: dict[str, str] = field(default_factory=dict)

    def of(self, file: str | Path) -> list[int] | None:
        return self.classes.get(os.path.realpath(file))

    def reason(self, file: str | Path) -> str:
        return self.unlabelled.get(os.path.realpath(file), f"no label in {self.source}")

    def fingerprint(self) -> str:
        """sha256 of the labels (a resumed run must localise the same classes)."""
        text = json.dumps(sorted(self.classes.items()))
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def read_labels(source: str | Path, files: list[Path], roots: list[str | Path],
                aliases: dict[str, str] | None = None, names=CIFAR10_CLASSES) -> ImageLabels:
    """Labels from ``source`` (``"folders"``, a ``.csv`` or a COCO ``.json``) for the image
    ``files`` found under ``roots`` (the paths the user gave), as indices into the classifier's
    class ``names``."""
    aliases = aliases or DEFAULT_ALIASES
    lookup = lambda name: class_of(name, aliases, names)  # noqa: E731
    if str(source) == "folders":
        return _from_folders(files, lookup)
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"--classes-from {source}: no such file (give 'folders', a .csv or a COCO .json)")
    if path.suffix.lower() == ".csv":
        rows = _csv_rows(path)
    elif path.suffix.lower() == ".json":
        rows = _coco_rows(path)
    else:
        raise ValueError(f"--classes-from {source}: not a .csv or .json file (or 'folders')")
    return _match(str(path), rows, files, [path.parent, *roots], lookup, names)


def class_of(name: str, aliases: dict[str, str], names=CIFAR10_CLASSES) -> int | None:
    """A label's index in the classifier's ``names``: the name itself (case-insensitive), else
    its alias's CIFAR-10 class where the classifier has it; None when neither."""
    lowered = [n.lower() for n in names]
    key = str(name).strip().lower()
    if key in lowered:
        return lowered.index(key)
    c = map_class(name, aliases)
    return lowered.index(CIFAR10_CLASSES[c]) if c is not None and CIFAR10_CLASSES[c] in lowered else None


def _from_folders(files: list[Path], lookup) -> ImageLabels:
    labels = ImageLabels("folders")
    unknown: dict[str, int] = {}
    for f in files:
        folder = Path(f).resolve().parent.name
        c = lookup(folder)
        if c is None:
            unknown[folder] = unknown.get(folder, 0) + 1
            labels.unlabelled[os.path.realpath(f)] = f"its folder {folder!r} names no class of the model"
        else:
            labels.classes[os.path.realpath(f)] = [c]
    labels.problems += [f"folder {name!r} names no class of the model (add it to --aliases); its {n} images are skipped"
                        for name, n in sorted(unknown.items())]
    return labels


def _csv_rows(path: Path) -> list[tuple[str, str, str]]:
    """``(where, file, class)`` per data row of a ``file,class`` CSV."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip().lower() for h in next(reader, [])]
            if header[:2] != ["file", "class"]:
                raise ValueError(f"{path}: the first row must be the header file,class (got {','.join(header)[:60]!r})")
            return [(f"{path.name}:{reader.line_num}", row[0].strip(), row[1].strip() if len(row) > 1 else "")
                    for row in reader if row and any(cell.strip() for cell in row)]
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except csv.Error as exc:
        raise ValueError(f"{path}: malformed CSV ({exc})") from None


def _coco_rows(path: Path) -> list[tuple[str, str, str]]:
    """``(where, file, category name)`` per image and category of a COCO file's annotations."""
    data = read_json(path, "labels file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path} is not COCO JSON: needs 'images' and 'annotations' lists")
    cats = data.get("categories")
    names = {c["id"]: str(c.get("name")) for c in (cats if isinstance(cats, list) else [])
             if isinstance(c, dict) and _is_id(c.get("id"))}
    files = {im["id"]: im["file_name"] for im in data["images"]
             if isinstance(im, dict) and _is_id(im.get("id")) and isinstance(im.get("file_name"), str)}
    rows = []
    for a in data["annotations"]:
        if not isinstance(a, dict):
            continue
        if not _is_id(a.get("image_id")) or not _is_id(a.get("category_id")):
            continue
        file, cat = files.get(a["image_id"]), a["category_id"]
        if file is not None:
            rows.append((f"{path.name}: image {a.get('image_id')!r}", file, names.get(cat, f"category {cat!r}")))
    return list(dict.fromkeys(rows))


def _match(source: str, rows: list[tuple[str, str, str]], files: list[Path], bases: list[str | Path],
           lookup, names) -> ImageLabels:
    labels = ImageLabels(source)
    found = {os.path.realpath(f) for f in files}
    for where, file, name in rows:
        if not file:
            labels.problems.append(f"{where}: no file name")
            continue
        c = lookup(name)
        if c is None:
            labels.problems.append(f"{where}: class {name!r} is none of the model's "
                                   f"({', '.join(names[:12])}{', ...' if len(names) > 12 else ''}; or add it to --aliases)")
            continue
        candidates = [file] if os.path.isabs(file) else [os.path.join(b, file) for b in bases]
        real = next((r for r in map(os.path.realpath, candidates) if r in found), None)
        if real is None:
            labels.problems.append(f"{where}: {file} is not among the images given")
            continue
        chosen = labels.classes.setdefault(real, [])
        if c not in chosen:
            chosen.append(c)
    return labels
