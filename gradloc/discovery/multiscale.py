"""Multi-scale discovery: saliency from overlapping windows, accumulated at full resolution.

Squeezing a large photograph into 32x32 loses small objects. Instead the image is cut into
overlapping windows at several scales (the whole image, halves, thirds, ... with half-window
strides), each resized to 32x32. A forward pass scores every window of every image of a batch
(class probabilities, shared by all classes of an image); only the best-supported windows of
each (image, class) then get gradients, in one batched backward pass. Each of those windows
gives boxes from its own map (the usual threshold, morphology and components on its 32x32
grid), placed back in the image and scored by the window's class probability; and its map,
normalised to its maximum and weighted by that probability, is pasted into a working-resolution
heatmap.

Boxes here are float xyxy in working-grid pixels unless stated.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_SCALES = (1, 2, 3)
AUTO_MIN_SIDE = 160     # multi-scale turns on by itself when the shorter side is at least this (32 px input)
WORK_MAX_SIDE = 256     # working-grid resolution of the accumulated map (longer side)


def window_boxes(height: int, width: int, scales=DEFAULT_SCALES, max_windows: int | None = None) -> Tensor:
    """Windows ``[W, 4]`` (float xyxy) covering an image of ``height`` x ``width``.

    Scale ``s`` uses windows of ``1/s`` of each side at half-window strides, i.e. a
    ``(2s - 1) x (2s - 1)`` grid. Coarse scales come first. ``max_windows`` drops whole
    scales, finest first, so that every kept scale still covers the whole image (only a
    coarsest scale that alone exceeds the cap is cut).
    """
    out: list[list[float]] = []
    for s in sorted(set(int(v) for v in scales)):
        if s < 1:
            raise ValueError(f"scales must be >= 1, got {s}")
        wh, ww = height / s, width / s
        n = 2 * s - 1
        grid = [[(width - ww) * j / max(n - 1, 1), (height - wh) * i / max(n - 1, 1)]
                for i in range(n) for j in range(n)]
        if max_windows and out and len(out) + len(grid) > max_windows:
            break
        out.extend([x0, y0, x0 + ww, y0 + wh] for x0, y0 in grid)
    boxes = torch.tensor(out, dtype=torch.float32)
    return boxes[:max_windows] if max_windows else boxes


def top_windows(probs: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` windows with the highest class probability ``probs [W]``, best first."""
    return torch.argsort(probs, descending=True, stable=True)[:k]


def work_size(height: int, width: int, max_side: int = WORK_MAX_SIDE) -> tuple[int, int]:
    """Working-grid size: the image's own, shrunk so the longer side is at most ``max_side``."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def accumulate(maps: Tensor, weights: Tensor, boxes: Tensor, image_size: tuple[int, int],
               grid_size: tuple[int, int]) -> Tensor:
    """Paste window maps into one map on the working grid.

    Parameters
    ----------
    maps : Tensor [W, h, w]
        One saliency map per window (any non-negative scale).
    weights : Tensor [W]
        The window's support for the class (its class probability).
    boxes : Tensor [W, 4]
        Windows in original-image pixels, xyxy.
    image_size, grid_size : (height, width)
        Original image size and the working grid's.

    Returns
    -------
    Tensor [gh, gw]: the mean over covering windows of weight x map / max(map).
    """
    gh, gw = grid_size
    sy, sx = gh / image_size[0], gw / image_size[1]
    acc = torch.zeros(gh, gw)
    cover = torch.zeros(gh, gw)
    peak = maps.flatten(1).amax(1).clamp(min=1e-12)
    for m, wgt, pk, (x0, y0, x1, y1) in zip(maps, weights.tolist(), peak, boxes.tolist()):
        r0, c0 = int(round(y0 * sy)), int(round(x0 * sx))
        r1, c1 = max(r0 + 1, int(round(y1 * sy))), max(c0 + 1, int(round(x1 * sx)))
        r1, c1 = min(r1, gh), min(c1, gw)
        patch = F.interpolate(m[None, None], size=(r1 - r0, c1 - c0), mode="bilinear", align_corners=False)[0, 0]
        acc[r0:r1, c0:c1] += wgt * patch / pk
        cover[r0:r1, c0:c1] += 1
    return acc / cover.clamp(min=1)


def parse_scales(scales) -> tuple[int, ...] | str:
    """"auto" / "off" / "1,2,3" (or a tuple) -> "auto", "off" or a tuple of ints."""
    if scales is None or scales in ("auto", "off"):
        return scales or "auto"
    if isinstance(scales, str):
        scales = [v for v in scales.split(",") if v.strip()]
    return tuple(int(v) for v in scales)


def wants_multiscale(size: tuple[int, int], scales, input_size: int = 32) -> bool:
    """Whether an image of ``size`` (h, w) takes the multi-scale path: "auto" turns it on
    when the shorter side is at least AUTO_MIN_SIDE (for a model of ``input_size``, that many
    times its input over 32: five model inputs); explicit scales other than (1,) always."""
    s = parse_scales(scales)
    if s == "off":
        return False
    if s == "auto":
        return min(size) >= AUTO_MIN_SIDE * input_size / 32
    return s != (1,)


def resolve_scales(scales, size: tuple[int, int]) -> tuple[int, ...]:
    """Explicit scales, or for "auto" the defaults plus a finer scale for very large images."""
    s = parse_scales(scales)
    if s in ("auto", "off"):
        return DEFAULT_SCALES + ((4,) if min(size) >= 2 * AUTO_MIN_SIDE else ())
    return s
