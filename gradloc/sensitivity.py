"""Data-set-level sensitivity: the mean input gradient of each class over a folder of images.

For every image the network sees (its 32x32 view), |d f_c / d x| of the class-masked output f_c
is taken for its predicted class (or a class given for all images), reduced over colour channels
by the maximum, and added to that class's running sum; memory is one 32x32 map per class
whatever the folder's size. The mean per class shows where in the frame the network's decision
for that class is sensitive, over the whole folder: a description of the model (which
positions it reads, a centre bias, edge artefacts), not of where objects are in the data.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from .models.classes import class_index
from .models.classifier import CIFAR10, ClassifierSpec
from .data.io import atomic_write_text, find_images
from .data.preprocess import DEFAULT_MAX_PIXELS
from .engines.local import Batching, run_steps, skipped_files
from .attribution.saliency import make_method


@dataclass
class Sensitivity:
    """Per class: the summed maps ``sums`` ``float64 [C, S, S]`` (S: the model's input side) and
    image ``counts`` ``[C]``; ``names``: the classifier's class names."""

    sums: np.ndarray
    counts: np.ndarray
    skipped: list[dict] = field(default_factory=list)
    names: tuple = CIFAR10.classes

    @property
    def means(self) -> np.ndarray:
        """The mean map per class, ``float32 [C, S, S]`` (zeros for a class with no image)."""
        return (self.sums / np.maximum(self.counts, 1)[:, None, None]).astype(np.float32)


def class_sensitivity(model: nn.Module, paths: Iterable[str | Path], cls: str | int | None = None,
                output: str = "probs", batch_size: int = 64, workers: int = 0, device: str = "cpu",
                max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = True,
                spec: ClassifierSpec = CIFAR10) -> Sensitivity:
    """The mean |d f_c / d x| per class over every image under ``paths``, streamed in batches.

    Parameters
    ----------
    model : nn.Module
        The classifier (eval mode, frozen).
    paths : image files and folders (searched recursively, as ``gradloc localize`` does).
    cls : None for each image's predicted class, or one class (name or index) for all.
    output : which output the class mask multiplies: ``probs`` (default), ``logits``, ``log_probs``.
    spec : the classifier's class names, input side and normalisation (default: the shipped WRN's).
    """
    files, skipped = find_images(paths)
    target = None if cls is None else class_index(cls, spec.classes)
    method = make_method("gradient", model.eval().requires_grad_(False).to(device), spec.activation, output=output,
                         reduce="max")
    side = spec.input_size
    sums = np.zeros((len(spec.classes), side, side), np.float64)
    counts = np.zeros(len(spec.classes), np.int64)

    def step(x_uint8, sizes, specs, work) -> list[int]:  # adds the batch's maps, returns each image's class
        x = spec.normalize(x_uint8.to(device))
        targets = (lambda z: z.argmax(1)) if target is None else torch.full((len(x),), target, device=device)
        maps, logits = method(x, targets)
        classes = logits.argmax(1).cpu().numpy() if target is None else np.full(len(x), target)
        np.add.at(sums, classes, maps.detach().cpu().double().numpy())
        return classes.tolist()

    for done, bad in run_steps(files, step, Batching(batch_size, max_pixels, side), None, workers, "sensitivity",
                               progress):
        skipped += skipped_files(files, bad)
        for _, _, _, c in done:
            counts[c] += 1
    return Sensitivity(sums, counts, skipped, tuple(spec.classes))


def plot_grid(result: Sensitivity, path: Path) -> None:
    """The mean maps in one figure, each scaled to its own maximum, with its count: every class
    of a classifier of up to ten classes, else the 20 classes with most images."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shown = list(range(len(result.names))) if len(result.names) <= 10 else \
        [int(c) for c in np.argsort(-result.counts, kind="stable")[:20] if result.counts[c]]
    rows = max(1, -(-len(shown) // 5))
    fig, axes = plt.subplots(rows, 5, figsize=(12, 2.7 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for c, ax in zip(shown, axes.ravel()):
        ax.set_title(f"{result.names[c]} (n={int(result.counts[c])})", fontsize=10)
        if result.counts[c]:
            ax.imshow(result.means[c], cmap="inferno", interpolation="nearest")
    fig.suptitle("mean |d f_c / d x| over the folder, per class (each map scaled to its maximum)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save(result: Sensitivity, out: Path, settings: dict | None = None) -> None:
    """``out/sensitivity.npy`` (``[C, S, S]``), per class ``<class>.npy`` and ``<class>.png``
    (for classes with images), ``sensitivity.png`` (the grid) and ``sensitivity.json`` (counts,
    settings, skipped files)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out.mkdir(parents=True, exist_ok=True)
    means = result.means
    np.save(out / "sensitivity.npy", means)
    for c, name in enumerate(result.names):
        if result.counts[c]:
            np.save(out / f"{name}.npy", means[c])
            plt.imsave(out / f"{name}.png", np.kron(means[c], np.ones((8, 8))), cmap="inferno")
    plot_grid(result, out / "sensitivity.png")
    atomic_write_text(out / "sensitivity.json", json.dumps({
        "counts": {n: int(k) for n, k in zip(result.names, result.counts)},
        "settings": settings or {}, "skipped": result.skipped}, indent=1, ensure_ascii=True))
