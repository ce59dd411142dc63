"""Evaluation runs: the method and the baselines over an annotated set, scored by
:mod:`gradloc.evaluation.metrics` and by pycocotools (:mod:`gradloc.evaluation.coco`).

:func:`run_evaluation` returns an :class:`Evaluation`; :func:`gradloc.evaluation.report.write_report`
writes it out (the report depends on the evaluation, not the other way round).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.annotations import AnnotatedSet
from .metrics import corloc, score
from ..discovery.results import Prediction, predictions_from_json, read_predictions


KINDS = ("gradloc", "box prior", "cam baseline", "proposals")  # what a scored method is


@dataclass
class Evaluation:
    """What an evaluation run produced: metrics per method (each with its ``kind``, one of
    :data:`KINDS`), the predictions, the set, notes."""

    title: str
    results: dict[str, dict]
    ds: AnnotatedSet
    preds_by_name: dict[str, list]
    method_name: str
    info: dict = field(default_factory=dict)
    images_dir: Path | None = None


REQUESTS = ("gt", "predicted", "top3", "all")
BEST_CENTRED = "best centred box"  # the centred box of the area that scores best on the set


def predict(gen, ds: AnnotatedSet, images_dir: str | Path, workers: int | None = None, top_k: int = 10,
            progress: bool = True, desc: str = "evaluate", request: str = "gt") -> tuple[list, list[dict]]:
    """Run ``gen`` on every annotated image, for each of its ground-truth classes (``request``
    ``gt``) or, as a user without labels would, for its ``predicted``, ``top3`` or ``all`` classes.

    Returns one prediction dict per image (None if unreadable) and the skipped files.
    """
    from ..engines.local import run_files

    files = [Path(images_dir) / im.file for im in ds.images]
    preds: list = [None] * len(files)
    skipped = []
    if gen.options.top_k is not None:  # truncation only: the ranking is unchanged
        gen = gen.with_options(top_k=max(gen.options.top_k, top_k))
    asked = (lambda i: ds.images[i].classes()) if request == "gt" else (lambda i: request)
    for done, failed in run_files(gen, files, asked, workers, desc=desc,
                                  progress=progress):
        skipped += [{"file": str(files[i]), "reason": reason} for i, reason in failed]
        for i, _, _, res in done:
            preds[i] = Prediction.from_result(res)
    return preds, skipped


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
                   workers: int | None = None, baselines: bool = True, gradcam: bool = True,
                   selective_search: bool = False, limit: int | None = None, sample_seed: int | None = None,
                   method_label: str | None = None, exclude: set[str] | None = None,
                   request: str = "gt") -> Evaluation:
    """Score the pipeline (or a finished ``localize`` run) and the baselines; write a report.

    Exactly one of ``gen`` (with ``images_dir``) or ``predictions_json`` must be given.
    ``gradcam``: also Grad-CAM and CAM as published, on the same network (needs ``gen``).
    ``selective_search``: also OpenCV's selective search, a class-agnostic proposal anchor
    (needs ``images_dir`` and opencv-contrib). ``limit``: score only the first N images, or with
    ``sample_seed`` N images drawn at random (annotation files are often sorted by class).
    ``aliases``: annotation names -> class names (a table, or an alias JSON file read against
    the classes). ``exclude``: file names left out (before ``limit``), e.g. the photographs a model trained on.
    ``request``: the classes asked of each image (:func:`predict`); other than ``gt``, the CAM
    baselines ask the same and the box baselines, which cannot name a class, are left out.
    Every method's COCO results file goes to ``out/coco/``; its AP/AR come from that file.
    Annotations are mapped onto the classifier's classes: ``gen``'s, or those named in the
    predictions file (CIFAR-10's for the shipped WRN). Grad-CAM and CAM run on the same classifier
    where it defines them (:func:`cam_baselines`).
    Returns the :class:`Evaluation` (``.results``: ``{name: metrics}``); write it with
    :func:`gradloc.evaluation.report.write_report`.
    """
    from . import baselines as B
    from . import coco
    from ..data.annotations import load_aliases, load_annotations, read_json
    from ..models.wrn import CIFAR10_CLASSES
    from ..data.io import atomic_write_text

    if request not in REQUESTS:
        raise ValueError(f"unknown request {request!r}; choose from {', '.join(REQUESTS)}")
    records = settings = unreadable = None
    if predictions_json is not None:
        try:
            records, settings, classes = read_predictions(predictions_json, with_classes=True)
        except ValueError as exc:  # said after the annotations' own problems, which come first
            unreadable, classes = exc, CIFAR10_CLASSES
    elif gen is not None:
        classes = gen.spec.classes
    else:
        classes = CIFAR10_CLASSES
    if aliases is None or isinstance(aliases, (str, Path)):  # an alias file is read against those classes
        aliases = load_aliases(aliases, classes)
    ds = load_annotations(annotations, aliases, classes)
    if exclude:  # images a model was trained on (image-level labels), kept out of its scores
        ds.images = [im for im in ds.images if im.file not in exclude and Path(im.file).name not in exclude]
    ds.images = subset(ds.images, limit, sample_seed)
    if not ds.images:
        raise ValueError(f"no scorable annotated images in {annotations}")
    if not any(im.classes() for im in ds.images):
        raise ValueError(f"nothing to score in {annotations}: every box of its {len(ds.images)} images is crowd "
                         "or difficult, which CorLoc and COCOeval ignore")
    if unreadable is not None:
        raise unreadable
    info: dict = {"annotations": str(annotations), "images": len(ds.images),
                  "pairs": sum(len(im.classes()) for im in ds.images),
                  "annotation_problems": ds.problems,
                  "unmapped_classes": dict(ds.unmapped)}
    preds_by_name: dict[str, list] = {}
    kinds: dict[str, str] = {}
    skipped: list[dict] = []
    if predictions_json is not None:
        name = method_label or f"gradloc ({settings.get('method', '?')})"
        preds_by_name[name], skipped = predictions_from_json(ds, records)
        kinds[name] = "gradloc"
        info["settings"] = settings
    else:
        if gen is None or images_dir is None:
            raise ValueError("give --images DIR to run the pipeline, or --predictions FILE")
        name = method_label or f"gradloc ({gen.options.method})"
        preds_by_name[name], skipped = predict(gen, ds, images_dir, workers, request=request)
        kinds[name] = "gradloc"
        info["settings"] = gen.settings()
        if gradcam:
            for method, label, layer in cam_baselines(gen, info):
                preds_by_name[label], _ = B.predict_cam(gen.runtime, ds, images_dir, method, layer, workers=workers,
                                                        request=request)
                kinds[label] = "cam baseline"
    if selective_search and images_dir is not None:
        if not B.has_selective_search():
            raise ValueError("selective search needs OpenCV's contrib module: pip install opencv-contrib-python-headless")
        preds_by_name["selective search (class-agnostic)"], _ = B.predict_selective_search(ds, images_dir)
        kinds["selective search (class-agnostic)"] = "proposals"
    info["skipped"] = skipped
    if all(p is None for p in next(iter(preds_by_name.values()))):
        where = f"in {predictions_json}" if predictions_json is not None else f"readable under {images_dir}"
        raise ValueError(f"nothing to score: none of the {len(ds.images)} annotated images has a prediction {where}"
                         + (f" (first: {skipped[0]['file']}: {skipped[0]['reason']})" if skipped else ""))
    # Baselines are scored on the same images as the method (unreadable ones left out).
    readable = [p is not None for p in next(iter(preds_by_name.values()))]
    info["request"] = request
    areas: dict[str, float] = {}  # the centred boxes of each area, scored but not plotted
    if baselines and request == "gt":
        masked = lambda preds: [p if ok else None for p, ok in zip(preds, readable)]  # noqa: E731
        centred = {a: masked(B.baseline_centred(ds, a)) for a in B.CENTRED_AREAS}
        best = max(B.CENTRED_AREAS, key=lambda a: corloc(ds, centred[a])["0.5"])
        preds_by_name[BEST_CENTRED] = centred[best]
        preds_by_name["whole image"] = masked(B.baseline_whole_image(ds))
        preds_by_name["random boxes"] = masked(B.baseline_random(ds))
        areas = {f"centre {int(a * 100)}%": a for a in centred}
        preds_by_name.update({n: centred[a] for n, a in areas.items()})
        kinds.update({n: "box prior" for n in (BEST_CENTRED, "whole image", "random boxes", *areas)})
        info["best_centred_area"] = best
    gt = coco.ground_truth(ds)
    ids = coco.image_ids(ds)
    (out / "coco").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "coco" / "ground_truth.json", json.dumps(gt))
    # the file as given (load_annotations has just parsed it), once for every method
    given = read_json(annotations) if ds.source == "coco" else None
    results = {}
    for n, preds in preds_by_name.items():
        path = out / "coco" / (slug(n) + ".json")
        atomic_write_text(path, json.dumps(coco.results(ds, preds)))
        dets = json.loads(path.read_text(encoding="utf-8"))  # the metrics come from the file as written
        results[n] = {"kind": kinds[n], **score(ds, preds)}
        results[n]["coco"] = {"results_file": str(path.relative_to(out)), **coco.coco_metrics(gt, dets, ids)}
        if given is not None:
            results[n]["coco"]["against_annotation_file"] = coco.evaluate_against_file(
                given, dets, ids if limit is not None else None)
    if BEST_CENTRED in results:
        results[BEST_CENTRED]["area"] = info["best_centred_area"]
    return Evaluation(f"gradloc evaluation: {Path(annotations).name}", results, ds,
                      {n: p for n, p in preds_by_name.items() if n not in areas}, name, info,
                      Path(images_dir) if images_dir else None)


def cam_baselines(gen, info: dict) -> list[tuple[str, str, str]]:
    """The CAM-family baselines that ``gen``'s classifier defines, as ``(method, label)``: Grad-CAM
    on its last feature layer, and CAM where a linear head ``fc`` follows global pooling (the
    shipped WRN, torchvision's ResNets). What cannot run is said in ``info["notes"]``."""
    from torch import nn

    layer = gen.feature_layer
    if layer is None:
        info.setdefault("notes", []).append("Grad-CAM and CAM left out: the classifier has no spatial feature map "
                                            "(its features are tokens, as a vision transformer's)")
        return []
    out = [("gradcam", "Grad-CAM (final features, CAM box)", layer)]
    if isinstance(getattr(gen.model, "fc", None), nn.Linear):
        out.append(("cam", "CAM (CAM box)", layer))
    else:
        info.setdefault("notes", []).append("CAM left out: the classifier has no linear head 'fc' after global pooling")
    return out


def slug(name: str) -> str:
    """A method's name as a file name: ``Grad-CAM (final features, CAM box)`` -> ``grad-cam-final-features-cam-box``."""
    import re
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "method"
