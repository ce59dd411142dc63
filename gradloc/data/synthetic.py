"""A synthetic multi-object benchmark: CIFAR-10 test images pasted onto textured canvases.

Each canvas holds 1 to ``max_objects`` images of *different* classes at random scales and
places (no two overlapping), so every class in a picture has exactly one box and the class
mask has to pick the right object. Boxes are exact. Written as COCO JSON.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from .cifar import load_cifar10
from .io import atomic_write_text
from ..models.wrn import CIFAR10_CLASSES


def textured_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth coloured noise plus a few soft stripes: clutter with no object in it."""
    base = rng.uniform(40, 215, size=3)
    low = cv2.resize(rng.normal(0, 40, (max(2, h // 16), max(2, w // 16), 3)).astype(np.float32), (w, h),
                     interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.normal(0, 18, (h, w, 3)).astype(np.float32), (0, 0), 1.2)
    yy, xx = np.mgrid[0:h, 0:w]
    angle, freq = rng.uniform(0, np.pi), rng.uniform(0.03, 0.15)
    stripes = 20 * np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)))[..., None]
    return np.clip(base + low + fine + stripes, 0, 255).astype(np.uint8)


def block_shuffled(rng: np.random.Generator, img: np.ndarray, block: int = 8) -> np.ndarray:
    """A CIFAR image with its ``block`` x ``block`` tiles shuffled: natural colours and edges, no object."""
    h, w = img.shape[:2]
    tiles = img.reshape(h // block, block, w // block, block, 3).swapaxes(1, 2).reshape(-1, block, block, 3)
    tiles = tiles[rng.permutation(len(tiles))]
    return tiles.reshape(h // block, w // block, block, block, 3).swapaxes(1, 2).reshape(h, w, 3)


def _place(rng, size_hw, side, placed, tries=50):
    h, w = size_hw
    for _ in range(tries):
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        if all(x + side <= bx0 or bx1 <= x or y + side <= by0 or by1 <= y for bx0, by0, bx1, by1 in placed):
            return x, y
    return None


def make_synthetic(cifar: str | Path, out: str | Path, n: int = 1000, canvas: tuple[int, int] = (128, 128),
                   max_objects: int = 3, scale: tuple[int, int] = (32, 80), seed: int = 0,
                   distractors: int = 0) -> Path:
    """Write ``out/images/*.png`` and ``out/annotations.json``; returns the JSON path.

    ``scale``: the side in pixels of a pasted object, drawn uniformly in that range.
    ``distractors``: per canvas, this many block-shuffled CIFAR images (clutter without an
    object, not annotated) pasted at the same scales where they fit.
    """
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    x, y, _ = load_cifar10(cifar, "test")
    by_class = [np.flatnonzero(y == c) for c in range(len(CIFAR10_CLASSES))]
    rng = np.random.default_rng(seed)
    h, w = canvas
    lo, hi = scale[0], min(scale[1], h, w)
    images, anns = [], []
    for i in tqdm(range(n), desc="make-synthetic", unit="img", disable=None):
        img = textured_background(rng, h, w)
        k = int(rng.integers(1, max_objects + 1))
        classes = rng.choice(len(CIFAR10_CLASSES), size=k, replace=False)
        placed = []
        for c in classes:
            side = int(rng.integers(lo, hi + 1))
            spot = _place(rng, (h, w), side, placed)
            if spot is None:
                continue
            src = x[rng.choice(by_class[c])]
            img[spot[1]:spot[1] + side, spot[0]:spot[0] + side] = np.asarray(
                Image.fromarray(src).resize((side, side), Image.BICUBIC))
            placed.append((spot[0], spot[1], spot[0] + side, spot[1] + side))
            anns.append({"id": len(anns), "image_id": i, "category_id": int(c),
                         "bbox": [spot[0], spot[1], side, side], "area": side * side, "iscrowd": 0})
        for _ in range(distractors):
            side = int(rng.integers(lo, hi + 1))
            spot = _place(rng, (h, w), side, placed)
            if spot is None:
                continue
            clutter = block_shuffled(rng, x[rng.integers(len(x))])
            img[spot[1]:spot[1] + side, spot[0]:spot[0] + side] = np.asarray(
                Image.fromarray(clutter).resize((side, side), Image.BICUBIC))
            placed.append((spot[0], spot[1], spot[0] + side, spot[1] + side))
        name = f"synth_{i:05d}.png"
        Image.fromarray(img).save(out / "images" / name)
        images.append({"id": i, "file_name": name, "width": w, "height": h})
    coco = {"info": {"description": "gradloc synthetic multi-object benchmark", "seed": seed,
                     "canvas": [h, w], "scale": [lo, hi], "max_objects": max_objects, "distractors": distractors,
                     "source": "CIFAR-10 test split"},
            "images": images, "annotations": anns,
            "categories": [{"id": i, "name": c} for i, c in enumerate(CIFAR10_CLASSES)]}
    path = out / "annotations.json"
    atomic_write_text(path, json.dumps(coco))
    return path
