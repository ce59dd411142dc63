"""Reading CIFAR-10 stored as JPEG files in an ImageFolder layout (``split/class/*.jpg``).

The source may be the extracted folder or the ``.tar.gz`` itself; either way the
images come back as one ``uint8`` array ``[N, 32, 32, 3]`` with labels ``[N]``.
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..models.wrn import CIFAR10_CLASSES

_EXTS = (".jpg", ".jpeg", ".png")


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("RGB"))
    if arr.shape != (32, 32, 3):
        raise ValueError(f"expected a 32x32 CIFAR image, got {arr.shape}")
    return arr


def _split_and_class(parts: tuple[str, ...], split: str) -> str | None:
    """Class name of a member path ``.../split/class/file``, or None if not in ``split``."""
    if len(parts) >= 3 and parts[-3] == split and parts[-2] in CIFAR10_CLASSES:
        return parts[-2]
    return None


def load_cifar10(source: str | Path, split: str = "test",
                 limit_per_class: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load one split of CIFAR-10 from a folder or a ``.tar.gz``.

    Parameters
    ----------
    source : str or Path
        A folder holding ``<split>/<class>/*.jpg`` (possibly one level deeper) or a tar
        archive of such a folder.
    split : {"train", "test"}
    limit_per_class : int, optional
        Keep at most this many images per class (in sorted file order).

    Returns
    -------
    images : ndarray, uint8, shape [N, 32, 32, 3]
    labels : ndarray, int64, shape [N]
    names : list of str
        Member or file name of each image, sorted, for reproducibility.
    """
    source = Path(source)
    items: list[tuple[str, str, bytes | Path]] = []
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            if path.suffix.lower() in _EXTS:
                cls = _split_and_class(path.relative_to(source).parts, split)
                if cls is not None:
                    items.append((str(path.relative_to(source)), cls, path))
    elif tarfile.is_tarfile(source):
        with tarfile.open(source) as tar:
            for member in tar:
                if member.isfile() and Path(member.name).suffix.lower() in _EXTS:
                    cls = _split_and_class(Path(member.name).parts, split)
                    if cls is not None:
                        items.append((member.name, cls, tar.extractfile(member).read()))
        items.sort(key=lambda t: t[0])
    else:
        raise FileNotFoundError(f"no CIFAR-10 folder or tar archive at {source}")
    if limit_per_class is not None:
        counts: dict[str, int] = {}
        kept = []
        for item in items:
            counts[item[1]] = counts.get(item[1], 0) + 1
            if counts[item[1]] <= limit_per_class:
                kept.append(item)
        items = kept
    if not items:
        raise FileNotFoundError(f"no images of split {split!r} found in {source}")
    images = np.stack([
        _decode(data if isinstance(data, bytes) else data.read_bytes()) for _, _, data in items
    ])
    labels = np.array([CIFAR10_CLASSES.index(c) for _, c, _ in items], dtype=np.int64)
    return images, labels, [name for name, _, _ in items]
