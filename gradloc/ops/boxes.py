"""Box geometry, the one place boxes change coordinates: pad, scale to another image size,
clip, place a window's boxes in its image, and cut or blank boxes out of images.

Boxes are float ``(x0, y0, x1, y1)`` in pixel-edge coordinates ``[K, 4]``: a component covering
grid columns 3..5 spans ``x0 = 3`` to ``x1 = 6``. Images are ``uint8 [3, H, W]``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import clip_boxes_to_image


def pad_boxes(boxes: Tensor, fraction: float) -> Tensor:
    """Grow boxes ``[K, 4]`` by ``fraction`` of their width/height on each side."""
    if fraction == 0 or boxes.numel() == 0:
        return boxes
    wh = (boxes[:, 2:] - boxes[:, :2]) * fraction
    return torch.cat([boxes[:, :2] - wh, boxes[:, 2:] + wh], 1)


def scale_boxes(boxes: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Map xyxy boxes ``[K, 4]`` from an image of ``(h, w)`` = ``from_size`` to ``to_size``,
    scaling each axis on its own, then clip to the target image."""
    sy = to_size[0] / from_size[0]
    sx = to_size[1] / from_size[1]
    scale = torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype, device=boxes.device)
    return clip_boxes_to_image(boxes * scale, to_size)


def whole_box(image: Tensor) -> Tensor:
    """The box ``[1, 4]`` of a whole image ``[..., H, W]``."""
    h, w = image.shape[-2:]
    return torch.tensor([[0.0, 0.0, float(w), float(h)]])


def clip_nonempty(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clip xyxy boxes ``[K, 4]`` to an image of ``(h, w)`` = ``size``, keeping at least one
    pixel of width and height, so every box can be cropped."""
    h, w = size
    x0 = boxes[:, 0].clamp(0, w - 1)
    y0 = boxes[:, 1].clamp(0, h - 1)
    x1 = torch.maximum(boxes[:, 2].clamp(max=w), x0 + 1)
    y1 = torch.maximum(boxes[:, 3].clamp(max=h), y0 + 1)
    return torch.stack([x0, y0, x1, y1], 1)


def place_boxes(boxes: Tensor, grid: tuple[int, int], frame: Tensor, clip: bool = False) -> Tensor:
    """Boxes ``[K, 4]`` (xyxy on a map of ``grid`` ``(h, w)`` cells) -> the pixels of the image the
    map covers as ``frame`` ``[4]`` (xyxy), scaling each axis on its own; ``clip``: clipped to
    the frame."""
    x0, y0, x1, y1 = frame.tolist()
    scale = torch.tensor([(x1 - x0) / grid[1], (y1 - y0) / grid[0]] * 2, dtype=boxes.dtype)
    out = boxes * scale + torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
    if clip:
        out = torch.stack([out[:, 0].clamp(x0, x1), out[:, 1].clamp(y0, y1),
                           out[:, 2].clamp(x0, x1), out[:, 3].clamp(y0, y1)], 1)
    return out


def crop_windows(image: Tensor, boxes: Tensor, size: int = 32) -> Tensor:
    """Crop windows from ``uint8 [3, H, W]`` and resize each to ``size`` (antialiased).

    Returns ``uint8 [W, 3, size, size]``.
    """
    crops = []
    for x0, y0, x1, y1 in boxes.tolist():
        r0, r1 = int(math.floor(y0)), max(int(math.floor(y0)) + 1, int(math.ceil(y1)))
        c0, c1 = int(math.floor(x0)), max(int(math.floor(x0)) + 1, int(math.ceil(x1)))
        crops.append(resize_uint8(image[:, r0:r1, c0:c1], (size, size)))
    return torch.stack(crops)


def resize_uint8(image: Tensor, size: tuple[int, int]) -> Tensor:
    """The one resize of the pipeline's images: ``uint8 [..., 3, H, W]`` -> ``[..., 3, h, w]``,
    bilinear with antialiasing (a shrunk photograph keeps its detail as an average, not
    aliased), rounded back to uint8."""
    x = image if image.ndim == 4 else image[None]
    out = F.interpolate(x.float(), size=tuple(size), mode="bilinear", antialias=True,
                        align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
    return out if image.ndim == 4 else out[0]


def blank_boxes(image: Tensor, boxes: Tensor, fill: Sequence[float]) -> Tensor:
    """Copies of ``uint8 [3, H, W]``, one per box ``[K, 4]`` (float xyxy, pixel edges), with
    the box filled by the colour ``fill`` (3 values, 0-255). A pixel the box covers in part is
    blended by the covered fraction, so a box keeps its exact size on a coarse grid.

    Returns ``uint8 [K, 3, H, W]``.
    """
    h, w = image.shape[-2:]
    b = boxes.float()

    def covered(lo: Tensor, hi: Tensor, n: int) -> Tensor:  # [K, n]: share of pixel [j, j+1) in [lo, hi)
        j = torch.arange(n, dtype=torch.float32)
        return (torch.minimum(hi[:, None], j + 1) - torch.maximum(lo[:, None], j)).clamp(0, 1)

    cover = (covered(b[:, 1], b[:, 3], h)[:, :, None] * covered(b[:, 0], b[:, 2], w)[:, None, :])[:, None]
    colour = torch.tensor(list(fill), dtype=torch.float32).view(1, 3, 1, 1)
    out = image.float()[None] * (1 - cover) + colour * cover
    return out.round_().clamp_(0, 255).to(torch.uint8)
