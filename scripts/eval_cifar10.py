#!/usr/bin/env python
"""Accuracy of a WRN on the 10,000 CIFAR-10 test images: overall, per class, confusion matrix.

Uses the package's own loading and preprocessing (the images are already 32x32, so the
resize is the identity), so the number is the one the pipeline's classifier achieves.

    python scripts/eval_cifar10.py --data ../shared/data/cifar10-jpeg.tar.gz            # shipped weights
    python scripts/eval_cifar10.py --weights ~/.cache/gradloc-train/last.pt --markdown
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gradloc.data.cifar import load_cifar10  # noqa: E402
from gradloc.models.wrn import CIFAR10_CLASSES, wide_resnet  # noqa: E402
from gradloc.models.classifier import CIFAR10  # noqa: E402


@torch.no_grad()
def predict(model, images: np.ndarray, batch: int = 500) -> np.ndarray:
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    preds = []
    for i in range(0, len(x), batch):
        xb = CIFAR10.normalize(x[i:i + batch]).contiguous(memory_format=torch.channels_last)
        preds.append(model(xb).argmax(1))
    return torch.cat(preds).numpy()


def confusion(labels: np.ndarray, preds: np.ndarray, k: int = 10) -> np.ndarray:
    return np.bincount(labels * k + preds, minlength=k * k).reshape(k, k)


def markdown(conf: np.ndarray) -> str:
    acc = np.trace(conf) / conf.sum()
    lines = [f"Test accuracy: **{100 * acc:.2f}%** ({np.trace(conf)} / {conf.sum()})", "",
             "| class | accuracy |", "| --- | ---: |"]
    for i, c in enumerate(CIFAR10_CLASSES):
        lines.append(f"| {c} | {100 * conf[i, i] / conf[i].sum():.1f}% |")
    short = [c[:5] for c in CIFAR10_CLASSES]
    lines += ["", "Confusion matrix (rows: true class, columns: predicted):", "",
              "| true \\ pred | " + " | ".join(short) + " |", "| --- |" + " ---: |" * 10]
    for i, c in enumerate(CIFAR10_CLASSES):
        lines.append(f"| {c} | " + " | ".join(str(v) for v in conf[i]) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--weights", default="default", help="state dict or training checkpoint")
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--width", type=int, default=4)
    p.add_argument("--markdown", action="store_true", help="print Markdown tables (for the model card)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = p.parse_args()
    model = wide_resnet(args.depth, args.width, weights=args.weights).to(memory_format=torch.channels_last)
    images, labels, _ = load_cifar10(args.data, "test")
    conf = confusion(labels, predict(model, images))
    acc = np.trace(conf) / conf.sum()
    if args.markdown:
        print(markdown(conf))
    else:
        print(f"test accuracy {100 * acc:.2f}% on {conf.sum()} images")
        for i, c in enumerate(CIFAR10_CLASSES):
            print(f"  {c:<11} {100 * conf[i, i] / conf[i].sum():5.1f}%")
        print("confusion matrix (rows true, columns predicted):")
        print(conf)
    if args.json:
        Path(args.json).write_text(json.dumps({"accuracy": acc, "confusion": conf.tolist(),
                                               "classes": list(CIFAR10_CLASSES)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
