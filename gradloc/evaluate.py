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
- MaxBoxAccV2 (Choe et al., CVPR 2020), as wsolevaluation computes it: the image and its
  boxes are resized to 224x224 (box corners truncated to integers), the map is resized to
  224x224 (bicubic) and min-max normalised (a constant map becomes zeros), then scaled to
  uint8; for each threshold tau in {0, 0.01, ..., 0.99} the pixels above ``int(tau * max)``
  are kept and every contour of them (OpenCV, all levels of the tree) gives a box; the
  best IoU (inclusive-pixel convention, +1) of any box with any box of the class counts;
  BoxAcc(tau, delta) is the fraction of pairs whose best IoU >= delta, and MaxBoxAccV2 the
  mean over delta in {0.3, 0.5, 0.7} of the maximum over tau.
- Pointing game (Zhang et al. 2016): the map's maximum (centre of its grid cell) lies
  within a tolerance of a box of the class; tolerance 15 px at 224 px as in TorchRay,
  i.e. 15/224 of the image's longer side.
- Recall@k at IoU 0.5 and mean best overlap (MBO@k) (unit: ground-truth box): the best
  IoU among the top-k proposals for its class.
- Classification accuracy (unit: image): the predicted class is one of the image's classes.
- COCO AP and AR@1/10/100 over IoU 0.5:0.95, by object size, per class and class-agnostic:
  pycocotools on the method's COCO results file (:mod:`gradloc.coco`).
"""
from __future__ import annotations

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
MAXBOXACC_SIZE = 224  # wsolevaluation's resize length


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


def wsol_boxes(score: np.ndarray, thresholds=MAXBOXACC_THRESHOLDS) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of every contour of the pixels above each threshold, as wsolevaluation's
    ``compute_bboxes_from_scoremaps`` with multi-contour evaluation (MaxBoxAccV2).

    ``score`` ``float [H, W]`` in [0, 1]. Returns boxes ``[N, 4]`` (x0, y0, x1, y1, inclusive
    pixel indices, x1 <= W - 1, y1 <= H - 1) and each box's threshold index ``[N]``; a threshold
    that keeps no pixel gives the box (0, 0, 0, 0), as there.
    """
    height, width = score.shape
    image = (score * 255).astype(np.uint8)
    top = int(image.max())
    boxes, which = [], []
    for t, tau in enumerate(thresholds):
        _, kept = cv2.threshold(image, int(tau * top), 255, cv2.THRESH_BINARY)
        contours = cv2.findContours(kept, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
        found = [cv2.boundingRect(c) for c in contours] or [(0, 0, 0, 0)]
        boxes += [(x, y, min(x + w, width - 1), min(y + h, height - 1)) for x, y, w, h in found]
        which += [t] * len(found)
    return np.array(boxes, dtype=np.int64).reshape(-1, 4), np.array(which, dtype=np.int64)


def inclusive_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU ``[N, M]`` of integer boxes ``[N, 4]``, ``[M, 4]`` whose corners are inclusive pixel
    indices (area (x1 - x0 + 1) * (y1 - y0 + 1)), wsolevaluation's convention."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt + 1, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2] + 1, axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2] + 1, axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def wsol_score_map(m: np.ndarray, size: int = MAXBOXACC_SIZE) -> np.ndarray:
    """A map at any resolution -> ``size`` x ``size``, bicubic, min-max normalised (zeros when
    constant or not finite), as wsolevaluation prepares CAMs."""
    m = cv2.resize(m.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    if not np.isfinite(m).all() or m.min() == m.max():
        return np.zeros_like(m)
    m = m - m.min()
    return m / m.max()


def wsol_gt_boxes(boxes: Tensor, width: int, height: int, size: int = MAXBOXACC_SIZE) -> np.ndarray:
    """Ground-truth boxes ``[K, 4]`` of a ``width`` x ``height`` image -> the ``size`` x ``size``
    image, each corner truncated to an integer (wsolevaluation's ``resize_bbox``)."""
    scale = np.array([size / width, size / height] * 2)
    return (boxes.double().numpy() * scale).astype(np.int64)


def max_box_acc_v2(ds: AnnotatedSet, preds: list, deltas=DELTAS,
                   thresholds=MAXBOXACC_THRESHOLDS) -> dict | None:
    """MaxBoxAccV2 (module docstring) and, per delta, the maximum with its best threshold.
    None when the predictions carry no maps."""
    best = []
    for _, im, p, c in _pairs(ds, preds):
        m = (p.get("maps") or {}).get(c)
        if m is None:
            return None
        boxes, which = wsol_boxes(wsol_score_map(m.float().numpy()), thresholds)
        ious = inclusive_iou(boxes, wsol_gt_boxes(im.boxes_of(c), im.width, im.height)).max(1)
        per_tau = np.zeros(len(thresholds))
        np.maximum.at(per_tau, which, ious)
        best.append(per_tau)
    if not best:
        return None
    best_t = np.stack(best)  # [pairs, thresholds]
    out = {}
    for d in deltas:
        acc = (best_t >= d).mean(0)
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
    boxes, scores, maps, peaks = {}, {}, {}, {}
    for r, c in enumerate(res["map_classes"].tolist()):
        boxes[c] = res["boxes"][res["labels"] == c]
        scores[c] = res["scores"][res["labels"] == c]
        maps[c] = res["maps"][r].half()
        peaks[c] = tuple(res["peaks"][r].tolist())
    return {"boxes": boxes, "scores": scores, "maps": maps, "peaks": peaks, "probs": res["probs"]}


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
        scores: dict[int, list] = {}
        for prop in rec.get("proposals", []):
            c = CIFAR10_CLASSES.index(prop["label"])
            boxes.setdefault(c, []).append(prop["box"])
            scores.setdefault(c, []).append(float(prop.get("score", 0.0)))
        peaks = {CIFAR10_CLASSES.index(k): tuple(v) for k, v in (rec.get("peaks") or {}).items()}
        probs = rec.get("probs")
        preds.append({
            "boxes": {c: torch.tensor(b, dtype=torch.float32).view(-1, 4) for c, b in boxes.items()},
            "scores": {c: torch.tensor(v, dtype=torch.float32) for c, v in scores.items()},
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
                   selective_search: bool = False, limit: int | None = None, sample_seed: int | None = None,
                   method_label: str | None = None) -> dict:
    """Score the pipeline (or a finished ``localize`` run) and the baselines; write a report.

    Exactly one of ``gen`` (with ``images_dir``) or ``predictions_json`` must be given.
    ``gradcam``: also Grad-CAM and CAM as published, on the same network (needs ``gen``).
    ``selective_search``: also OpenCV's selective search, a class-agnostic proposal anchor
    (needs ``images_dir`` and opencv-contrib). ``limit``: score only the first N images, or with
    ``sample_seed`` N images drawn at random (annotation files are often sorted by class).
    Every method's COCO results file goes to ``out/coco/``; its AP/AR come from that file.
    Returns ``{name: metrics}``.
    """
    import json as _json

    from . import baselines as B
    from . import coco
    from .annotations import load_annotations
    from .io import atomic_write_text
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
        preds_by_name[name], skipped = predictions_from_json(ds, data.get("images", []))
        info["settings"] = data.get("settings", {})
    else:
        if gen is None or images_dir is None:
            raise ValueError("give --images DIR to run the pipeline, or --predictions FILE")
        name = method_label or f"gradloc ({gen.options.method})"
        preds_by_name[name], skipped = predict(gen, ds, images_dir, workers)
        info["settings"] = {k: v for k, v in vars(gen.options).items()}
        if gradcam:
            for method, label in (("gradcam", "Grad-CAM (final features, CAM box)"), ("cam", "CAM (CAM box)")):
                preds_by_name[label], _ = B.predict_cam(gen.model, ds, images_dir, method, device=str(gen.device),
                                                        batch_size=gen.batch_size, workers=workers,
                                                        max_pixels=gen.max_pixels)
    if selective_search and images_dir is not None:
        if not B.has_selective_search():
            raise ValueError("selective search needs OpenCV's contrib module: pip install opencv-contrib-python-headless")
        preds_by_name["selective search (class-agnostic)"], _ = B.predict_selective_search(ds, images_dir)
    info["skipped"] = skipped
    # Baselines are scored on the same images as the method (unreadable ones left out).
    readable = [p is not None for p in next(iter(preds_by_name.values()))]
    if baselines:
        masked = lambda preds: [p if ok else None for p, ok in zip(preds, readable)]  # noqa: E731
        centred = {a: masked(B.baseline_centred(ds, a)) for a in B.CENTRED_AREAS}
        best = max(B.CENTRED_AREAS, key=lambda a: corloc(ds, centred[a])["0.5"])
        preds_by_name["best centred box"] = centred[best]
        preds_by_name["whole image"] = masked(B.baseline_whole_image(ds))
        preds_by_name["random boxes"] = masked(B.baseline_random(ds))
        preds_by_name.update({f"centre {int(a * 100)}%": p for a, p in centred.items()})
        info["best_centred_area"] = best
    gt = coco.ground_truth(ds)
    ids = coco.image_ids(ds)
    (out / "coco").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "coco" / "ground_truth.json", _json.dumps(gt))
    against_file = ds.source == "coco"
    results = {}
    for n, preds in preds_by_name.items():
        path = out / "coco" / (slug(n) + ".json")
        atomic_write_text(path, _json.dumps(coco.results(ds, preds)))
        dets = _json.loads(path.read_text(encoding="utf-8"))  # the metrics come from the file as written
        results[n] = score(ds, preds)
        results[n]["coco"] = {"results_file": str(path.relative_to(out)), **coco.coco_metrics(gt, dets, ids)}
        if against_file:
            results[n]["coco"]["against_annotation_file"] = coco.evaluate_against_file(
                annotations, dets, ids if limit is not None else None)
    if "best centred box" in results:
        results["best centred box"]["area"] = info["best_centred_area"]
    write_report(out, f"gradloc evaluation: {Path(annotations).name}", results, ds,
                 {n: p for n, p in preds_by_name.items() if not n.startswith("centre ")},
                 Path(images_dir) if images_dir else None, name, info)
    return results


def slug(name: str) -> str:
    """A method's name as a file name: ``Grad-CAM (final features, CAM box)`` -> ``grad-cam-final-features-cam-box``."""
    import re
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "method"
