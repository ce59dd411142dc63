"""COCO interchange and COCO metrics.

- :func:`ground_truth`: the scored annotated set as a COCO dataset (the annotation file's own
  image and category ids where it had them).
- :func:`results`: predictions as a COCO results file, ``[{"image_id", "category_id",
  "bbox": [x, y, w, h], "score"}]``, which ``pycocotools.COCO.loadRes`` reads.
- :func:`coco_metrics`: AP and AR@1/10/100 (IoU 0.5:0.95) overall, by object size and per
  class, per class and class-agnostic, computed by pycocotools' ``COCOeval`` from exactly such
  a results file; nothing here re-implements the matching.
- :func:`results_from_predictions`: a ``predictions.json`` from ``gradloc localize`` as a
  results file against annotations (on its own, as a COCO dataset: :mod:`gradloc.export`).
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np

from ..data.annotations import AnnotatedSet, read_json
from ..discovery.results import predictions_from_json

STAT_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


def image_ids(ds: AnnotatedSet) -> list:
    """The annotation file's id of each image (COCO), else its position + 1 (VOC)."""
    return [im.image_id if im.image_id is not None else n + 1 for n, im in enumerate(ds.images)]


def category_map(ds: AnnotatedSet) -> dict[int, int]:
    """Class index -> category id for every class of the set: the annotation file's id where a
    category maps onto the class, otherwise ids above the file's largest (so none collide);
    for sets without ids (VOC) the class index."""
    if not ds.category_ids:
        return {c: c for c in range(len(ds.class_names))}
    top = max(ds.category_ids.values())
    return {c: ds.category_ids.get(c, top + 1 + c) for c in range(len(ds.class_names))}


def _xywh(box, digits: int | None = 2) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    xywh = [x0, y0, x1 - x0, y1 - y0]
    return xywh if digits is None else [round(v, digits) for v in xywh]


def ground_truth(ds: AnnotatedSet) -> dict:
    """The scored set as a COCO detection dataset. Boxes that are not scored (crowd, VOC's
    difficult) are written with ``iscrowd`` 1, which COCOeval ignores as it ignores crowds;
    ``area`` is the file's own where it had one, else the box's."""
    cats = category_map(ds)
    images, annotations = [], []
    for im, iid in zip(ds.images, image_ids(ds)):
        images.append({"id": iid, "file_name": im.file, "width": im.width, "height": im.height})
        for k, (box, label, hard) in enumerate(zip(im.boxes.tolist(), im.labels.tolist(), im.difficult.tolist())):
            x, y, w, h = _xywh(box, None)  # exact: ground truth must not move
            area = float(im.areas[k]) if im.areas is not None else w * h
            annotations.append({"id": len(annotations) + 1, "image_id": iid, "category_id": cats[label],
                                "bbox": [x, y, w, h], "area": area, "iscrowd": int(hard)})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": cats[c], "name": name} for c, name in enumerate(ds.class_names)]}


def results(ds: AnnotatedSet, preds: list) -> list[dict]:
    """One method's predictions (see :mod:`gradloc.evaluation.evaluate`) -> a COCO results list, each
    class's boxes in their ranked order. Unreadable images (None) have no entries."""
    cats = category_map(ds)
    out = []
    for p, iid in zip(preds, image_ids(ds)):
        if p is None:
            continue
        for c, boxes in p.boxes.items():
            scores = p.scores.get(c)
            for k, box in enumerate(boxes.tolist()):
                # without scores, rank order decides (COCOeval sorts by score)
                s = float(scores[k]) if scores is not None else 1.0 - k / max(1, len(boxes))
                out.append({"image_id": iid, "category_id": cats[c], "bbox": _xywh(box), "score": round(s, 5)})
    return out


def coco_eval(gt: dict, dets: list[dict], img_ids: list | None = None, class_agnostic: bool = False) -> dict:
    """pycocotools' bbox evaluation of ``dets`` against ``gt`` (a dataset dict) -> the twelve
    summary figures (:data:`STAT_NAMES`, None where a size bucket has no ground truth) and,
    per class, ``AP`` and ``AR100`` keyed by category name. ``class_agnostic``: COCOeval's
    ``useCats = 0``, every detection matched against every box of its image, whatever its label."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))  # COCOeval writes into the annotations it is given
        coco_gt.createIndex()
        if dets:
            coco_dt = coco_gt.loadRes(dets)
        else:  # loadRes cannot take an empty list
            coco_dt = COCO()
            coco_dt.dataset = {"images": gt["images"], "categories": gt.get("categories", []), "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if img_ids is not None:
            ev.params.imgIds = list(img_ids)
        ev.params.useCats = 0 if class_agnostic else 1
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out: dict = {k: (None if v < 0 else float(v)) for k, v in zip(STAT_NAMES, ev.stats)}
    if not class_agnostic:
        names = {c["id"]: c["name"] for c in gt.get("categories", [])}
        per = {}
        for k, cat in enumerate(ev.params.catIds):
            rec = ev.eval["recall"][:, k, 0, -1]
            prec = ev.eval["precision"][:, :, k, 0, -1]
            if (rec > -1).any():
                per[names.get(cat, str(cat))] = {"AP": float(np.mean(prec[prec > -1])) if (prec > -1).any() else None,
                                                 "AR100": float(np.mean(rec[rec > -1]))}
        out["per_class"] = per
    return out


def coco_metrics(gt: dict, dets: list[dict], img_ids: list | None = None) -> dict:
    """Per-class and class-agnostic :func:`coco_eval` of one results list."""
    return {"per_class": coco_eval(gt, dets, img_ids), "class_agnostic": coco_eval(gt, dets, img_ids, True)}


def evaluate_against_file(annotations: str | Path | dict, dets: list[dict], img_ids: list | None = None) -> dict:
    """:func:`coco_eval` against a COCO annotation file as given (all its categories, as a
    user running pycocotools on it would get; a path or its parsed content), or
    ``{"error": reason}`` when it cannot be read or pycocotools refuses it."""
    try:
        gt = annotations if isinstance(annotations, dict) else read_json(annotations)
        return coco_eval(gt, dets, img_ids)
    except Exception as exc:  # pycocotools asserts and raises many types on odd files
        return {"error": f"{type(exc).__name__}: {exc}"}


def results_from_predictions(records: list[dict], ds: AnnotatedSet) -> tuple[list[dict], list[str], list[str]]:
    """``predictions.json`` image records -> a COCO results list against ``ds``, matched by
    file name (the path, else its base name). Returns (results, prediction files with no
    annotated image, annotated files with no prediction)."""
    preds, missing = predictions_from_json(ds, records)
    matched = {Path(im.file).as_posix() for im, p in zip(ds.images, preds) if p is not None}
    names = {Path(im.file).name for im, p in zip(ds.images, preds) if p is not None}
    unmatched = [r["file"] for r in records
                 if Path(r["file"]).as_posix() not in matched and Path(r["file"]).name not in names]
    return results(ds, preds), unmatched, [m["file"] for m in missing]
