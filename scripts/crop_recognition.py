#!/usr/bin/env python
"""How often the classifier recognises the ground-truth objects themselves: each annotated box,
grown by a little context, cut out, resized to 32x32 and classified. This bounds any method that
scores windows or boxes by the classifier. Reported overall and by COCO object size (small <
32², medium < 96² px, large), for each weights file given, side by side.

    python scripts/crop_recognition.py ../shared/data/coco-real-dev.tar.gz \\
        --weights default ~/.cache/gradloc-train-oe/export.pt
"""
from __future__ import annotations

import argparse
import sys
import tarfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gradloc.annotations import load_annotations  # noqa: E402
from gradloc.boxes import crop_windows, pad_boxes  # noqa: E402
from gradloc.model import wide_resnet  # noqa: E402
from gradloc.preprocess import normalize, to_rgb_tensor  # noqa: E402

BUCKETS = (("small", 0, 32 ** 2), ("medium", 32 ** 2, 96 ** 2), ("large", 96 ** 2, float("inf")))


def crops_of(root: Path, context: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every scorable box of the set as a 32x32 crop -> (crops uint8 [N, 3, 32, 32], labels [N], areas [N])."""
    ds = load_annotations(root / "annotations.json")
    crops, labels, areas = [], [], []
    for im in ds.images:
        rgb = to_rgb_tensor(root / "images" / im.file)
        keep = ~im.difficult
        boxes = im.boxes[keep]
        if not len(boxes):
            continue
        grown = pad_boxes(boxes, context)
        grown = torch.stack([grown[:, 0].clamp(min=0), grown[:, 1].clamp(min=0),
                             grown[:, 2].clamp(max=im.width), grown[:, 3].clamp(max=im.height)], 1)
        crops.append(crop_windows(rgb, grown))
        labels.append(im.labels[keep])
        areas.append((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    return torch.cat(crops), torch.cat(labels), torch.cat(areas)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="a COCO-format set: folder or .tar.gz with annotations.json, images/")
    p.add_argument("--weights", nargs="+", default=["default"])
    p.add_argument("--context", type=float, default=0.1, help="each side grown by this share of the box")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "gradloc-bench")
    args = p.parse_args()
    root = args.data
    if root.is_file():
        name = root.name.removesuffix(".tar.gz")
        if not (args.cache / name / "annotations.json").is_file():
            with tarfile.open(root) as tar:
                tar.extractall(args.cache, filter="data")
        root = args.cache / name
    crops, labels, areas = crops_of(root, args.context)
    print(f"{len(crops)} boxes of {root}, context {args.context:g} per side", file=sys.stderr)
    head = "| weights | all | " + " | ".join(f"{b} (n={int(((areas >= lo) & (areas < hi)).sum())})"
                                             for b, lo, hi in BUCKETS) + " |"
    lines = [head, "| --- |" + " ---: |" * (1 + len(BUCKETS))]
    for w in args.weights:
        model = wide_resnet(weights=w)
        with torch.no_grad():
            pred = torch.cat([model(normalize(crops[s:s + 256])).argmax(1) for s in range(0, len(crops), 256)])
        hit = (pred == labels).float()
        cells = [f"{100 * hit.mean():.1f}"]
        for _, lo, hi in BUCKETS:
            sel = (areas >= lo) & (areas < hi)
            cells.append(f"{100 * hit[sel].mean():.1f}" if sel.any() else "–")
        lines.append(f"| `{Path(w).name if w != 'default' else 'shipped'}` | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
