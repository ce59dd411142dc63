"""Dump every (image, class) pair's candidates before selection, for studying selection rules
offline: boxes in original pixels, the crop's and blanked view's class probabilities, kind,
input side, the 32x32 view's probability of the class, and the pair's ground-truth boxes.

    python scripts/selection_study.py ANNOTATIONS IMAGES OUT.pt [--limit N] [--request gt|predicted|top3|all]

``--request`` other than gt asks each image for the model's own classes, as a user without
labels would (the pairs of absent classes have no ground-truth boxes): what a presence score is
studied on.
"""
import argparse
import sys
from pathlib import Path

import torch

import gradloc
from gradloc.annotations import load_annotations
from gradloc.runner import run_files


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("annotations")
    p.add_argument("images", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--limit", type=int)
    p.add_argument("--request", default="gt", choices=("gt", "predicted", "top3", "all"))
    a = p.parse_args()
    ds = load_annotations(a.annotations)
    ims = ds.images[:a.limit] if a.limit else ds.images
    gen = gradloc.ProposalGenerator.pretrained(top_k=None)
    files = [a.images / im.file for im in ims]
    pairs = []
    for done, failed in run_files(gen, files, (lambda i: ims[i].classes()) if a.request == "gt" else (lambda i: a.request), None, desc="study", progress=False):
        for i, _, _, res in done:
            for r, c in enumerate(res["map_classes"].tolist()):
                cand = res["candidates"][r]
                chosen = res["boxes"][res["labels"] == c][:1]
                chosen_score = res["scores"][res["labels"] == c][:1]
                pairs.append({"file": ims[i].file, "size": (ims[i].height, ims[i].width), "cls": c,
                              "gt": ims[i].boxes_of(c), "boxes": cand.boxes, "evidence": cand.evidence,
                              "kinds": cand.kinds, "sides": cand.sides, "chosen": chosen, "chosen_score": chosen_score,
                              "prob": float(res["probs"][c])})
    torch.save(pairs, a.out)
    print(len(pairs), "pairs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
