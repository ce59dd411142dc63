"""Baselines scored beside gradloc by the same metrics: fixed boxes, CAM and Grad-CAM as
published, and selective search as a class-agnostic proposal anchor.

Every function returns what :mod:`gradloc.evaluation.evaluate` scores: one
:class:`~gradloc.discovery.results.Prediction` per annotated image (None when unreadable), boxes
in original pixels, with maps and peaks where the method has them.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.annotations import AnnotatedSet
from ..discovery.results import Prediction
from ..models.runtime import DEFAULT_MAX_PIXELS, Runtime

CENTRED_AREAS = (0.25, 0.5, 0.75)
CAM_BOX_FRACTION = 0.2     # the CAM paper: the region above 20% of the map's maximum
CAM_BOX_MAX_SIDE = 1024    # maps are boxed at image resolution, capped at this longer side
SELECTIVE_SEARCH_BOXES = 100
SELECTIVE_SEARCH_SIDE = (224, 500)  # images are resized to a longer side in this range first


# -- fixed boxes ------------------------------------------------------------------------

def centred_box(width: int, height: int, area: float) -> Tensor:
    """The box of ``area`` (fraction of the image) centred, with the image's aspect ratio, ``[1, 4]``."""
    s = math.sqrt(area)
    return torch.tensor([[width * (1 - s) / 2, height * (1 - s) / 2,
                          width * (1 + s) / 2, height * (1 + s) / 2]])


def baseline_centred(ds: AnnotatedSet, area: float) -> list:
    """One centred box of ``area`` per class; its centre as the pointing-game point."""
    return [Prediction({c: centred_box(im.width, im.height, area) for c in im.classes()},
                       {c: torch.ones(1) for c in im.classes()},
                       peaks={c: (im.width / 2, im.height / 2) for c in im.classes()}) for im in ds.images]


def baseline_whole_image(ds: AnnotatedSet) -> list:
    """The whole image as the box."""
    return baseline_centred(ds, 1.0)


def baseline_random(ds: AnnotatedSet, seed: int = 0, k: int = 10) -> list:
    """``k`` random boxes per class: corners drawn uniformly and sorted (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for im in ds.images:
        boxes = {}
        for c in im.classes():
            xs = torch.rand(k, 2, generator=gen).sort(1).values * im.width
            ys = torch.rand(k, 2, generator=gen).sort(1).values * im.height
            boxes[c] = torch.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], 1)
        out.append(Prediction(boxes, {c: 1 - torch.arange(k) / k for c in boxes}))
    return out


# -- CAM and Grad-CAM, as published -----------------------------------------------------

def upsample_map(cam: Tensor, size: tuple[int, int], max_side: int = CAM_BOX_MAX_SIDE) -> np.ndarray:
    """A low-resolution map ``[h, w]`` -> bilinear upsampling to the image ``size`` (h, w),
    or to the same aspect at ``max_side`` for larger images, ``float32 [H', W']``."""
    f = min(1.0, max_side / max(size))
    out = (max(1, round(size[0] * f)), max(1, round(size[1] * f)))
    return F.interpolate(cam[None, None].float(), size=out, mode="bilinear", align_corners=False)[0, 0].numpy()


def cam_box(cam_image: np.ndarray, size: tuple[int, int], fraction: float = CAM_BOX_FRACTION) -> Tensor:
    """The CAM paper's box (Zhou et al. 2016): the bounding box of the largest 8-connected
    region of ``cam_image >= fraction * max``, ``[1, 4]`` xyxy in pixels of an image of ``size``
    (h, w), for a map ``[H', W']`` at (or, above :data:`CAM_BOX_MAX_SIDE`, scaled from) that size."""
    kept = (cam_image >= fraction * cam_image.max()).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(kept, connectivity=8)
    x, y, w, h = stats[1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])), :4] if n > 1 else (0, 0, *kept.shape[::-1])
    sx, sy = size[1] / kept.shape[1], size[0] / kept.shape[0]
    return torch.tensor([[x * sx, y * sy, (x + w) * sx, (y + h) * sy]], dtype=torch.float32)


REQUEST_K = {"predicted": 1, "top3": 3}  # classes asked of each image when GT is not known; "all": every one


def predict_cam(runtime: Runtime, ds: AnnotatedSet, images_dir: str | Path, method: str = "gradcam",
                layer: str = "relu", workers: int = 0, progress: bool = True,
                request: str = "gt") -> tuple[list, list[dict]]:
    """Grad-CAM or CAM (``method``) of the runtime's classifier at its input (its spec's side and
    normalisation; the shipped WRN's 32x32) for each ground-truth class of each
    image (``request`` ``gt``), or for the model's own ``predicted`` / ``top3`` / ``all``
    classes, boxed by :func:`cam_box` at image resolution. ``maps`` holds the map at the layer's
    resolution (MaxBoxAccV2 resizes it as its protocol says); ``peaks`` the maximum of the
    upsampled map. Returns (predictions, skipped files)."""
    from ..engines.local import Batching, run_steps, skipped_files
    from ..attribution.saliency import make_method

    model, spec, device = runtime.model, runtime.spec, runtime.device
    cam_method = make_method(method, model, spec.activation, layer=layer)
    files = [Path(images_dir) / im.file for im in ds.images]

    def step(x_uint8, sizes, asked, work) -> list[dict]:
        x = spec.normalize(x_uint8.to(device))
        if request != "gt":
            with torch.no_grad():
                logits = model(x)
                asked = logits.topk(min(REQUEST_K.get(request, logits.shape[1]), logits.shape[1]), 1).indices.tolist()
        row_image = [j for j, cs in enumerate(asked) for _ in cs]
        row_class = [c for cs in asked for c in cs]
        maps, logits = cam_method.feature_maps(x[row_image], torch.tensor(row_class, device=device))
        maps, probs = maps.cpu(), spec.probabilities(logits.float()).cpu()
        out: list = [None] * len(sizes)
        for r, (j, c) in enumerate(zip(row_image, row_class)):
            size = sizes[j]
            p = out[j] = out[j] or Prediction({}, {}, probs[r], {}, {})
            full = upsample_map(maps[r], size)
            p.boxes[c], p.scores[c], p.maps[c] = cam_box(full, size), probs[r, c:c + 1], maps[r]
            gy, gx = np.unravel_index(int(np.argmax(full)), full.shape)
            p.peaks[c] = ((gx + 0.5) * size[1] / full.shape[1], (gy + 0.5) * size[0] / full.shape[0])
        return out

    preds: list = [None] * len(files)
    skipped: list[dict] = []
    gt = (lambda i: ds.images[i].classes()) if request == "gt" else None
    batching = Batching(runtime.batch_size, runtime.max_pixels, spec.input_size)
    for done, bad in run_steps(files, step, batching, gt, workers, method, progress):
        skipped += skipped_files(files, bad)
        for i, _, _, p in done:
            preds[i] = p
    return preds, skipped


# -- selective search -------------------------------------------------------------------

def has_selective_search() -> bool:
    """Whether OpenCV's contrib module (``cv2.ximgproc``) with selective search is installed."""
    return hasattr(cv2, "ximgproc") and hasattr(cv2.ximgproc, "segmentation")


def selective_search(rgb: np.ndarray, max_boxes: int = SELECTIVE_SEARCH_BOXES,
                     side: tuple[int, int] = SELECTIVE_SEARCH_SIDE) -> Tensor:
    """Class-agnostic proposals of selective search, fast mode (Uijlings et al. 2013; OpenCV),
    for ``uint8 [H, W, 3]`` RGB -> ``[K, 4]`` xyxy in its pixels, in the order OpenCV ranks them.

    The image is first resized so that its longer side lies in ``side``: segmentation's scale
    parameters assume images of a few hundred pixels, and the cost grows with the area.
    """
    h, w = rgb.shape[:2]
    f = min(max(1.0, side[0] / max(h, w)), side[1] / max(h, w))
    small = cv2.resize(rgb[:, :, ::-1], (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(small)
    ss.switchToSelectiveSearchFast()
    rects = ss.process()[:max_boxes].astype(np.float32)
    if not len(rects):
        return torch.zeros(0, 4)
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], 1) / np.float32(f)
    return torch.from_numpy(boxes).clamp(min=0).minimum(torch.tensor([w, h, w, h], dtype=torch.float32))


def predict_selective_search(ds: AnnotatedSet, images_dir: str | Path, max_boxes: int = SELECTIVE_SEARCH_BOXES,
                             max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = True) -> tuple[list, list[dict]]:
    """Selective search's boxes for every image, the same list for each of its classes, ranked
    by OpenCV's order (scores 1, 1 - 1/K, ...). Returns (predictions, skipped files)."""
    from tqdm import tqdm

    from ..data.preprocess import ImageError, to_rgb_tensor

    preds: list = []
    skipped: list[dict] = []
    for im in tqdm(ds.images, unit="img", desc="selective search", disable=None if progress else True):
        try:
            rgb = to_rgb_tensor(Path(images_dir) / im.file, max_pixels).permute(1, 2, 0).numpy()
        except ImageError as exc:
            preds.append(None)
            skipped.append({"file": str(Path(images_dir) / im.file), "reason": str(exc)})
            continue
        boxes = selective_search(np.ascontiguousarray(rgb), max_boxes)
        scores = 1 - torch.arange(len(boxes)) / max(1, len(boxes))
        preds.append(Prediction({c: boxes for c in im.classes()}, {c: scores for c in im.classes()}))
    return preds, skipped
