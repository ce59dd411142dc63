"""Which classes to localise in each image: class specs parsed once, into one request per image."""
from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
from torch import Tensor

from .wrn import CIFAR10_CLASSES

ClassSpec = Union[None, int, str, Sequence[Union[int, str]]]


def class_index(c: int | str, names: Sequence[str] = CIFAR10_CLASSES) -> int:
    """A class name (case-insensitive) or index of the classifier's ``names`` -> index, with a
    clear error."""
    if isinstance(c, str) and not c.strip().lstrip("-").isdigit():
        lowered = [n.lower() for n in names]
        if c.strip().lower() not in lowered:
            shown = ", ".join(names[:20]) + (f", ... ({len(names)} classes)" if len(names) > 20 else "")
            raise ValueError(f"unknown class {c!r}; classes are {shown}")
        return lowered.index(c.strip().lower())
    i = int(c)
    if not 0 <= i < len(names):
        raise ValueError(f"class index {i} out of range 0..{len(names) - 1}")
    return i


def parse_class_spec(spec: ClassSpec, names: Sequence[str] = CIFAR10_CLASSES) -> tuple[str, list[int] | int | None]:
    """One image's class request -> ("predicted", None) | ("top", k) | ("list", [idx...]), for
    a classifier of class ``names``.

    Accepts None (the predicted class), "all" (every class, most probable first),
    "top3"/"top-3", a name, an index, or a list. A list names classes the picture is said to
    hold; top-k are competing guesses (the class contrast applies to lists only).
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "predicted", "pred")):
        return "predicted", None
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s == "all":
            return "top", len(names)
        if s.startswith("top") and s not in [n.lower() for n in names]:
            k = s[3:].lstrip("-:") or "1"
            if not k.isdigit() or int(k) < 1:
                raise ValueError(f"unknown class request {spec!r}: use topK with K a number from 1 to "
                                 f"{len(names)}, 'all', or class names")
            return "top", min(int(k), len(names))
        if "," in s:
            return "list", _nonempty([class_index(p, names) for p in s.split(",") if p.strip()], spec)
        return "list", [class_index(s, names)]
    if isinstance(spec, int) and not isinstance(spec, bool):
        return "list", [class_index(spec, names)]
    if not isinstance(spec, (list, tuple)) or not all(
            isinstance(c, str) or (isinstance(c, int) and not isinstance(c, bool)) for c in spec):
        raise ValueError(f"class request {spec!r} is not a class name, an integer index, a list of them, "
                         "'all' or 'topK'")
    return "list", _nonempty([class_index(c, names) for c in spec], spec)


def _nonempty(classes: list[int], spec) -> list[int]:
    if not classes:
        raise ValueError(f"no class named in {spec!r}")
    return classes


def class_rows(specs: Sequence[tuple[str, object]], probe: Callable[[], Tensor]) -> tuple[Tensor, Tensor | None]:
    """Expand images into (image, class) rows: ``(row_image [R], row_class [R])``.

    ``specs``: :func:`parse_class_spec` of each image. ``probe()`` gives the images' logits
    ``[B, C]`` and is called only when some image asks for its predicted or top-k classes.
    ``row_class`` is None when every image wants its predicted class, which the saliency
    method then picks from its own forward pass.
    """
    if all(kind == "predicted" for kind, _ in specs):
        return torch.arange(len(specs)), None
    logits = probe() if any(kind in ("predicted", "top") for kind, _ in specs) else None
    row_image, row_class = [], []
    for i, (kind, arg) in enumerate(specs):
        if kind == "list":
            chosen = list(dict.fromkeys(arg))
        else:
            k = 1 if kind == "predicted" else int(arg)
            chosen = logits[i].topk(k).indices.tolist()
        row_image += [i] * len(chosen)
        row_class += chosen
    return torch.tensor(row_image), torch.tensor(row_class)
