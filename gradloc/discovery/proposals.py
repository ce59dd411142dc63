"""Mask -> connected components -> scored boxes on the map's grid.

Boxes are float ``(x0, y0, x1, y1)`` in pixel-edge coordinates: a component covering
grid columns 3..5 spans ``x0 = 3`` to ``x1 = 6``, in grid units (:mod:`gradloc.ops.boxes` maps
them elsewhere).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor
from torchvision.ops import nms
from torchvision.transforms.v2.functional import gaussian_blur

from .threshold import threshold

GRID = 32  # the network's input side: sizes here are stated for a 32x32 map

MORPH_OPS = {"close": cv2.MORPH_CLOSE, "open": cv2.MORPH_OPEN, "dilate": cv2.MORPH_DILATE,
             "erode": cv2.MORPH_ERODE, "none": None}
KERNEL_SHAPES = {"ellipse": cv2.MORPH_ELLIPSE, "rect": cv2.MORPH_RECT, "cross": cv2.MORPH_CROSS}
COMPONENT_SCORES = ("mass", "area", "mean", "contrast")


def morphology(mask: np.ndarray, op: str = "close", kernel: int = 3,
               shape: str = "ellipse") -> np.ndarray:
    """Apply an OpenCV morphological operation to a ``uint8 [H, W]`` mask (0/1)."""
    if op not in MORPH_OPS:
        raise ValueError(f"unknown morphology {op!r}; choose from {', '.join(MORPH_OPS)}")
    if MORPH_OPS[op] is None or kernel <= 1:
        return mask
    k = cv2.getStructuringElement(KERNEL_SHAPES[shape], (kernel, kernel))
    # Border value 0 keeps closing from gluing components to the image edge.
    return cv2.morphologyEx(mask, MORPH_OPS[op], k, borderType=cv2.BORDER_CONSTANT, borderValue=0)


def component_boxes(mask: np.ndarray, saliency: np.ndarray,
                    score: str = "mass") -> tuple[np.ndarray, np.ndarray]:
    """One box per 8-connected component of ``mask``.

    Parameters
    ----------
    mask : ndarray, uint8, shape [H, W]
    saliency : ndarray, float, shape [H, W]
    score : {"mass", "area", "mean", "contrast"}
        ``mass``: the component's share of the map's total saliency; ``area``: its share
        of the image's pixels; ``mean``: its mean saliency over the map's maximum;
        ``contrast``: the share of saliency inside its *box* minus the box's share of the
        image (see :func:`box_contrast`).

    Returns
    -------
    boxes : ndarray, float32, shape [K, 4], xyxy on the grid
    scores : ndarray, float32, shape [K]
    """
    if score not in COMPONENT_SCORES:
        raise ValueError(f"unknown component score {score!r}; choose from {COMPONENT_SCORES}")
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    stats = stats[1:]  # label 0 is the background
    boxes = np.stack([stats[:, 0], stats[:, 1], stats[:, 0] + stats[:, 2],
                      stats[:, 1] + stats[:, 3]], 1).astype(np.float32)
    sums = np.bincount(labels.ravel(), weights=saliency.ravel(), minlength=n)[1:]
    if score == "contrast":
        scores = box_contrast(saliency, boxes)
    elif score == "mass":
        scores = sums / max(float(saliency.sum()), 1e-12)
    elif score == "area":
        scores = stats[:, 4] / float(mask.size)
    else:
        scores = sums / stats[:, 4] / max(float(saliency.max()), 1e-12)
    return boxes, scores.astype(np.float32)


def box_contrast(saliency: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Share of the map's saliency inside each box minus the box's share of the image area.

    A box earns score only by holding more saliency than a box of its size would by chance,
    so neither a tight box around a fragment nor the whole image wins by default.
    ``saliency`` ``[H, W]`` (non-negative), ``boxes`` ``[K, 4]`` integer-valued xyxy -> ``[K]``.
    """
    integral = cv2.integral(saliency.astype(np.float64))  # [H+1, W+1]
    x0, y0, x1, y1 = boxes.astype(np.int64).T
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    area = (x1 - x0) * (y1 - y0) / float(saliency.size)
    return (inside / max(float(integral[-1, -1]), 1e-12) - area).astype(np.float32)


def union_box(mask: np.ndarray) -> np.ndarray | None:
    """The box around all set pixels of ``mask`` ``[H, W]``, xyxy; None if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def moment_box(saliency: np.ndarray, k: float = 1.5) -> Tensor:
    """The box of a map's centroid +- ``k`` standard deviations along each axis.

    ``saliency`` ``[H, W]`` is read as a mass distribution over pixel centres (negative values
    count as zero): a Gaussian fit of where the evidence is, with no threshold. Where the
    thresholded components split an object or leave out its faint parts, this box still
    spans the spread of the evidence.

    Returns
    -------
    Tensor, float32, [1, 4], xyxy on the grid, clipped to it; [0, 4] for a map without mass
    """
    m = np.clip(np.asarray(saliency, np.float64), 0, None)
    total = m.sum()
    if not total > 0:
        return torch.zeros(0, 4)
    h, w = m.shape
    ys, xs = np.arange(h) + 0.5, np.arange(w) + 0.5
    py, px = m.sum(1) / total, m.sum(0) / total
    my, mx = (py * ys).sum(), (px * xs).sum()
    sy, sx = np.sqrt((py * (ys - my) ** 2).sum()), np.sqrt((px * (xs - mx) ** 2).sum())
    box = [max(0.0, mx - k * sx), max(0.0, my - k * sy), min(float(w), mx + k * sx), min(float(h), my + k * sy)]
    return torch.tensor([box], dtype=torch.float32)


def peak_boxes(saliency: np.ndarray, count: int = 3, fractions: tuple = (0.6, 0.4, 0.2),
               min_peak: float = 0.2) -> Tensor:
    """Boxes of the regions around a map's strongest local maxima.

    A photograph's map has a peak on each object it responds to, and a mass threshold over the
    whole map joins them (or keeps only the largest). Here each of the ``count`` strongest local
    maxima (at least ``min_peak`` of the map's maximum; a pixel is a local maximum if no pixel
    within a window of 1/16 of the grid is higher) is grown into the 8-connected region at or
    above each ``fraction`` of *its own* value, and that region's box is a candidate: a small
    object's box does not depend on a brighter object elsewhere in the picture. A maximum inside
    a stronger peak's tightest region is the same object and is skipped.

    Parameters
    ----------
    saliency : ndarray, float, shape [H, W]
    count : int
        Peaks used, strongest first.
    fractions : tuple of float
        Shares of a peak's value that bound its regions, each in (0, 1).
    min_peak : float
        Peaks below this share of the map's maximum are ignored.

    Returns
    -------
    Tensor, float32, [K, 4], xyxy on the grid, K <= count * len(fractions): strongest peak first,
    each peak's regions from the highest fraction down
    """
    m = np.nan_to_num(np.asarray(saliency, np.float32))
    top = float(m.max()) if m.size else 0.0
    if not top > 0 or count < 1:
        return torch.zeros(0, 4)
    k = max(3, (max(m.shape) // 16) | 1)
    ys, xs = np.nonzero((m >= cv2.dilate(m, np.ones((k, k), np.uint8))) & (m >= min_peak * top))
    boxes, taken, used = [], np.zeros(m.shape, bool), 0
    for j in np.argsort(-m[ys, xs], kind="stable"):
        y, x = ys[j], xs[j]
        if taken[y, x]:  # on the tightest region of a stronger peak (a plateau, a second maximum of one blob)
            continue
        for n, f in enumerate(sorted(fractions, reverse=True)):
            _, labels, stats, _ = cv2.connectedComponentsWithStats((m >= f * m[y, x]).astype(np.uint8), connectivity=8)
            x0, y0, w, h = stats[labels[y, x], :4]
            boxes.append([x0, y0, x0 + w, y0 + h])
            if n == 0:
                taken |= labels == labels[y, x]
        used += 1
        if used == count:
            break
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def frame_box(shape: tuple[int, int], share: float) -> Tensor:
    """The centred box of ``share`` of each side of a grid of ``shape`` ``(h, w)``: the
    hypothesis that the object fills the view -> ``[1, 4]`` (xyxy)."""
    h, w = shape
    f = (1 - share) / 2
    return torch.tensor([[f * w, f * h, (1 - f) * w, (1 - f) * h]])


def rank(boxes: Tensor, scores: Tensor, nms_iou: float = 0.5, top_k: int | None = 5) -> tuple[Tensor, Tensor]:
    """NMS at ``nms_iou``, then the ``top_k`` best of ``boxes`` ``[K, 4]`` (xyxy), best first."""
    if len(boxes) > 1:
        keep = nms(boxes.float(), scores.float(), nms_iou)  # sorted by decreasing score
        boxes, scores = boxes[keep], scores[keep]
    return (boxes, scores) if top_k is None else (boxes[:top_k], scores[:top_k])


def propose(saliency: np.ndarray, mask: np.ndarray, *, morph: str = "close", kernel: int = 3,
            score: str = "mass", include_union: bool = False, nms_iou: float = 0.5,
            top_k: int | None = 5) -> tuple[Tensor, Tensor]:
    """Saliency ``[H, W]`` and its kept-pixel mask ``[H, W]`` -> grid boxes and scores.

    Morphology cleans the mask, each 8-connected component gives a box, the union box is
    optionally added (scored by the mass of all components), then NMS at ``nms_iou``
    and the ``top_k`` best are kept, best first.

    Returns
    -------
    boxes : Tensor, float32, [K, 4], xyxy on the grid
    scores : Tensor, float32, [K]
    """
    cleaned = morphology(mask.astype(np.uint8), morph, kernel)
    boxes, scores = component_boxes(cleaned, saliency, score)
    if include_union and len(boxes) > 1:
        ub = union_box(cleaned)
        boxes = np.concatenate([boxes, ub[None]])
        union_score = box_contrast(saliency, ub[None])[0] if score == "contrast" else min(1.0, float(scores.sum()))
        scores = np.concatenate([scores, [union_score]]).astype(np.float32)
    return rank(torch.from_numpy(boxes), torch.from_numpy(scores), nms_iou, top_k)


def smooth_and_threshold(maps: Tensor, sigma: float, method: str, values: Sequence) -> tuple[Tensor, Tensor]:
    """Maps ``[R, h, w]`` of one grid size -> (smoothed maps ``[R, h, w]``, kept-pixel masks
    ``[L, R, h, w]``, one per threshold value), batched: Gaussian smoothing of ``sigma``, then
    :func:`~gradloc.discovery.threshold.threshold` by ``method`` at each of ``values``.

    Sizes are stated for the 32x32 grid and scale with larger grids: top-N is a share of 1024
    pixels, sigma is in 32x32-grid pixels.
    """
    f = max(maps.shape[-2:]) / GRID
    if sigma > 0:
        s = sigma * f
        k = 2 * int(round(3 * s)) + 1
        maps = gaussian_blur(maps[:, None], [k, k], [s, s])[:, 0]
    values = list(values)
    if method == "top-n":
        values = [v * maps[0].numel() / GRID ** 2 for v in values]
    return maps, torch.stack([threshold(maps, method, v) for v in values])


def candidate_boxes(m: Tensor, masks: Tensor, *, morph: str = "close", kernel: int = 3, score: str = "mass",
                    union_box: bool = True, nms_iou: float = 0.5, top_k: int | None = 5, moment: float = 0.0,
                    peaks: int = 0, peak_shares: Sequence[float] = (0.6, 0.4, 0.2)) -> tuple[Tensor, Tensor, list[str]]:
    """One map ``[h, w]`` and its masks ``[L, h, w]`` -> grid boxes ``[K, 4]`` (xyxy), scores
    ``[K]`` and each box's kind (``"component"``, ``"moment"``, ``"peak"``): morphology ``morph``
    with a ``kernel`` (in 32x32-grid pixels), connected components scored by ``score``, the
    ``union_box``, NMS at ``nms_iou``. With one mask, its ``top_k`` best boxes; with a ladder of
    masks, the best box of each. With ``moment`` > 0, also the map's :func:`moment_box` at that
    many standard deviations; with ``peaks`` > 0, the regions of that many peaks
    (:func:`peak_boxes` at ``peak_shares``); both scored 0: only rescoring ranks them."""
    f = max(m.shape) / GRID
    kernel = kernel if f == 1 else (int(round(kernel * f)) | 1)
    kw = dict(morph=morph, kernel=kernel, score=score, nms_iou=nms_iou, include_union=union_box)
    if len(masks) == 1:
        found = [propose(m.numpy(), masks[0].numpy(), top_k=top_k, **kw)]
    else:
        found = [propose(m.numpy(), k.numpy(), top_k=1, **kw) for k in masks]
    kinds = ["component"] * sum(len(b) for b, _ in found)
    if moment > 0:
        box = moment_box(m.numpy(), moment)
        found.append((box, torch.zeros(len(box))))
        kinds += ["moment"] * len(box)
    if peaks > 0:
        box = peak_boxes(m.numpy(), peaks, tuple(peak_shares))
        found.append((box, torch.zeros(len(box))))
        kinds += ["peak"] * len(box)
    return torch.cat([b for b, _ in found]), torch.cat([s for _, s in found]), kinds
