#!/usr/bin/env python
"""What each part of a photograph's candidate pool buys: run the pipeline once per annotated
image (its ground-truth classes), keep every row's candidates with their evidence, input sizes
and kinds, then select again (the pipeline's own ranking, fusion and consensus) from subsets of
the pool. Leaving out an input size's candidates is leaving that size out of the pyramid (rows
are independent); leaving out a kind saves its rescoring views. Prints CorLoc@0.5 by object size
and the rescored boxes per row (near-duplicate groups at --merge-iou 0.85) for each subset.

    python scripts/candidate_pool.py ANNOTATIONS --images DIR --cache pool.pt
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from gradloc import ProposalGenerator  # noqa: E402
from gradloc.data.annotations import load_annotations  # noqa: E402
from gradloc.discovery.pipeline import VIEW_CONSENSUS  # noqa: E402
from gradloc.discovery.rescoring import near_duplicates, rank_and_fuse  # noqa: E402
from gradloc.evaluation.metrics import SIZE_BUCKETS  # noqa: E402

# subsets of the pool: keep(kind, input side, the row's 32x32-view probability)
SUBSETS = {
    "every candidate (the defaults)": lambda k, s, p: True,
    "no 256 px input": lambda k, s, p: s != 256,
    "no 256 px input where the object is large": lambda k, s, p: not (s == 256 and p > VIEW_CONSENSUS),
    "no 192-256 px inputs where the object is large (coarse to fine)": lambda k, s, p: not (s >= 192 and p > VIEW_CONSENSUS),
    "no 48 px input": lambda k, s, p: s != 48,
    "no 96 px input": lambda k, s, p: s != 96,
    "no peak regions at inputs <= 64 px": lambda k, s, p: not (k == "peak" and s <= 64),
    "no peak regions where the object is large": lambda k, s, p: not (k == "peak" and p > VIEW_CONSENSUS),
    "no moment boxes": lambda k, s, p: k != "moment",
}


def collect(annotations: str, images: str) -> list[dict]:
    gen = ProposalGenerator.pretrained()
    ds = load_annotations(annotations)
    rows = []
    for im in ds.images:
        if not im.classes():
            continue
        res = gen(str(Path(images) / im.file), classes=[[gen.spec.classes[c] for c in im.classes()]])[0]
        for c, cand in zip(res["map_classes"].tolist(), res["candidates"]):
            rows.append({"prob": float(res["probs"][c]), "boxes": cand.boxes, "evidence": cand.evidence,
                         "kinds": cand.kinds, "sides": cand.sides, "gt": im.boxes_of(c)})
    return rows


def size_of(gt: torch.Tensor) -> str:
    """The pair's COCO size bucket, by its largest box (as evaluate's)."""
    area = float(((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])).max())
    return next(n for n, lo, hi in SIZE_BUCKETS if lo <= area < hi)


def select(rows: list[dict], keep) -> tuple[dict, float]:
    """CorLoc@0.5 by size of the rows' boxes chosen from the kept candidates, and the rescored
    boxes per row."""
    hits: dict[str, list] = {"all": []}
    scored = 0
    for r in rows:
        kept = torch.tensor([keep(k, int(s), r["prob"]) for k, s in zip(r["kinds"], r["sides"])], dtype=torch.bool)
        boxes, ev = r["boxes"][kept], r["evidence"][kept]
        scored += len(near_duplicates(boxes, 0.85)[0])
        hit = False
        if len(boxes):
            best = rank_and_fuse(boxes, ev[:, 0] - ev[:, 1], 0.5, 5, 0.2, consensus=r["prob"] > VIEW_CONSENSUS)[0][0]
            hit = float(box_iou(best[None], r["gt"]).max()) >= 0.5
        hits["all"].append(hit)
        hits.setdefault(size_of(r["gt"]), []).append(hit)
    return {k: (100 * float(np.mean(v)), len(v)) for k, v in hits.items()}, scored / max(len(rows), 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("annotations")
    p.add_argument("--images", required=True)
    p.add_argument("--cache", type=Path, default=None, help="the collected pool, saved and reused")
    args = p.parse_args()
    if args.cache and args.cache.is_file():
        rows = torch.load(args.cache, weights_only=False)
    else:
        rows = collect(args.annotations, args.images)
        if args.cache:
            torch.save(rows, args.cache)
    print("| subset | CorLoc@0.5 | small | medium | large | rescored boxes per row |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, keep in SUBSETS.items():
        c, per_row = select(rows, keep)
        cell = lambda k: f"{c[k][0]:.1f} ({c[k][1]})" if k in c else "–"  # noqa: E731
        print(f"| {name} | {cell('all')} | {cell('small')} | {cell('medium')} | {cell('large')} | {per_row:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
