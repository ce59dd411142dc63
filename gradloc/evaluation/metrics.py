"""Metrics: scoring predictions against annotated images.

Predictions for one image are a :class:`~gradloc.discovery.results.Prediction`: ``boxes``
{class: Tensor [K, 4] xyxy, best first}, optionally ``maps`` {class: Tensor [h, w]}, ``peaks``
{class: (x, y)} in original pixels, and ``probs`` Tensor [C] (None for box baselines). Every
metric below takes the annotated set and one prediction per image (None for an image that
could not be read: it is left out and reported).

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
- Oracle CorLoc@0.5: the pair's best *candidate* (any box generated before selection)
  hits; beside it, the share of those pairs whose chosen box hits (selection's success).
- Misses by kind: each pair whose top-1 box misses at IoU 0.5, against the class's box it
  overlaps most: ``too large`` (larger than that box and holding at least half of it: the object
  with too much around it, or several objects), ``part`` (smaller and at least half inside it),
  ``elsewhere`` (neither: beside the object or on another), ``none`` (no box).
- Classification accuracy (unit: image): the predicted class is one of the image's classes.
- Presence AP@0.5 (unit: the method's claims, one per (image, class) it gave a box): a claim is
  right when the class is in the image and its best box hits a box of it at IoU >= 0.5; ranked
  by the box's score over the whole set, so it says whether one ``--min-score`` serves every
  image (meaningful with ``evaluate --request all``).
- COCO AP and AR@1/10/100 over IoU 0.5:0.95, by object size, per class and class-agnostic:
  pycocotools on the method's COCO results file (:mod:`gradloc.evaluation.coco`, not here).
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from ..data.annotations import AnnotatedSet

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
        boxes = p.boxes.get(c)
        v = float(box_iou(boxes[:1], im.boxes_of(c)).max()) if boxes is not None and len(boxes) else 0.0
        ious.append(v)
        idx.append(i)
        cls.append(c)
    return np.array(ious), np.array(idx, dtype=int), np.array(cls, dtype=int)


SIZE_BUCKETS = (("small", 0.0, 32.0 ** 2), ("medium", 32.0 ** 2, 96.0 ** 2), ("large", 96.0 ** 2, float("inf")))


def pair_sizes(ds: AnnotatedSet, idx: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """COCO's size bucket of each (image, class) pair, by the box area (pixels) of the class's
    largest box in the image: ``"small"`` below 32x32, ``"medium"`` below 96x96, else ``"large"``."""
    out = []
    for i, c in zip(idx.tolist(), cls.tolist()):
        b = ds.images[i].boxes_of(c)
        area = float(((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).max())
        out.append(next(name for name, lo, hi in SIZE_BUCKETS if lo <= area < hi))
    return np.array(out)


def corloc(ds: AnnotatedSet, preds: list, deltas=DELTAS) -> dict:
    """GT-known CorLoc at each delta, overall, per class and per object size (at each delta)."""
    ious, idx, cls = top1_ious(ds, preds)
    sizes = pair_sizes(ds, idx, cls)
    out = {"n": int(len(ious)), "n_by_size": {name: int((sizes == name).sum()) for name, _, _ in SIZE_BUCKETS}}
    for d in deltas:
        out[f"{d:.1f}"] = float((ious >= d).mean()) if len(ious) else float("nan")
        out[f"per_class@{d:.1f}"] = {ds.class_names[c]: float((ious[cls == c] >= d).mean())
                                     for c in sorted(set(cls.tolist()))}
        out[f"by_size@{d:.1f}"] = {name: float((ious[sizes == name] >= d).mean()) if (sizes == name).any() else None
                                   for name, _, _ in SIZE_BUCKETS}
    return out


def oracle_corloc(ds: AnnotatedSet, preds: list, delta: float = 0.5) -> dict | None:
    """CorLoc of the best candidate: per pair, whether *any* candidate box the method generated
    for the class (before selection; ``candidates`` {class: [M, 4]}) overlaps a box of the class
    with IoU >= ``delta``, overall and by object size, beside the share of those pairs whose
    chosen box hits too. Oracle minus CorLoc is what selection loses; 1 minus oracle, what
    generation misses. None when the predictions carry no candidates (baselines, files)."""
    best = []
    for _, im, p, c in _pairs(ds, preds):
        cands = (p.candidates or {}).get(c)
        if cands is None:
            return None
        best.append(float(box_iou(cands, im.boxes_of(c)).max()) if len(cands) else 0.0)
    if not best:
        return None
    chosen, idx, cls = top1_ious(ds, preds)  # the same pairs, in the same order
    best, chosen = np.array(best) >= delta, chosen >= delta
    sizes = pair_sizes(ds, idx, cls)
    share = lambda hit, sel: float(hit[sel].mean()) if sel.any() else None  # noqa: E731
    return {"delta": delta, "oracle": share(best, np.ones(len(best), bool)),
            "chosen_given_oracle": share(chosen, best),
            "oracle_by_size": {name: share(best, sizes == name) for name, _, _ in SIZE_BUCKETS},
            "chosen_given_oracle_by_size": {name: share(chosen, best & (sizes == name)) for name, _, _ in SIZE_BUCKETS}}


MISS_KINDS = ("too large", "part", "elsewhere", "none")


def miss_kind(box: Tensor | None, gt: Tensor) -> str:
    """Why a top-1 ``box`` ``[4]`` (xyxy, or None) that misses fails, against the boxes ``gt``
    ``[G, 4]`` of its class: one of :data:`MISS_KINDS`, judged against the box it overlaps most."""
    if box is None:
        return "none"
    iou = box_iou(box[None].float(), gt.float())[0]
    g = gt[int(iou.argmax())].float()
    b = box.float()
    inter = ((torch.minimum(b[2], g[2]) - torch.maximum(b[0], g[0])).clamp_min(0)
             * (torch.minimum(b[3], g[3]) - torch.maximum(b[1], g[1])).clamp_min(0))
    area_b, area_g = (b[2] - b[0]) * (b[3] - b[1]), (g[2] - g[0]) * (g[3] - g[1])
    if area_b > area_g and inter >= 0.5 * area_g:
        return "too large"
    if area_b <= area_g and inter >= 0.5 * area_b:
        return "part"
    return "elsewhere"


def misses(ds: AnnotatedSet, preds: list, delta: float = 0.5) -> dict:
    """The pairs whose top-1 box misses at IoU ``delta``, by :func:`miss_kind`, overall and by
    object size: ``{"n": misses, "share": {kind: share of misses}, "by_size": {size: {...}}}``
    (shares None where nothing misses). Says whether selection errs large or small."""
    kinds, sizes_of = [], []
    ious, idx, cls = top1_ious(ds, preds)
    sizes = pair_sizes(ds, idx, cls)
    for v, i, c, size in zip(ious, idx.tolist(), cls.tolist(), sizes):
        if v >= delta:
            continue
        boxes = preds[i].boxes.get(c)
        kinds.append(miss_kind(boxes[0] if boxes is not None and len(boxes) else None, ds.images[i].boxes_of(c)))
        sizes_of.append(size)
    kinds, sizes_of = np.array(kinds), np.array(sizes_of)

    def shares(sel: np.ndarray) -> dict:
        n = int(sel.sum())
        return {"n": n, "share": {k: float((kinds[sel] == k).mean()) if n else None for k in MISS_KINDS}}
    return {"delta": delta, **shares(np.ones(len(kinds), bool)),
            "by_size": {name: shares(sizes_of == name) for name, _, _ in SIZE_BUCKETS}}


def top1_localization(ds: AnnotatedSet, preds: list, delta: float = 0.5) -> float | None:
    hits, n = 0, 0
    for im, p in zip(ds.images, preds):
        if p is None or p.probs is None or not im.classes():
            continue
        n += 1
        c = int(p.probs.argmax())
        boxes = p.boxes.get(c)
        if c in im.classes() and boxes is not None and len(boxes):
            hits += float(box_iou(boxes[:1], im.boxes_of(c)).max()) >= delta
    return hits / n if n else None


def classification_accuracy(ds: AnnotatedSet, preds: list) -> float | None:
    res = [int(p.probs.argmax()) in im.classes()
           for im, p in zip(ds.images, preds) if p is not None and p.probs is not None and im.classes()]
    return float(np.mean(res)) if res else None


def pointing_game(ds: AnnotatedSet, preds: list, tolerance: float = POINTING_TOLERANCE) -> float | None:
    hits = []
    for _, im, p, c in _pairs(ds, preds):
        peak = (p.peaks or {}).get(c)
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
        boxes = p.boxes.get(c)
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
        m = (p.maps or {}).get(c)
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


PRESENCE_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def presence_curve(ds: AnnotatedSet, preds: list, delta: float = 0.5,
                   by_prob: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Each (image, class) the method answered with a box is the claim "class c is here": its
    best box at its score. It is right when c is one of the image's classes and the box hits a
    box of c at IoU >= ``delta``; claims of a class whose boxes are all crowd/difficult count
    neither way. ``by_prob``: ranked by the image's class probability instead of the box's
    score. Returns the claims' scores (descending), precision and recall after each, and the
    number of (image, class) pairs to find."""
    scores, right = [], []
    positives = 0
    for im, p in zip(ds.images, preds):
        if p is None:
            continue
        positives += len(im.classes())
        ignored = set(im.labels.tolist()) - set(im.classes())
        for c, boxes in p.boxes.items():
            if not len(boxes) or c in ignored:
                continue
            s = p.probs[c:c + 1] if by_prob else p.scores.get(c)
            scores.append(float(s[0]) if s is not None and len(s) else 1.0)
            right.append(c in im.classes() and float(box_iou(boxes[:1], im.boxes_of(c)).max()) >= delta)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hits = np.asarray(right, dtype=np.float64)[order]
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1) if len(hits) else np.zeros(0)
    recall = tp / max(positives, 1)
    return np.asarray(scores, dtype=np.float64)[order], precision, recall, positives


def presence(ds: AnnotatedSet, preds: list, delta: float = 0.5, by_prob: bool = False) -> dict | None:
    """:func:`presence_curve` summarised: AP (all-points, as VOC 2010+), the claims' precision
    and recall when only those scoring at least each of :data:`PRESENCE_THRESHOLDS` are kept
    (what ``--min-score`` would keep), and the best F1 with its threshold."""
    if by_prob and not all(p is None or p.probs is not None for p in preds):
        return None
    scores, precision, recall, positives = presence_curve(ds, preds, delta, by_prob)
    if not positives:
        return None
    envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    ap = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * envelope)) if len(recall) else 0.0
    at = {}
    for t in PRESENCE_THRESHOLDS:
        n = int(np.sum(scores >= t - 1e-6))  # scores are float32: 0.9 is stored as 0.89999998
        at[f"{t:g}"] = {"claims": n, "precision": float(precision[n - 1]) if n else None,
                        "recall": float(recall[n - 1]) if n else 0.0}
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12) if len(scores) else np.zeros(1)
    best = int(np.argmax(f1))
    return {"AP": ap, "claims": int(len(scores)), "pairs": positives, "at_min_score": at,
            "best_f1": float(f1[best]), "best_f1_min_score": float(scores[best]) if len(scores) else None}


def score(ds: AnnotatedSet, preds: list) -> dict:
    """Every metric for one method's predictions (None where it does not apply)."""
    cl = corloc(ds, preds)
    return {
        "corloc": cl,
        "oracle": oracle_corloc(ds, preds),
        "misses": misses(ds, preds),
        "top1_loc": top1_localization(ds, preds),
        "maxboxacc": max_box_acc_v2(ds, preds),
        "pointing": pointing_game(ds, preds),
        "proposals": recall_and_mbo(ds, preds),
        "accuracy": classification_accuracy(ds, preds),
        "presence": presence(ds, preds),
        "presence_by_prob": presence(ds, preds, by_prob=True),
    }
