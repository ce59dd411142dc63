"""Panels like the original experiment's: the boxes drawn on the image, shown large, beside the
32x32 input, the saliency heatmap and the kept pixels in black."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from torch import Tensor

from .models.wrn import CIFAR10_CLASSES

COLORS = [(0, 200, 0), (0, 140, 255), (255, 80, 0), (200, 0, 200), (0, 200, 200)]  # BGR


def heatmap(saliency: Tensor | np.ndarray) -> np.ndarray:
    """Map ``[H, W]`` -> RGB ``uint8 [H, W, 3]`` (inferno colour map, scaled to its max)."""
    s = np.asarray(saliency, dtype=np.float32)
    s = s / s.max() if s.max() > 0 else s
    return cv2.cvtColor(cv2.applyColorMap((s * 255).astype(np.uint8), cv2.COLORMAP_INFERNO),
                        cv2.COLOR_BGR2RGB)


PANEL_MAIN = 640   # the image is drawn with this longer side, whatever its own size
PANEL_TILE = 200   # side of the input, saliency and kept-pixel tiles
HEADER = 34


def _label(img: np.ndarray, text: str, x: int, y: int, colour, scale: float = 0.55) -> None:
    """White text on a filled box of ``colour`` with its top-left corner near (x, y), kept inside."""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = min(max(0, x), max(0, img.shape[1] - tw - 6))
    y = min(max(0, y), max(0, img.shape[0] - th - base - 4))
    cv2.rectangle(img, (x, y), (x + tw + 6, y + th + base + 4), colour, -1)
    cv2.putText(img, text, (x + 3, y + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def draw_proposals(img_rgb: np.ndarray, boxes, labels, scores, side: int = PANEL_MAIN,
                   classes=CIFAR10_CLASSES) -> np.ndarray:
    """The image resized to a longer side of ``side`` with its boxes (xyxy in its own pixels)
    drawn at that size: line widths and labels are in display pixels, so they read the same
    on a thumbnail and on a photograph. The best box is drawn thickest, each labelled."""
    f = side / max(img_rgb.shape[:2])
    size = (max(1, round(img_rgb.shape[1] * f)), max(1, round(img_rgb.shape[0] * f)))
    out = cv2.resize(np.ascontiguousarray(img_rgb), size,
                     interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_NEAREST)
    items = list(zip(boxes.tolist() if isinstance(boxes, Tensor) else boxes, labels.tolist(), scores.tolist()))
    for k, (box, lab, sc) in reversed(list(enumerate(items))):  # the best drawn last, on top
        x0, y0, x1, y1 = (int(round(v * f)) for v in box)
        c = COLORS[k % len(COLORS)][::-1]
        cv2.rectangle(out, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), c, 4 if k == 0 else 2)
        _label(out, f"{k + 1}. {classes[int(lab)]} {sc:.2f}", x0, y0 - 24 if y0 >= 24 else y0 + 2, c)
    return out


def panel(original_rgb: np.ndarray, input_32: Tensor, result: dict, top_n: int | None = None,
          classes=CIFAR10_CLASSES) -> np.ndarray:
    """One image's panel: the image large with its proposals (:func:`draw_proposals`), and
    beside it the 32x32 input, the first class's saliency map and its kept pixels (black, as in
    the original experiment); above, the top class probabilities. ``result`` from the pipeline."""
    x = input_32.permute(1, 2, 0).numpy() if isinstance(input_32, Tensor) else input_32
    maps, masks, cls = result["maps"][0], result["masks"][0], int(result["map_classes"][0])
    kept = np.where(masks.numpy()[..., None], 0, 255).astype(np.uint8).repeat(3, 2)
    main = draw_proposals(original_rgb, result["boxes"][:5], result["labels"][:5], result["scores"][:5],
                          classes=classes)
    probs = result["probs"].float()
    top = probs.argsort(descending=True)[:3].tolist()
    tiles = [(x, f"input {x.shape[1]}x{x.shape[0]}"), (heatmap(maps), f"saliency: {classes[cls]}"),
             (kept, f"kept pixels ({int(masks.sum())})")]
    side_w = PANEL_TILE + 20
    height = max(main.shape[0], len(tiles) * (PANEL_TILE + 28)) + HEADER
    canvas = np.full((height, PANEL_MAIN + side_w + 10, 3), 255, np.uint8)
    canvas[HEADER:HEADER + main.shape[0], :main.shape[1]] = main
    header = "   ".join(f"{classes[c]} {float(probs[c]):.2f}" for c in top)
    cv2.putText(canvas, f"class probabilities: {header}", (6, 23), cv2.FONT_HERSHEY_SIMPLEX, 0.62, (0, 0, 0), 1, cv2.LINE_AA)
    for t, (img, title) in enumerate(tiles):
        y = HEADER + t * (PANEL_TILE + 28)
        x0 = PANEL_MAIN + 20
        cv2.putText(canvas, title, (x0, y + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        h, w = img.shape[:2]
        f = PANEL_TILE / max(h, w)
        shown = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_NEAREST)
        canvas[y + 24:y + 24 + shown.shape[0], x0:x0 + shown.shape[1]] = shown
    return canvas


def save_panel(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if ok:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(buf.tobytes())
        tmp.replace(path)

