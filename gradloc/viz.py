"""Panels like the original experiment's: the 32x32 input, the saliency heatmap, the top-N
pixels in black, and the boxes drawn on the original image."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from torch import Tensor

from .model import CIFAR10_CLASSES

TILE = 160
COLORS = [(0, 200, 0), (0, 140, 255), (255, 80, 0), (200, 0, 200), (0, 200, 200)]  # BGR


def _tile(img_rgb: np.ndarray, title: str, nearest: bool = True) -> np.ndarray:
    h, w = img_rgb.shape[:2]
    scale = TILE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = cv2.resize(img_rgb, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)
    canvas = np.full((TILE + 22, TILE, 3), 255, np.uint8)
    canvas[22:22 + img.shape[0], :img.shape[1]] = img
    cv2.putText(canvas, title, (3, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def heatmap(saliency: Tensor | np.ndarray) -> np.ndarray:
    """Map ``[H, W]`` -> RGB ``uint8 [H, W, 3]`` (inferno colour map, scaled to its max)."""
    s = np.asarray(saliency, dtype=np.float32)
    s = s / s.max() if s.max() > 0 else s
    return cv2.cvtColor(cv2.applyColorMap((s * 255).astype(np.uint8), cv2.COLORMAP_INFERNO),
                        cv2.COLOR_BGR2RGB)


def draw_boxes(img_rgb: np.ndarray, boxes: Tensor, labels: Tensor | None = None,
               scores: Tensor | None = None, color_offset: int = 0) -> np.ndarray:
    """Draw xyxy ``boxes`` ``[K, 4]`` on a copy of ``img_rgb`` (best first, thicker)."""
    out = np.ascontiguousarray(img_rgb).copy()
    thick = max(1, round(max(out.shape[:2]) / 150))
    for k, box in enumerate(boxes.tolist() if isinstance(boxes, Tensor) else boxes):
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        c = COLORS[(k + color_offset) % len(COLORS)][::-1]
        cv2.rectangle(out, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), c, thick * (2 if k == 0 else 1))
        if labels is not None:
            text = CIFAR10_CLASSES[int(labels[k])]
            if scores is not None:
                text += f" {float(scores[k]):.2f}"
            cv2.putText(out, text, (x0 + 2, max(10, y0 + 10 * thick)), cv2.FONT_HERSHEY_SIMPLEX,
                        0.3 * thick, c, max(1, thick // 2), cv2.LINE_AA)
    return out


def panel(original_rgb: np.ndarray, input_32: Tensor, result: dict, top_n: int | None = None) -> np.ndarray:
    """One row of tiles for one image's first class map; ``result`` from the pipeline."""
    x = input_32.permute(1, 2, 0).numpy() if isinstance(input_32, Tensor) else input_32
    maps, masks, cls = result["maps"][0], result["masks"][0], int(result["map_classes"][0])
    kept = np.where(masks.numpy()[..., None], 0, 255).astype(np.uint8).repeat(3, 2)
    p = float(result["probs"][cls])
    tiles = [
        _tile(x, "input 32x32"),
        _tile(heatmap(maps), f"saliency: {CIFAR10_CLASSES[cls]} {p:.2f}"),
        _tile(kept, f"kept pixels ({int(masks.sum())})"),
        _tile(draw_boxes(original_rgb, result["boxes"][:5], result["labels"][:5], result["scores"][:5]),
              "proposals", nearest=False),
    ]
    return np.concatenate(tiles, 1)


def save_panel(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if ok:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(buf.tobytes())
        tmp.replace(path)

