"""Photograph sets for training with image-level labels only, and the split that keeps the
dev benchmark honest.

- :func:`load_labelled_photos`: an annotated set's images with one image-level label each
  (its annotated class); boxes are never read, so what is trained on stays weakly supervised.
- :func:`load_boxed_photos`: an annotated set's images with one box each (its largest), for
  the extent training (``train_cifar10.py --extent``), which is box-supervised.
- :func:`load_photo_folder`: every image under a folder (the "none of these" negatives).
- :func:`photo_split`: which images of an annotated set were trained on. Benchmarks score
  only the others (``gradloc evaluate --exclude``).
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from gradloc.models.wrn import CIFAR10_CLASSES

PHOTO_SIDE = 64


def _decode(data: bytes, side: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        if im.size != (side, side):
            im = im.resize((side, side), Image.BICUBIC)
        return np.asarray(im)


def _members(source: Path):
    """(name, bytes) of every file of a folder or a tar archive, sorted by name."""
    if source.is_dir():
        for p in sorted(source.rglob("*")):
            if p.is_file():
                yield p.relative_to(source).as_posix(), p.read_bytes()
    else:
        with tarfile.open(source) as tar:
            members = sorted((m for m in tar if m.isfile()), key=lambda m: m.name)
            for m in members:
                yield m.name, tar.extractfile(m).read()


def _read_set(source: str | Path) -> tuple[dict, dict[str, bytes]]:
    """A COCO-format set (folder or ``.tar.gz``) -> its annotations and its images' bytes by file name."""
    files: dict[str, bytes] = {}
    annotations = None
    for name, data in _members(Path(source)):
        if name.endswith("annotations.json"):
            annotations = json.loads(data)
        elif "/images/" in f"/{name}":
            files[Path(name).name] = data
    if annotations is None:
        raise FileNotFoundError(f"no annotations.json in {source}")
    return annotations, files


def load_labelled_photos(source: str | Path, side: int = PHOTO_SIDE) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images of a COCO-format set (folder or ``.tar.gz`` holding ``annotations.json`` and
    ``images/``) whose annotations name exactly one CIFAR-10 class, with that class as label.

    Returns ``uint8 [N, side, side, 3]``, labels ``int64 [N]`` and file names (sorted).
    """
    annotations, files = _read_set(source)
    cats = {c["id"]: c["name"] for c in annotations["categories"]}
    labels: dict = {}
    for a in annotations["annotations"]:
        labels.setdefault(a["image_id"], set()).add(cats[a["category_id"]])
    picked = sorted((im["file_name"], CIFAR10_CLASSES.index(next(iter(labels[im["id"]]))))
                    for im in annotations["images"]
                    if len(labels.get(im["id"], ())) == 1 and Path(im["file_name"]).name in files)
    x = np.stack([_decode(files[Path(f).name], side) for f, _ in picked])
    return x, np.array([c for _, c in picked], dtype=np.int64), [f for f, _ in picked]


def load_boxed_photos(source: str | Path, side: int = PHOTO_SIDE) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                          list[str]]:
    """Images of a COCO-format set whose annotations name exactly one CIFAR-10 class, with that
    class and its largest box, in the ``side`` x ``side`` image's pixels (xyxy).

    Returns ``uint8 [N, side, side, 3]``, labels ``int64 [N]``, boxes ``float32 [N, 4]`` and file
    names (sorted).
    """
    annotations, files = _read_set(source)
    cats = {c["id"]: c["name"] for c in annotations["categories"]}
    by_image: dict = {}
    for a in annotations["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    picked = []
    for im in annotations["images"]:
        anns = by_image.get(im["id"], [])
        if len({a["category_id"] for a in anns}) != 1 or Path(im["file_name"]).name not in files:
            continue
        x, y, w, h = max((a["bbox"] for a in anns), key=lambda b: b[2] * b[3])
        sx, sy = side / im["width"], side / im["height"]
        picked.append((im["file_name"], CIFAR10_CLASSES.index(cats[anns[0]["category_id"]]),
                       [x * sx, y * sy, (x + w) * sx, (y + h) * sy]))
    picked.sort()
    x = np.stack([_decode(files[Path(f).name], side) for f, _, _ in picked])
    return (x, np.array([c for _, c, _ in picked], dtype=np.int64),
            np.array([b for _, _, b in picked], dtype=np.float32), [f for f, _, _ in picked])


def load_photo_folder(source: str | Path, side: int = PHOTO_SIDE) -> np.ndarray:
    """Every JPEG/PNG under a folder or in a ``.tar.gz``, sorted by name -> ``uint8 [N, side, side, 3]``."""
    return np.stack([_decode(data, side) for name, data in _members(Path(source))
                     if name.lower().endswith((".jpeg", ".jpg", ".png"))])


def photo_split(names: list[str], share: float, seed: int) -> set[str]:
    """The ``share`` of ``names`` drawn with ``seed`` (a fixed permutation of the sorted names):
    the images trained on. The same call in a benchmark gives the images to leave out."""
    order = np.random.default_rng(seed).permutation(len(names))
    ranked = sorted(names)
    return {ranked[i] for i in order[:int(round(share * len(names)))]}
