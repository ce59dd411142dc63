#!/usr/bin/env python
"""Does a judge peak at an object's extent? The probe every extent experiment reports first.

For each (image, class) pair of an annotated set, the class's largest ground-truth box is scaled
about its centre by 0.5, 0.7, 0.85, 1, 1.2, 1.5 and 2 (each side, clipped to the image), and each
box is scored by a judge through :meth:`gradloc.ProposalGenerator.score_boxes`, the score the
pipeline ranks candidates by. It prints, per judge:

- whole crop top-1: the 1x crop's most probable class is the pair's class;
- whole > part: the 1x box outscores its centred half (0.5x);
- whole > 1.5x: the 1x box outscores the box 1.5x its side;
- best within 0.85-1.2: the best-scoring of the seven boxes is 0.85x, 1x or 1.2x.

Judges, each by the network ``--judge`` names (the pipeline's ``judge`` option: by default the
shipped extent judge; ``classifier`` for the classifier itself): ``crop`` (the crop's class
probability: ``rescore crop``), ``pipeline`` (the generator as configured: ``crop-delete`` by
default), and ``shrink`` (a box's crop probability minus that
of the box 0.8x its side: a tight box loses evidence when shrunk, a loose one does not).

    python scripts/probe_extent.py ../shared/data/voc07-cifar-dev.tar.gz ../shared/data/coco-real-dev.tar.gz
    python scripts/probe_extent.py SET ... --judge classifier --judges crop,shrink
    python scripts/probe_extent.py SET ... --judge my_judge.pt
"""
from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gradloc import ProposalGenerator  # noqa: E402
from gradloc.data.annotations import load_annotations  # noqa: E402
from gradloc.data.preprocess import ImageError, to_rgb_tensor  # noqa: E402
from gradloc.models.wrn import cpu_has_native_bf16  # noqa: E402

SCALES = (0.5, 0.7, 0.85, 1.0, 1.2, 1.5, 2.0)
SHRINK = 0.8
JUDGES = ("crop", "pipeline", "shrink")


def scaled(box: torch.Tensor, s: float, size: tuple[int, int]) -> torch.Tensor:
    """``box`` [4] scaled by ``s`` about its centre, clipped to an image of ``size`` (h, w)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hw, hh = (box[2] - box[0]) * s / 2, (box[3] - box[1]) * s / 2
    out = torch.stack([cx - hw, cy - hh, cx + hw, cy + hh])
    return torch.stack([out[0].clamp(0, size[1]), out[1].clamp(0, size[0]),
                        out[2].clamp(0, size[1]), out[3].clamp(0, size[0])])


def open_set(path: Path, tmp: Path) -> tuple[Path, Path]:
    """An annotated set (folder or .tar.gz) -> (its annotations.json or VOC folder, its images folder)."""
    if path.suffixes[-2:] == [".tar", ".gz"]:
        with tarfile.open(path) as tar:
            tar.extractall(tmp, filter="data")
        path = next(p for p in tmp.iterdir() if p.is_dir())
    ann = path / "annotations.json"
    return (ann if ann.is_file() else path), (path / "images" if (path / "images").is_dir() else path / "JPEGImages")


def probe(judges: dict, ann: Path, images: Path, limit: int | None) -> dict[str, dict]:
    """Each judge's four shares (percent) over the set's pairs. Per image, one call of each
    generator scores every box of its pairs (and, for the top-1, the whole box for every class)."""
    ds = load_annotations(ann)
    rows = {j: [] for j in judges}
    top1 = []
    crop = next(g for j, g in judges.items() if j != "pipeline") if set(judges) - {"pipeline"} else \
        next(iter(judges.values())).with_options(rescore="crop")
    n_classes, k = len(crop.spec.classes), len(SCALES)
    for im in ds.images[:limit]:
        try:
            rgb = to_rgb_tensor(images / im.file)
        except (ImageError, OSError):
            continue
        size = tuple(rgb.shape[-2:])
        pairs = []
        for c in im.classes():
            gt = im.boxes_of(c)
            box = gt[((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])).argmax()]
            pairs.append((c, torch.stack([scaled(box, s, size) for s in SCALES]),
                          torch.stack([scaled(box, s * SHRINK, size) for s in SCALES])))
        # the crop judge: each pair's boxes, their shrunk boxes, and the whole box for every class
        boxes = [b for _, b, _ in pairs] + [inner for _, _, inner in pairs] + \
            [b[SCALES.index(1.0)][None].expand(n_classes, 4) for _, b, _ in pairs]
        classes = [c for c, _, _ in pairs for _ in range(k)] * 2 + list(range(n_classes)) * len(pairs)
        scores = crop.score_boxes(rgb, torch.cat(boxes), classes)
        n = len(pairs) * k
        own, inner = scores[:n].view(-1, k), scores[n:2 * n].view(-1, k)
        top1 += [int(p.argmax()) == c for p, (c, _, _) in zip(scores[2 * n:].view(-1, n_classes), pairs)]
        if "crop" in judges:
            rows["crop"] += list(own.numpy())
        if "shrink" in judges:
            rows["shrink"] += list((own - inner).numpy())
        if "pipeline" in judges:
            got = judges["pipeline"].score_boxes(rgb, torch.cat([b for _, b, _ in pairs]),
                                                 [c for c, _, _ in pairs for _ in range(k)])
            rows["pipeline"] += list(got.view(-1, k).numpy())
    one, part, loose = SCALES.index(1.0), SCALES.index(0.5), SCALES.index(1.5)
    near = [SCALES.index(s) for s in (0.85, 1.0, 1.2)]
    out = {}
    for name, r in rows.items():
        s = np.stack(r)
        out[name] = {"pairs": len(s), "top1": 100 * float(np.mean(top1)),
                     "whole>part": 100 * float(np.mean(s[:, one] > s[:, part])),
                     "whole>1.5x": 100 * float(np.mean(s[:, one] > s[:, loose])),
                     "best in 0.85-1.2": 100 * float(np.mean(np.isin(s.argmax(1), near)))}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sets", nargs="+", type=Path, help="annotated sets: folders or .tar.gz (COCO or VOC)")
    ap.add_argument("--weights", default="default", help="WRN state dict (default: the shipped weights)")
    ap.add_argument("--judge", default="auto",
                    help="the network that scores boxes: extent, classifier or a WRN-16-4 weights file (default: auto)")
    ap.add_argument("--judges", default="crop,pipeline,shrink", help=f"comma-separated, of {', '.join(JUDGES)}")
    ap.add_argument("--limit", type=int, default=None, help="the first N images of each set")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    args = ap.parse_args()
    names = [j.strip() for j in args.judges.split(",") if j.strip()]
    if not names or any(j not in JUDGES for j in names):
        ap.error(f"--judges: choose from {', '.join(JUDGES)}")
    gen = ProposalGenerator.pretrained(weights=args.weights, precision=args.precision, judge=args.judge)
    judges = {j: gen if j == "pipeline" else gen.with_options(rescore="crop") for j in names}
    cpu = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    print(f"weights {args.weights}, judge {gen.judge}, precision {gen.precision}, CPU: {cpu}")
    print("| set | judge | pairs | whole crop top-1 | whole > part | whole > 1.5x | best in 0.85-1.2 |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for path in args.sets:
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            ann, images = open_set(path, Path(tmp))
            table = probe(judges, ann, images, args.limit)
        for name, r in table.items():
            print(f"| {path.name.split('.')[0]} | {name} | {r['pairs']} | {r['top1']:.1f} | {r['whole>part']:.1f} | "
                  f"{r['whole>1.5x']:.1f} | {r['best in 0.85-1.2']:.1f} |", flush=True)
        print(f"({path.name}: {time.time() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
