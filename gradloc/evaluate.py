"""Scoring proposals against annotated images, and the baselines scored by the same code.

Predictions for one image are a dict: ``boxes`` {class: Tensor [K, 4] xyxy, best first},
optionally ``maps`` {class: Tensor [h, w]} (saliency on the working grid), ``peaks``
{class: (x, y)} in original pixels, and ``probs`` Tensor [10] (None for box baselines).
Every metric below takes the annotated set and one such dict per image (None for an
image that could not be read: it is left out and reported).

Metric definitions (each unit is an (image, ground-truth class) pair unless stated):

- IoU: ``torchvision.ops.box_iou``.
- GT-known CorLoc@delta: the top-1 proposal for the class overlaps some box of that
  class with IoU >= delta (Deselaers et al. 2012; "GT-known" as in Choe et al. 2020).
- Top-1 localisation (unit: image): the predicted class is one of the image's classes
  and its top-1 proposal hits a box of that class at IoU >= 0.5 (ILSVRC's top-1 loc).
- MaxBoxAccV2 (Choe et al., CVPR 2020): the map is min-max normalised; for each
  threshold tau in {0, 0.01, ..., 0.99}, every 8-connected component of ``map >= tau``
  gives a box and the best-matching one counts; BoxAcc(tau, delta) is the fraction of
  pairs whose best IoU >= delta; MaxBoxAccV2 is the mean over delta in {0.3, 0.5, 0.7}
  of max over tau. Computed on the 32x32 grid, boxes scaled to the original image.
- Pointing game (Zhang et al. 2016): the map's maximum (centre of its grid cell) lies
  within a tolerance of a box of the class; tolerance 15 px at 224 px as in TorchRay,
  i.e. 15/224 of the image's longer side.
- Recall@k at IoU 0.5 and mean best overlap (MBO@k) (unit: ground-truth box): the best
  IoU among the top-k proposals for its class.
- Classification accuracy (unit: image): the predicted class is one of the image's classes.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from .annotations import AnnotatedSet
from .model import CIFAR10_CLASSES

DELTAS = (0.3, 0.5, 0.7)
POINTING_TOLERANCE = 15 / 224
MAXBOXACC_THRESHOLDS = np.arange(0, 1, 0.01)


def _pairs(ds: AnnotatedSet, preds: list):
    for i, (im, p) in enumerate(zip(ds.images, preds)):
        if p is None:
            continue
        for c in im.classes():
            yield i, im, p, c


def top1_ious(ds: AnnotatedSet, preds: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best IoU of each pair's top-1 box with the class's boxes: (ious, image idx, class)."""
    ious, idx, cls = [], [], []
    for i, im, p, c in _pairs(ds, preds):
        boxes = p["boxes"].get(c)
        v = float(box_iou(boxes[:1], im.boxes_of(c)).max()) if boxes is not None and len(boxes) else 0.0
        ious.append(v)
        idx.append(i)
        cls.append(c)
    return np.array(ious), np.array(idx, dtype=int), np.array(cls, dtype=int)


def corloc(ds: AnnotatedSet, preds: list, deltas=DELTAS) -> dict:
    """GT-known CorLoc at each delta, overall and per class (at each delta)."""
    ious, _, cls = top1_ious(ds, preds)
    out = {"n": int(len(ious))}
    for d in deltas:
        out[f"{d:.1f}"] = float((ious >= d).mean()) if len(ious) else float("nan")
        out[f"per_class@{d:.1f}"] = {CIFAR10_CLASSES[c]: float((ious[cls == c] >= d).mean())
                                     for c in sorted(set(cls.tolist()))}
    return out


def top1_localization(ds: AnnotatedSet, preds: list, delta: float = 0.5) -> float | None:
    hits, n = 0, 0
    for im, p in zip(ds.images, preds):
        if p is None or p.get("probs") is None or not im.classes():
            continue
        n += 1
        c = int(p["probs"].argmax())
        boxes = p["boxes"].get(c)
        if c in im.classes() and boxes is not None and len(boxes):
            hits += float(box_iou(boxes[:1], im.boxes_of(c)).max()) >= delta
    return hits / n if n else None


def classification_accuracy(ds: AnnotatedSet, preds: list) -> float | None:
    res = [int(p["probs"].argmax()) in im.classes()
           for im, p in zip(ds.images, preds) if p is not None and p.get("probs") is not None and im.classes()]
    return float(np.mean(res)) if res else None


def pointing_game(ds: AnnotatedSet, preds: list, tolerance: float = POINTING_TOLERANCE) -> float | None:
    hits = []
    for _, im, p, c in _pairs(ds, preds):
        peak = (p.get("peaks") or {}).get(c)
        if peak is None:
            return None
        r = tolerance * max(im.width, im.height)
        b = im.boxes_of(c)
        dx = torch.clamp(torch.maximum(b[:, 0] - peak[0], peak[0] - b[:, 2]), min=0)
        dy = torch.clamp(torch.maximum(b[:, 1] - peak[1], peak[1] - b[:, 3]), min=0)
        hits.append(bool((torch.hypot(dx, dy) <= r).any()))
    return float(np.mean(hits)) if hits else None


def recall_and_mbo(ds: AnnotatedSet, preds: list, ks=(1, 5, 10), delta: float = 0.5) -> dict:
    best = {k: [] for k in ks}
    for _, im, p, c in _pairs(ds, preds):
        gt = im.boxes_of(c)
        boxes = p["boxes"].get(c)
        for k in ks:
            if boxes is None or not len(boxes):
                best[k] += [0.0] * len(gt)
            else:
                best[k] += box_iou(gt, boxes[:k]).max(1).values.tolist()
    out = {}
    for k in ks:
        v = np.array(best[k])
        out[f"recall@{k}"] = float((v >= delta).mean()) if len(v) else float("nan")
        out[f"mbo@{k}"] = float(v.mean()) if len(v) else float("nan")
    return out


def component_boxes_all(score: np.ndarray, thresholds=MAXBOXACC_THRESHOLDS) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of all 8-connected components of ``score >= tau`` for every tau.

    ``score`` ``[h, w]`` min-max normalised. Returns boxes ``[N, 4]`` (grid xyxy) and the
    threshold index of each box ``[N]``.
    """
    boxes, which = [], []
    for t, tau in enumerate(thresholds):
        n, _, stats, _ = cv2.connectedComponentsWithStats((score >= tau).astype(np.uint8), connectivity=8)
        if n > 1:
            s = stats[1:]
            boxes.append(np.stack([s[:, 0], s[:, 1], s[:, 0] + s[:, 2], s[:, 1] + s[:, 3]], 1))
            which.append(np.full(n - 1, t))
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, int)
    return np.concatenate(boxes).astype(np.float32), np.concatenate(which)


def max_box_acc_v2(ds: AnnotatedSet, preds: list, deltas=DELTAS,
                   thresholds=MAXBOXACC_THRESHOLDS) -> dict | None:
    """MaxBoxAccV2 and the per-delta maxima with the best threshold."""
    best = []
    for _, im, p, c in _pairs(ds, preds):
        m = (p.get("maps") or {}).get(c)
        if m is None:
            return None
        m = m.float().numpy()
        lo, hi = float(m.min()), float(m.max())
        score = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
        boxes, which = component_boxes_all(score, thresholds)
        per_tau = torch.zeros(len(thresholds))
        if len(boxes):
            h, w = m.shape
            scale = torch.tensor([im.width / w, im.height / h] * 2)
            ious = box_iou(torch.from_numpy(boxes) * scale, im.boxes_of(c)).max(1).values
            per_tau.scatter_reduce_(0, torch.from_numpy(which), ious, reduce="amax")
        best.append(per_tau)
    if not best:
        return None
    best_t = torch.stack(best)  # [pairs, thresholds]
    out = {}
    for d in deltas:
        acc = (best_t >= d).float().mean(0)
        out[f"{d:.1f}"] = float(acc.max())
        out[f"best_threshold@{d:.1f}"] = float(thresholds[int(acc.argmax())])
    out["v2"] = float(np.mean([out[f"{d:.1f}"] for d in deltas]))
    return out


def score(ds: AnnotatedSet, preds: list) -> dict:
    """Every metric for one method's predictions (None where it does not apply)."""
    cl = corloc(ds, preds)
    return {
        "corloc": cl,
        "top1_loc": top1_localization(ds, preds),
        "maxboxacc": max_box_acc_v2(ds, preds),
        "pointing": pointing_game(ds, preds),
        "proposals": recall_and_mbo(ds, preds),
        "accuracy": classification_accuracy(ds, preds),
    }


# -- baselines --------------------------------------------------------------------------

def centred_box(width: int, height: int, area: float) -> Tensor:
    """The box of ``area`` (fraction of the image) centred, with the image's aspect ratio."""
    s = math.sqrt(area)
    return torch.tensor([[width * (1 - s) / 2, height * (1 - s) / 2,
                          width * (1 + s) / 2, height * (1 + s) / 2]])


def baseline_whole_image(ds: AnnotatedSet) -> list:
    """The whole image as the box; its centre as the pointing-game point."""
    return [{"boxes": {c: centred_box(im.width, im.height, 1.0) for c in im.classes()},
             "peaks": {c: (im.width / 2, im.height / 2) for c in im.classes()}} for im in ds.images]


def baseline_centred(ds: AnnotatedSet, area: float) -> list:
    return [{"boxes": {c: centred_box(im.width, im.height, area) for c in im.classes()},
             "peaks": {c: (im.width / 2, im.height / 2) for c in im.classes()}} for im in ds.images]


def baseline_random(ds: AnnotatedSet, seed: int = 0, k: int = 10) -> list:
    """``k`` random boxes per class: corners drawn uniformly and sorted (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for im in ds.images:
        per = {}
        for c in im.classes():
            xs = torch.rand(k, 2, generator=gen).sort(1).values * im.width
            ys = torch.rand(k, 2, generator=gen).sort(1).values * im.height
            per[c] = torch.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], 1)
        out.append({"boxes": per})
    return out


CENTRED_AREAS = (0.25, 0.5, 0.75)


# -- running the pipeline over an annotated set -------------------------------------------

def predict(gen, ds: AnnotatedSet, images_dir: str | Path, workers: int = 1, top_k: int = 10,
            progress: bool = True, desc: str = "evaluate") -> tuple[list, list[dict]]:
    """Run ``gen`` on every annotated image, for each of its ground-truth classes.

    Returns one prediction dict per image (None if unreadable) and the skipped files.
    """
    from tqdm import tqdm

    from .io import iter_batches

    images_dir = Path(images_dir)
    files = [images_dir / im.file for im in ds.images]
    preds: list = [None] * len(files)
    skipped = []
    saved_top_k = gen.options.top_k
    gen.options.top_k = max(saved_top_k, top_k)  # truncation only: the ranking is unchanged
    try:
        with tqdm(total=len(files), unit="img", desc=desc, disable=None if progress else True) as bar:
            for batch in iter_batches(files, gen.batch_size, workers, gen.max_pixels, gen.options.scales,
                                      gen.keeps_work):
                good = [b for b in batch if b[1] is not None]
                for i, _, _, reason, _ in batch:
                    if reason is not None:
                        skipped.append({"file": str(files[i]), "reason": reason})
                if good:
                    x = torch.stack([b[1] for b in good])
                    sizes = [b[2] for b in good]
                    specs = [ds.images[b[0]].classes() for b in good]
                    work = [b[4] for b in good]
                    for (i, _, size, _, _), res in zip(good, gen.run_batch(x, sizes, specs, work)):
                        preds[i] = prediction_from_result(res, size)
                bar.update(len(batch))
    finally:
        gen.options.top_k = saved_top_k
    return preds, skipped


def prediction_from_result(res: dict, size: tuple[int, int]) -> dict:
    """Pipeline output for one image -> the per-class prediction dict scored here."""
    boxes, maps, peaks = {}, {}, {}
    for r, c in enumerate(res["map_classes"].tolist()):
        boxes[c] = res["boxes"][res["labels"] == c]
        maps[c] = res["maps"][r].half()
        peaks[c] = tuple(res["peaks"][r].tolist())
    return {"boxes": boxes, "maps": maps, "peaks": peaks, "probs": res["probs"]}


def predictions_from_json(ds: AnnotatedSet, records: list[dict]) -> tuple[list, list[dict]]:
    """Match ``predictions.json`` image records to the annotated images by file name."""
    by_name: dict[str, dict] = {}
    for rec in records:
        p = Path(rec["file"])
        by_name.setdefault(p.as_posix(), rec)
        by_name.setdefault(p.name, rec)
    preds, missing = [], []
    for im in ds.images:
        rec = by_name.get(Path(im.file).as_posix()) or by_name.get(Path(im.file).name)
        if rec is None:
            preds.append(None)
            missing.append({"file": im.file, "reason": "no prediction for this image"})
            continue
        boxes: dict[int, list] = {}
        for prop in rec.get("proposals", []):
            boxes.setdefault(CIFAR10_CLASSES.index(prop["label"]), []).append(prop["box"])
        peaks = {CIFAR10_CLASSES.index(k): tuple(v) for k, v in (rec.get("peaks") or {}).items()}
        probs = rec.get("probs")
        preds.append({
            "boxes": {c: torch.tensor(b, dtype=torch.float32).view(-1, 4) for c, b in boxes.items()},
            "peaks": peaks or None,
            "probs": torch.tensor([probs[c] for c in CIFAR10_CLASSES]) if probs else None,
        })
    return preds, missing


def subset(items: list, limit: int | None, seed: int | None = None) -> list:
    """The first ``limit`` items, or with ``seed`` that many drawn at random (kept in order)."""
    if limit is None or limit >= len(items):
        return list(items)
    if seed is None:
        return list(items[:limit])
    keep = np.sort(np.random.default_rng(seed).choice(len(items), limit, replace=False))
    return [items[i] for i in keep]


def run_evaluation(annotations: str | Path, out: Path, *, images_dir: str | Path | None = None,
                   gen=None, predictions_json: str | Path | None = None, aliases=None,
                   workers: int = 1, baselines: bool = True, gradcam: bool = True,
                   limit: int | None = None, sample_seed: int | None = None, method_label: str | None = None,
                   gradcam_label: str = "Grad-CAM (CAM box)") -> dict:
    """Score the pipeline (or a finished ``localize`` run) and the baselines; write a report.

    Exactly one of ``gen`` (with ``images_dir``) or ``predictions_json`` must be given.
    ``limit``: score only the first N images, or with ``sample_seed`` N images drawn at random
    (annotation files are often sorted by class). Returns ``{name: metrics}``.
    """
    import json as _json

    from .annotations import load_annotations
    from .report import write_report

    ds = load_annotations(annotations, aliases)
    ds.images = subset(ds.images, limit, sample_seed)
    if not ds.images:
        raise ValueError(f"no scorable annotated images in {annotations}")
    info: dict = {"annotations": str(annotations), "images": len(ds.images),
                  "pairs": sum(len(im.classes()) for im in ds.images),
                  "annotation_problems": ds.problems,
                  "unmapped_classes": dict(ds.unmapped)}
    preds_by_name: dict[str, list] = {}
    skipped: list[dict] = []
    if predictions_json is not None:
        data = _json.loads(Path(predictions_json).read_text(encoding="utf-8"))
        name = method_label or f"gradloc ({data.get('settings', {}).get('method', '?')})"
        preds, skipped = predictions_from_json(ds, data.get("images", []))
        preds_by_name[name] = preds
        info["settings"] = data.get("settings", {})
    else:
        if gen is None or images_dir is None:
            raise ValueError("give --images DIR to run the pipeline, or --predictions FILE")
        name = method_label or f"gradloc ({gen.options.method})"
        preds, skipped = predict(gen, ds, images_dir, workers)
        preds_by_name[name] = preds
        info["settings"] = {k: v for k, v in vars(gen.options).items()}
        if gradcam and gen.options.method != "gradcam":
            from .pipeline import ProposalGenerator
            # Same windows as the method it is compared with (single window unless multi-scale).
            cam = ProposalGenerator(gen.model, device=str(gen.device), batch_size=gen.batch_size,
                                    max_pixels=gen.max_pixels, method="gradcam", scales=gen.options.scales)
            preds_by_name[gradcam_label], _ = predict(cam, ds, images_dir, workers, desc="grad-cam")
    info["skipped"] = skipped
    # Baselines are scored on the same images as the method (unreadable ones left out).
    readable = [p is not None for p in next(iter(preds_by_name.values()))]
    results = {n: score(ds, p) for n, p in preds_by_name.items()}
    if baselines:
        base_preds = {"best centred box": None, "whole image": baseline_whole_image(ds),
                      "random boxes": baseline_random(ds)}
        centred = {a: baseline_centred(ds, a) for a in CENTRED_AREAS}
        for a, p in centred.items():
            base_preds[f"centre {int(a * 100)}%"] = p
        mask = lambda preds: [p if ok else None for p, ok in zip(preds, readable)]  # noqa: E731
        scored = {n: score(ds, mask(p)) for n, p in base_preds.items() if p is not None}
        best = max(CENTRED_AREAS, key=lambda a: scored[f"centre {int(a * 100)}%"]["corloc"]["0.5"])
        results["best centred box"] = dict(scored[f"centre {int(best * 100)}%"], area=best)
        results.update({n: v for n, v in scored.items()})
        preds_by_name["best centred box"] = mask(centred[best])
        preds_by_name["whole image"] = mask(base_preds["whole image"])
    write_report(out, f"gradloc evaluation: {Path(annotations).name}", results, ds, preds_by_name,
                 Path(images_dir) if images_dir else None, name, info)
    return results
