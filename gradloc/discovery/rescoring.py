"""Rescoring candidate boxes by the classifier, and fusing the best with its neighbours.

A saliency map does not say how large its object is, so candidates of several sizes are asked
to the classifier: a box's **crop** (cut out, resized to 32x32) should hold the class, and the
image with the box **blanked** to the mean colour should not. ``crop-delete`` scores a box by the
difference, so a part of an object (a head) loses to the whole. All views of a batch go through
one forward pass, each distinct view once, and near-duplicate candidates (threshold rungs or
sizes that find almost the same box) share one box's score. A row ranked by its best score needs
the blanked views of only the boxes that can still be best (:meth:`Rescorer.deletion_scores`).
Then the best box is **fused** with the candidates overlapping it (weighted box fusion, Solovyev
et al. 2021).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

from ..ops.boxes import blank_boxes, clip_nonempty, crop_windows, whole_box
from .proposals import rank

RESCORES = ("off", "crop", "crop-delete")
BOUND_ROUND = 8  # a bounded row's blanked views per round, best crops first
FUSE_MIN_IOU = 0.3  # boxes fused with the best one overlap it at least this much


def near_duplicates(boxes: Tensor, min_iou: float) -> tuple[Tensor, Tensor]:
    """Greedy grouping of near-identical boxes, in their order.

    Each box ``[K, 4]`` (xyxy) joins the first earlier *representative* it overlaps with IoU >=
    ``min_iou``, or becomes one. ``min_iou`` > 1 keeps every box its own.

    Returns
    -------
    representatives : Tensor, int64, [M], indices into ``boxes``, increasing
    owner : Tensor, int64, [K], for each box the position of its representative in ``representatives``
    """
    if len(boxes) == 0 or min_iou > 1:
        return torch.arange(len(boxes)), torch.arange(len(boxes))
    iou = box_iou(boxes.float(), boxes.float())
    reps: list[int] = []
    owner = torch.empty(len(boxes), dtype=torch.int64)
    for i in range(len(boxes)):
        near = (iou[i, reps] >= min_iou).nonzero() if reps else []
        if len(near):
            owner[i] = int(near[0])
        else:
            owner[i] = len(reps)
            reps.append(i)
    return torch.tensor(reps, dtype=torch.int64), owner


def fuse_best(boxes: Tensor, scores: Tensor, temperature: float, min_iou: float = FUSE_MIN_IOU) -> Tensor:
    """Weighted fusion of the best box with the boxes around it.

    The boxes ``[K, 4]`` (xyxy) that overlap the best-scoring one with IoU >= ``min_iou`` are
    averaged corner by corner, weighted by ``softmax(scores / temperature)``. Candidates of one
    object at several thresholds err both ways (a part, the object plus background); their
    score-weighted mean is usually closer to the object than the single best. The overlap test
    keeps other objects' boxes out.

    Returns
    -------
    Tensor, float32, [4], xyxy
    """
    boxes, scores = boxes.float(), scores.float()
    best = int(scores.argmax())
    near = box_iou(boxes[best:best + 1], boxes)[0] >= min_iou
    weights = ((scores[near] - scores[best]) / temperature).softmax(0)
    return (weights[:, None] * boxes[near]).sum(0)


def rank_and_fuse(boxes: Tensor, scores: Tensor, nms_iou: float = 0.5, top_k: int | None = 5,
                  fuse: float = 0.0, consensus: bool = False) -> tuple[Tensor, Tensor]:
    """:func:`~gradloc.discovery.proposals.rank` (NMS, top-k), with the best box replaced by
    :func:`fuse_best` of all candidates at temperature ``fuse`` when ``fuse`` > 0. With
    ``consensus``, the candidates are ranked by :func:`consensus_scores` and fused at
    :data:`CONSENSUS_TEMPERATURE` instead."""
    if consensus and len(boxes) > 1:
        scores, fuse = consensus_scores(boxes, scores), CONSENSUS_TEMPERATURE
    fused = fuse_best(boxes, scores, fuse) if fuse > 0 and len(boxes) > 1 else None
    boxes, scores = rank(boxes, scores, nms_iou, None)
    if fused is not None:
        boxes = torch.cat([fused[None].to(boxes.dtype), boxes[1:]])
    return (boxes, scores) if top_k is None else (boxes[:top_k], scores[:top_k])


CONSENSUS_TEMPERATURE = 0.5  # softmax temperature of the candidates' votes (scores in [-1, 1])


def consensus_scores(boxes: Tensor, scores: Tensor, temperature: float = CONSENSUS_TEMPERATURE) -> Tensor:
    """Each candidate's agreement with the others, as the row's score.

    A photograph's row has some ninety candidates from every input size, threshold rung and
    peak, and one crop's score is a noisy judge: the best-scoring box is as often a part as a
    box twice the object's size (BENCHMARKS.md measures how often). Where the object is large, most candidates hold it, so the
    box that the score-weighted candidates overlap most is the whole object. Each box ``[K, 4]``
    gets ``a = IoU(box, boxes) @ softmax(scores / temperature)`` in [0, 1], and the score
    ``max(-1, best score - (1 - a))``: the row's evidence less the box's disagreement, so the
    ranking is by agreement and the scale stays that of ``scores``.
    """
    boxes, scores = boxes.float(), scores.float()
    agreement = box_iou(boxes, boxes) @ (scores / temperature).softmax(0)
    return (scores.max() - (1 - agreement)).clamp_min(-1)


def recognised_large(sides: Tensor, probs: Tensor) -> bool:
    """Whether an object is large in its photograph, judged by the input sizes at which the
    classifier recognises it: views ``sides`` ``[V]`` (px) and the class's probability in each
    ``[V]``. A CIFAR-10 network recognises an object that appears at about its input's size, so
    a large object is recognised in the coarse views (the whole photograph squeezed to 32-64 px)
    and a small one only in the fine views (128-256 px), where it is CIFAR-sized. True when the
    mean probability of the views below the sizes' geometric middle exceeds that of the views
    above it."""
    sides, probs = sides.float(), probs.float()
    middle = (sides.min() * sides.max()).sqrt()
    coarse, fine = probs[sides < middle], probs[sides > middle]
    return bool(len(coarse)) and (not len(fine) or float(coarse.mean()) > float(fine.mean()))


def presence_scores(ranked: Tensor, prob: float) -> Tensor:
    """A row's ranked scores ``[K]`` (best first) -> scores that compare across images:
    ``prob * exp(score - best score)``. ``prob`` is the image's probability of the class, a far
    better judge of whether the class is there at all than any box's evidence (VOC 2007 dev,
    the chosen boxes ranked over the set: AP@0.5 31.3 by it, 22.4 by crop minus deletion); the
    exponent keeps the row's order, so the best box scores ``prob`` and the others less."""
    return prob * (ranked.float() - ranked[:1].float()).exp() if len(ranked) else ranked


def evidence_scores(evidence: Tensor) -> Tensor:
    """Scores ``[K]`` from :meth:`Rescorer.box_evidence` ``[K, 2]``: the crop's class
    probability minus the blanked view's (0 under ``crop``)."""
    return evidence[:, 0] - evidence[:, 1]


def first_crops(crops: Tensor, k: int) -> Tensor:
    """bool ``[K]``: the ``k`` boxes of highest crop probability, of those above ``-1`` (a
    box to leave out is given ``-1``)."""
    out = torch.zeros(len(crops), dtype=torch.bool)
    out[torch.argsort(crops, descending=True, stable=True)[:k]] = True
    return out & (crops > -1)


def blank_in_thumbnail(images: Sequence[Tensor], boxes: Sequence[Tensor], size: int,
                       fill: Sequence[float]) -> list[Tensor]:
    """Per row, the image's ``size`` x ``size`` view with each box (xyxy in the image's pixels)
    blanked to ``fill`` (the colour that normalises to zero) -> ``uint8 [K_j, 3, size, size]``."""
    out = []
    for img, b in zip(images, boxes):
        h, w = img.shape[-2:]
        thumb = crop_windows(img, whole_box(img), size)[0]
        out.append(blank_boxes(thumb, b.float() * torch.tensor([size / w, size / h] * 2), fill))
    return out


class Rescorer:
    """Scores boxes by the class probabilities of views of them.

    Parameters
    ----------
    classify : callable
        ``uint8 [N, 3, S, S]`` views -> class probabilities ``[N, C]``, no gradients.
    merge_iou : float
        Candidates of a row overlapping an earlier one with IoU >= this share its score
        (:func:`near_duplicates`): their views differ by a few pixels, and so do their scores.
        Above 1, every candidate is scored.
    input_size, fill : int, 3 floats
        The views' side ``S`` (the model's input) and the colour blanked boxes are filled with.
    """

    def __init__(self, classify: Callable[[Tensor], Tensor], merge_iou: float, input_size: int,
                 fill: Sequence[float]) -> None:
        self.classify, self.merge_iou, self.input_size, self.fill = classify, merge_iou, input_size, tuple(fill)
        self._blank: Tensor | None = None

    def class_probs(self, inputs: Sequence[Tensor], classes: Sequence[int]) -> list[Tensor]:
        """Per row, the probability of its class for each of its views ``uint8 [K_j, 3, 32, 32]``
        -> ``[K_j]``, all rows in one batched forward pass over the distinct views."""
        full = [x for x in inputs if len(x)]
        if not full:
            return [torch.zeros(0) for _ in inputs]
        views = torch.cat(full)
        # Candidates repeat (threshold rungs that find the same box, rows of one image), so
        # each distinct view is run once.
        distinct, where = torch.unique(views.flatten(1), dim=0, return_inverse=True)
        probs = self.classify(distinct.view(-1, *views.shape[1:]))[where]
        probs = iter(probs.split([len(x) for x in full]))
        return [next(probs)[:, int(c)] if len(x) else torch.zeros(0) for x, c in zip(inputs, classes)]

    def crop_scores(self, images: Sequence[Tensor], boxes: Sequence[Tensor], classes: Sequence[int]) -> list[Tensor]:
        """Class probability of each box's own crop: ``images[j]`` ``uint8 [3, h, w]``, its
        ``boxes[j]`` ``[K_j, 4]`` (xyxy in that image's pixels) and class -> ``[K_j]`` each."""
        return self.class_probs([crop_windows(img, clip_nonempty(b, img.shape[-2:]), self.input_size) if len(b) else b
                                 for img, b in zip(images, boxes)], classes)

    def deletion_scores(self, blanked: Sequence[Tensor], classes: Sequence[int],
                        bounds: Sequence[Tensor | None] | None = None) -> tuple[list[Tensor], list[Tensor]]:
        """Class probability of each blanked view ``uint8 [K_j, 3, 32, 32]``: the evidence left
        outside each box -> ``[K_j]`` each, and which views ran (bool ``[K_j]``).

        ``bounds[j]``: None (every view runs), or for a row ranked by its best score its boxes'
        crop probabilities ``[K_j]``. A box scores its crop less its blanked view, at most its
        crop, so once some box of the row scores ``s`` a box whose crop is at most ``s`` cannot be
        best: such a row's views run in rounds (:data:`BOUND_ROUND` boxes each, best crops first)
        while a box not yet viewed has a crop above the best score. The others are left 0 and
        marked not run. All rows' views of a round run in one batched pass."""
        bounds = list(bounds) if bounds is not None else [None] * len(blanked)
        probs = [torch.zeros(len(b)) for b in blanked]
        viewed = [torch.zeros(len(b), dtype=torch.bool) for b in blanked]
        todo = [torch.ones(len(b), dtype=torch.bool) if c is None else first_crops(c, BOUND_ROUND)
                for b, c in zip(blanked, bounds)]
        while any(t.any() for t in todo):
            got = self.class_probs([b[t] for b, t in zip(blanked, todo)], classes)
            for j, (t, g) in enumerate(zip(todo, got)):
                probs[j][t], viewed[j] = g.float(), viewed[j] | t
            todo = [torch.zeros(len(v), dtype=torch.bool) if c is None or v.all() else
                    first_crops(torch.where(~v & (c > (c - p)[v].max()), c, -1.0), BOUND_ROUND)
                    for v, p, c in zip(viewed, probs, bounds)]
        return probs, viewed

    def blank_probs(self) -> Tensor:
        """Class probabilities ``[C]`` of the 32x32 view that is all mean colour (no evidence at
        all), computed once."""
        if self._blank is None:
            view = torch.tensor(self.fill).round().to(torch.uint8).view(1, 3, 1, 1)
            self._blank = self.classify(view.expand(1, 3, self.input_size, self.input_size).contiguous())[0]
        return self._blank

    def box_evidence(self, images: Sequence[Tensor], boxes: Sequence[Tensor], classes: Sequence[int],
                     rescore: str, blanked: Sequence[Tensor | None] | None = None,
                     frames: Sequence[Tensor | None] | None = None,
                     whole: Sequence[float | None] | None = None,
                     bounded: Sequence[bool] | None = None) -> list[Tensor]:
        """Per row, each box's evidence ``[K_j, 2]``: its crop's class probability and, for
        ``crop-delete``, that of its blanked view (``blanked[j]``, aligned with the boxes, or by
        default :func:`blank_in_thumbnail`; 0 for ``crop``). Only each row's representatives
        (:func:`near_duplicates` at ``merge_iou``) are viewed; the others share theirs.
        ``bounded[j]``: the row is ranked by its best score, so only the blanked views that can
        change which box is best run (:meth:`deletion_scores`); by default none is.

        ``frames[j]``: bool ``[K_j]``, the boxes that are the frame hypothesis (the object fills
        the view), and ``whole[j]`` the probability of the row's class for the whole view (known
        from the map's pass). A frame box that represents itself gets no views of its own: the
        whole view's probability, and the blank view's (:meth:`blank_probs`) for ``crop-delete``.
        A frame of nearly the whole view crops to nearly the whole view and blanks to nearly
        nothing, so its two views would cost two forward passes to say what is known.
        """
        groups = [near_duplicates(b, self.merge_iou) for b in boxes]
        frames = list(frames) if frames is not None else [None] * len(boxes)
        whole = list(whole) if whole is not None else [None] * len(boxes)
        blanked = list(blanked) if blanked is not None else [None] * len(boxes)
        # per row, which of its representatives are frames with a known whole-view probability
        rep_frame = [f[r] if f is not None and p is not None else torch.zeros(len(r), dtype=torch.bool)
                     for f, p, (r, _) in zip(frames, whole, groups)]
        viewed = [r[~f] for (r, _), f in zip(groups, rep_frame)]  # the representatives scored by views
        reps = [b[v] for b, v in zip(boxes, viewed)]
        bounded = list(bounded) if bounded is not None else [False] * len(boxes)
        crops = self.crop_scores(images, reps, classes)
        if rescore != "crop":
            views = [blank_in_thumbnail([img], [b], self.input_size, self.fill)[0] if given is None else given[v]
                     for img, b, given, v in zip(images, reps, blanked, viewed)]
            kept, ran = self.deletion_scores(views, classes, [c.float() if bd else None for c, bd in zip(crops, bounded)])
            # boxes whose blanked view never ran are taken to blank nothing: the row's unblanked view,
            # the lowest score their crop gives where blanking only takes evidence away
            short = [j for j, r in enumerate(ran) if not r.all()]
            unblanked = self.crop_scores([images[j] for j in short], [whole_box(images[j]) for j in short],
                                         [classes[j] for j in short])
            for j, u in zip(short, unblanked):
                kept[j][~ran[j]] = float(u[0])
        else:
            kept = [torch.zeros_like(k) for k in crops]
        base = self.blank_probs() if rescore != "crop" and any(f.any() for f in rep_frame) else None
        out = []
        for (r, owner), f, k, d, p, c in zip(groups, rep_frame, crops, kept, whole, classes):
            e = torch.zeros(len(r), 2)
            e[~f] = torch.stack([k, d], 1).float()
            if f.any():
                e[f] = torch.tensor([p, float(base[c]) if base is not None else 0.0])
            out.append(e[owner])
        return out
