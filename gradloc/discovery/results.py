"""The pipeline's result for one image, the prediction every method is scored as, and its JSON
record in ``predictions.json``.

:class:`Result` is what :class:`~gradloc.discovery.pipeline.ProposalGenerator` returns per image (tensors of
every class together, its maps and candidates); :class:`Prediction` is one image's answer per
class, as the pipeline, the baselines and ``predictions.json`` give it and as metrics, reports
and writers read it: :meth:`Prediction.to_record` is the one writer of the documented record and
:meth:`Prediction.from_record` the one reader.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
from torch import Tensor

from ..models.wrn import CIFAR10_CLASSES


@dataclass(frozen=True)
class Candidates:
    """Every candidate box of one (image, class) row before selection, in original pixels:
    what rescoring saw, so that generation failures (no candidate near the object) can be told
    from selection failures (one was, another was chosen)."""

    boxes: Tensor      # float [M, 4], xyxy, original pixels, in generation order
    scores: Tensor     # float [M], the score selection ranked by
    evidence: Tensor   # float [M, 2], the crop's class probability and the blanked view's (0 without rescoring)
    kinds: list[str]   # "component" (a threshold rung's component), "moment", "peak" or "frame"
    sides: Tensor      # int64 [M], the input side (px) of the map the box came from


class Result(TypedDict):
    """One image's proposals (best first) and the products behind them."""

    boxes: Tensor        # float [K, 4], xyxy, original pixels
    scores: Tensor       # float [K]
    labels: Tensor       # int64 [K], class indices (CIFAR-10's for the shipped model)
    probs: Tensor        # float [C], the image's class probabilities (its model-sized view)
    maps: Tensor         # float [R, h, w], one saliency map per class asked for
    masks: Tensor        # bool [R, h, w], the kept pixels of each map
    map_classes: Tensor  # int64 [R]
    peaks: Tensor        # float [R, 2], each map's maximum, (x, y) in original pixels
    candidates: list     # [R] Candidates, one per map, in map_classes' order


def map_peaks(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Location of each map's maximum ``[R, 2]`` as (x, y) in original pixels (cell centre)."""
    r, h, w = maps.shape
    flat = maps.reshape(r, -1).argmax(1)
    gy, gx = flat // w, flat % w
    return torch.stack([(gx + 0.5) * size[1] / w, (gy + 0.5) * size[0] / h], 1)


@dataclass(frozen=True)
class ClassProposals:
    """What post-processing hands to the result for one (image, class) row."""

    cls: int                # the class index
    boxes: Tensor           # float [K, 4], xyxy, original pixels, best first
    scores: Tensor          # float [K]
    map: Tensor             # float [h, w], the row's saliency map as returned
    mask: Tensor            # bool [h, w], its kept pixels
    candidates: Candidates  # every candidate before selection


def assemble(per_class: list[ClassProposals], probs: Tensor, size: tuple[int, int]) -> Result:
    """One image's rows, one per class asked for -> its :class:`Result`: the proposals of all
    classes best first, one map, mask, peak and :class:`Candidates` per class."""
    boxes = torch.cat([row.boxes for row in per_class])
    scores = torch.cat([row.scores for row in per_class])
    labels = torch.cat([torch.full((len(row.boxes),), row.cls, dtype=torch.int64) for row in per_class])
    order = torch.argsort(scores, descending=True, stable=True)
    maps = torch.stack([row.map for row in per_class])
    return Result(boxes=boxes[order], scores=scores[order], labels=labels[order], probs=probs, maps=maps,
                  masks=torch.stack([row.mask for row in per_class]),
                  map_classes=torch.tensor([row.cls for row in per_class], dtype=torch.int64),
                  peaks=map_peaks(maps, size), candidates=[row.candidates for row in per_class])


def _box(box) -> list[float]:
    return [round(float(v), 2) for v in box]


def read_predictions(path: str | Path, with_classes: bool = False) -> tuple:
    """A ``predictions.json`` from ``gradloc localize`` -> (its image records, its settings).
    Refuses, with a one-line :class:`ValueError` naming the file, anything else: not JSON, nested
    too deeply, not an object with an ``images`` list, another format, or images none of which
    has a ``file`` (a COCO annotation file). Records that are not objects with a ``file``
    string are left out (they cannot be matched to an image). ``with_classes``: also the
    classifier's class names from the header (CIFAR-10's when it has none)."""
    from ..data.annotations import read_json
    data = read_json(path, "predictions file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path} is not a gradloc predictions.json (no 'images' list)")
    if data.get("format", "gradloc-predictions") != "gradloc-predictions":
        raise ValueError(f"{path} is not a gradloc predictions.json (its format is {str(data['format'])[:40]!r})")
    records = [r for r in data["images"] if isinstance(r, dict) and isinstance(r.get("file"), str)]
    if data["images"] and not records:
        coco = "annotations" in data or any(isinstance(r, dict) and "file_name" in r for r in data["images"])
        raise ValueError(f"{path} is not a gradloc predictions.json: none of its {len(data['images'])} image entries "
                         "has a 'file'" + (" (it looks like a COCO annotation file: give it as the annotations)"
                                           if coco else ""))
    settings = data.get("settings")
    settings = settings if isinstance(settings, dict) else {}
    if not with_classes:
        return records, settings
    names = data.get("classes")
    ok = isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names)
    return records, settings, tuple(names) if ok else CIFAR10_CLASSES


def finite_numbers(v, n: int) -> list[float] | None:
    if not isinstance(v, (list, tuple)) or len(v) != n:
        return None
    try:
        out = [float(x) for x in v]
    except (TypeError, ValueError):
        return None
    return out if all(x == x and abs(x) != float("inf") for x in out) else None


@dataclass
class Prediction:
    """One image's answer, the one type every method gives and every metric, report and writer
    reads: the pipeline's (:meth:`from_result`), a baseline's, or a ``predictions.json``
    record's (:meth:`from_record`, :meth:`to_record`). Classes are indices into the
    classifier's class names."""

    boxes: dict[int, Tensor]                          # class -> float [K, 4], xyxy, original pixels, best first
    scores: dict[int, Tensor] = field(default_factory=dict)  # class -> float [K] (none: ranked by order)
    probs: Tensor | None = None                       # float [C], the image's class probabilities
    peaks: dict[int, tuple] | None = None             # class -> (x, y), where its map is largest
    maps: dict[int, Tensor] | None = None             # class -> its saliency map (float16: memory over large sets)
    candidates: dict[int, Tensor] | None = None       # class -> every candidate box before selection [M, 4]

    @classmethod
    def from_result(cls, res: Result) -> "Prediction":
        """The pipeline's :class:`Result`, per class."""
        p = cls({}, {}, res["probs"], {}, {}, {})
        for r, c in enumerate(res["map_classes"].tolist()):
            mine = res["labels"] == c
            p.boxes[c], p.scores[c] = res["boxes"][mine], res["scores"][mine]
            p.maps[c], p.peaks[c] = res["maps"][r].half(), tuple(res["peaks"][r].tolist())
            p.candidates[c] = res["candidates"][r].boxes
        return p

    def to_record(self, file: str, size: tuple[int, int], classes=CIFAR10_CLASSES) -> dict:
        """The image's entry of ``predictions.json`` (the documented format), labels named by
        the classifier's ``classes``: every class's proposals, best score first."""
        labels = [c for c, b in self.boxes.items() for _ in range(len(b))]
        boxes = torch.cat(list(self.boxes.values())) if labels else torch.zeros(0, 4)
        scores = torch.cat([self.scores[c] for c in self.boxes]) if labels else torch.zeros(0)
        order = torch.argsort(scores, descending=True, stable=True).tolist()
        probs = self.probs.tolist()
        return {
            "file": file, "width": int(size[1]), "height": int(size[0]),
            "predicted": classes[int(np.argmax(probs))],
            "probs": {c: round(p, 5) for c, p in zip(classes, probs)},
            "proposals": [{"box": _box(boxes[k]), "score": round(float(scores[k]), 5), "label": classes[labels[k]]}
                          for k in order],
            "peaks": {classes[c]: [round(float(v), 2) for v in pt] for c, pt in (self.peaks or {}).items()},
        }

    @classmethod
    def from_record(cls, rec: dict, classes=CIFAR10_CLASSES) -> "Prediction":
        """A ``predictions.json`` record. Proposals without a label among ``classes`` (the run's
        classifier's) and a finite box are left out."""
        boxes: dict[int, list] = {}
        scores: dict[int, list] = {}
        props = rec.get("proposals")
        for prop in props if isinstance(props, list) else []:
            if not isinstance(prop, dict) or prop.get("label") not in classes:
                continue
            box, score = finite_numbers(prop.get("box"), 4), finite_numbers([prop.get("score", 0.0)], 1)
            if box is None:
                continue
            c = classes.index(prop["label"])
            boxes.setdefault(c, []).append(box)
            scores.setdefault(c, []).append(score[0] if score else 0.0)
        raw_peaks = rec.get("peaks")
        peaks = {classes.index(k): tuple(p) for k, v in (raw_peaks.items() if isinstance(raw_peaks, dict) else ())
                 if k in classes and (p := finite_numbers(v, 2)) is not None}
        probs = rec.get("probs")
        if not (isinstance(probs, dict) and all(finite_numbers([probs.get(c)], 1) for c in classes)):
            probs = None
        return cls(boxes={c: torch.tensor(b, dtype=torch.float32).view(-1, 4) for c, b in boxes.items()},
                   scores={c: torch.tensor(v, dtype=torch.float32) for c, v in scores.items()},
                   probs=torch.tensor([probs[c] for c in classes]) if probs else None, peaks=peaks or None)


def predictions_from_json(ds, records: list[dict]) -> tuple[list, list[dict]]:
    """Match ``predictions.json`` image records to the images of an annotated set ``ds`` by file
    name (the path, else its base name) -> one :class:`Prediction` per image (None when
    missing) and the annotated files without a record."""
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
        preds.append(Prediction.from_record(rec, ds.class_names))
    return preds, missing
