#!/usr/bin/env python
"""Observe the activation ranges of the shipped WRNs for int8 (``gradloc/models/int8.py``) and
write them beside the weights (``weights/<weights>.int8.pt``), then say how far int8 is from
fp32 on CIFAR-10's test images.

Calibration images, none of them from a benchmark:
- CIFAR-10 training images (32x32), as the judge's crops and the 32x32 views see them, and the
  same with a random box blanked to the mean colour (the judge's deletion views), and about
  1,000 of the photographs below at 32x32;
- photographs of none of the ten classes (``tinyimagenet-negatives``, 64x64), tiled 4x3 into
  256x192 pictures and resized to every input size of the pyramid (longer side 48 to 256), as the
  classifier sees a photograph there.

    python scripts/calibrate_int8.py --cifar ../shared/data/cifar10-jpeg.tar.gz \\
        --negatives ../shared/data/tinyimagenet-negatives.tar.gz
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from gradloc.data.cifar import load_cifar10  # noqa: E402
from gradloc.models import int8  # noqa: E402
from gradloc.models.classifier import CIFAR10  # noqa: E402
from gradloc.models.wrn import default_weights_path, extent_judge_path, wide_resnet  # noqa: E402
from photo_sets import load_photo_folder  # noqa: E402

PYRAMID_SIDES = (48, 64, 96, 128, 192, 256)


def cifar_views(images: np.ndarray, seed: int) -> torch.Tensor:
    """uint8 [N, 3, 32, 32]: the images, then each with a random box blanked to the mean colour."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    g = torch.Generator().manual_seed(seed)
    blanked = x.clone()
    fill = torch.tensor(CIFAR10.mean_colour).round().to(torch.uint8)[:, None, None]
    for img in blanked:
        w, h = (int(v) for v in torch.randint(8, 25, (2,), generator=g))
        x0, y0 = int(torch.randint(0, 33 - w, (1,), generator=g)), int(torch.randint(0, 33 - h, (1,), generator=g))
        img[:, y0:y0 + h, x0:x0 + w] = fill
    return torch.cat([x, blanked])


def photo_mosaics(photos: np.ndarray, count: int, seed: int) -> torch.Tensor:
    """uint8 [count, 3, 192, 256]: 4x3 tiles of random 64x64 photographs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(photos).permute(0, 3, 1, 2)
    picks = torch.randint(0, len(x), (count, 12), generator=g)
    rows = [torch.cat([torch.cat(list(x[p[r * 4:(r + 1) * 4]]), 2) for r in range(3)], 1) for p in picks]
    return torch.stack(rows)


def observe(weights: Path, batches: list[torch.Tensor]) -> dict:
    model = wide_resnet(16, 4, weights=weights)
    prepared = int8.prepared_body(model)
    with torch.no_grad():
        for b in batches:
            prepared(CIFAR10.normalize(b))
    return {"fingerprint": int8.fingerprint(model), "observers": int8.observer_state(prepared)}, prepared, model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar", type=Path, required=True, help="CIFAR-10 (folder or .tar.gz)")
    p.add_argument("--negatives", type=Path, required=True, help="photographs of none of the classes")
    p.add_argument("--per-class", type=int, default=100, help="CIFAR-10 training images per class")
    p.add_argument("--mosaics", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    train, _, _ = load_cifar10(args.cifar, "train", limit_per_class=args.per_class)
    views = cifar_views(train, args.seed)
    photos = load_photo_folder(args.negatives)
    mosaics = photo_mosaics(photos, args.mosaics, args.seed)
    small = F.interpolate(torch.from_numpy(photos[::len(photos) // 1000]).permute(0, 3, 1, 2).float(), size=(32, 32),
                          mode="bilinear", antialias=True, align_corners=False).round().to(torch.uint8)
    photo_batches = [F.interpolate(mosaics.float(), size=(round(s * 0.75), s), mode="bilinear", antialias=True,
                                   align_corners=False).round().clamp(0, 255).to(torch.uint8).split(8)
                     for s in PYRAMID_SIDES]
    cifar_batches = list(views.split(200)) + list(small.split(200))
    test, labels, _ = load_cifar10(args.cifar, "test")
    xt, yt = CIFAR10.normalize(torch.from_numpy(test).permute(0, 3, 1, 2).contiguous()), torch.from_numpy(labels)
    for weights, batches in ((default_weights_path(), cifar_batches + [b for s in photo_batches for b in s]),
                             (extent_judge_path(), cifar_batches)):
        ranges, prepared, model = observe(weights, batches)
        out = weights.with_name(weights.name + int8.RANGES_SUFFIX)
        torch.save(ranges, out)
        q = int8.convert(prepared, model)
        with torch.no_grad():
            lf = torch.cat([model(b) for b in xt.split(500)])
            lq = torch.cat([q(b) for b in xt.split(500)])
        pf, pq = lf.softmax(1), lq.softmax(1)
        print(f"{out.name}: {len(ranges['observers'])} observer tensors; CIFAR-10 test accuracy fp32 "
              f"{100 * (lf.argmax(1) == yt).float().mean():.2f}%, int8 {100 * (lq.argmax(1) == yt).float().mean():.2f}%, "
              f"same top class {100 * (lf.argmax(1) == lq.argmax(1)).float().mean():.2f}%, mean |dp| of the true class "
              f"{(pf - pq).gather(1, yt[:, None]).abs().mean():.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
