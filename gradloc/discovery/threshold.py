"""Saliency map -> boolean mask of the most influential pixels.

All functions take maps ``[B, H, W]`` (float, >= 0) and return masks ``[B, H, W]`` (bool).
Pixels with zero saliency are never kept: they have no influence to speak of.
"""
from __future__ import annotations

import numpy as np
import torch
from skimage.filters import threshold_otsu
from torch import Tensor

THRESHOLDS = ("top-n", "mass", "fraction", "otsu", "percentile")
DEFAULT_MASS_SHARE = 0.5  # chosen by a post-processing sweep (BENCHMARKS.md, History)


def top_n(maps: Tensor, n: int = 100) -> Tensor:
    """Keep the ``n`` largest pixels of each map.

    Ties are broken deterministically by raster order (the earlier pixel wins), so
    exactly ``min(n, H*W)`` pixels are kept when the map has that many non-zero values.
    """
    b, h, w = maps.shape
    n = max(0, min(int(n), h * w))
    flat = maps.reshape(b, -1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :n]
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, True)
    return (mask & (flat > 0)).view(b, h, w)


def mass(maps: Tensor, share: float = DEFAULT_MASS_SHARE) -> Tensor:
    """Keep the fewest, largest pixels that together carry ``share`` of each map's total saliency.

    Unlike top-N this adapts to the object: a map concentrated on a small object keeps few
    pixels, a map spread over a frame-filling object keeps many. Ties by raster order.
    """
    b, h, w = maps.shape
    flat = maps.reshape(b, -1).float()
    values, order = torch.sort(flat, dim=1, descending=True, stable=True)
    before = values.cumsum(1) - values  # saliency of the pixels ranked above each one
    needed = before < share * flat.sum(1, keepdim=True)
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, needed)
    return (mask & (flat > 0)).view(b, h, w)


def fraction_of_max(maps: Tensor, fraction: float = 0.5) -> Tensor:
    """Keep pixels at or above ``fraction`` of their map's maximum (the CAM paper uses 0.2)."""
    peak = maps.amax((1, 2), keepdim=True)
    return (maps >= fraction * peak) & (maps > 0)


def percentile(maps: Tensor, q: float = 90.0) -> Tensor:
    """Keep pixels strictly above the ``q``-th percentile of their map."""
    cut = torch.quantile(maps.reshape(maps.shape[0], -1).float(), q / 100.0, dim=1)
    return (maps > cut.view(-1, 1, 1)) & (maps > 0)


def otsu(maps: Tensor) -> Tensor:
    """Keep pixels above each map's Otsu threshold (scikit-image); a flat map keeps nothing."""
    out = torch.zeros_like(maps, dtype=torch.bool)
    for i, m in enumerate(maps.detach().cpu().numpy()):
        if np.ptp(m) > 0:
            out[i] = torch.from_numpy(m > threshold_otsu(m))
    return out & (maps > 0)


def threshold(maps: Tensor, method: str = "top-n", value: float | None = None) -> Tensor:
    """Dispatch by name: ``top-n`` (value N, default 100), ``mass`` (share of the total
    saliency, default DEFAULT_MASS_SHARE), ``fraction`` (of the max, default 0.5), ``percentile`` (default 90)
    or ``otsu`` (no value)."""
    if method == "top-n":
        return top_n(maps, int(100 if value is None else value))
    if method == "mass":
        return mass(maps, DEFAULT_MASS_SHARE if value is None else value)
    if method == "fraction":
        return fraction_of_max(maps, 0.5 if value is None else value)
    if method == "percentile":
        return percentile(maps, 90.0 if value is None else value)
    if method == "otsu":
        return otsu(maps)
    raise ValueError(f"unknown threshold {method!r}; choose from {', '.join(THRESHOLDS)}")
