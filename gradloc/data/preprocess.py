"""Any image -> RGB uint8 -> normalised 32x32 tensor, remembering the original size.

Accepted inputs: a path, a PIL image, an ``HxW`` or ``HxWxC`` uint8/uint16 array, or a
``CxHxW`` tensor (uint8, or float in [0, 1]). Every path goes through :func:`open_image`,
which turns unreadable files into :class:`ImageError` with a one-line reason.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from ..ops.boxes import resize_uint8
from ..models.runtime import DEFAULT_MAX_PIXELS

ImageInput = Union[str, Path, Image.Image, np.ndarray, Tensor]

INPUT_SIZE = 32

# Raster formats Pillow decodes itself. Others are refused before any decoder runs: some
# (EPS, PDF-like formats) hand the file to external programs such as Ghostscript.
READ_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "PPM", "TGA", "ICO",
                "JPEG2000", "PCX", "SGI", "QOI", "AVIF", "HEIF")
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _read_formats() -> list[str]:
    Image.init()
    return [f for f in READ_FORMATS if f in Image.OPEN]


def _to_uint8(arr: np.ndarray, top: float) -> np.ndarray:
    """Scale numbers in [0, ``top``] to uint8; NaN counts as 0, +inf as ``top``."""
    arr = np.nan_to_num(np.asarray(arr, np.float64), nan=0.0, posinf=top, neginf=0.0)
    return np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _float_top(arr: np.ndarray) -> float:
    """The range float data is scaled from: [0, 1] when it fits, else its finite maximum."""
    finite = arr[np.isfinite(arr)]
    return max(float(finite.max()), 1.0) if finite.size else 1.0


def _read_with_opencv(path: Path, max_pixels: int) -> Image.Image:
    """TIFFs Pillow cannot decode (float RGB, 32-bit samples), through OpenCV's libtiff."""
    import cv2
    arr = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.size == 0:
        raise ImageError("not an image file (unrecognised format)")
    if arr.shape[0] * arr.shape[1] > max_pixels:
        raise ImageError(f"image too large: {arr.shape[1]}x{arr.shape[0]} pixels (limit {max_pixels:,}; see --max-pixels)")
    if arr.ndim == 3:
        arr = arr[:, :, 2::-1] if arr.shape[2] >= 3 else arr[:, :, 0]
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.uint16:
        out = _to_uint8(arr, 65535.0)
    elif np.issubdtype(arr.dtype, np.floating):
        out = _to_uint8(arr, _float_top(arr))
    else:
        out = _to_uint8(arr, max(float(arr.max()), 1.0))
    return Image.fromarray(np.ascontiguousarray(out)).convert("RGB")


class ImageError(ValueError):
    """An input cannot be turned into an image; the message is a one-line reason."""


def _flatten_alpha(im: Image.Image) -> Image.Image:
    """Composite transparent images onto white, as a viewer shows them."""
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def pil_to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: grey, palette, alpha, CMYK, 16-bit and float."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        # 16-bit data scales by 257; 32-bit int/float data by its own range (NaN as 0).
        top = 65535.0 if im.mode.startswith("I;16") else _float_top(arr)
        if im.mode == "I" and arr.max() <= 65535 and arr.min() >= 0:
            top = 65535.0 if arr.max() > 255 else 255.0
        return Image.fromarray(_to_uint8(arr, top), "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        return _flatten_alpha(im)
    return im.convert("RGB") if im.mode != "RGB" else im


def open_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file to RGB, upright (EXIF orientation applied).

    Raises
    ------
    ImageError
        With a short reason: not a file, empty, not an image, truncated or corrupt,
        or more than ``max_pixels`` pixels (checked from the header, before decoding).
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise ImageError("not a file" if path.exists() else "file not found")
        if path.stat().st_size == 0:
            raise ImageError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns on odd metadata; errors still raise
            try:
                opened = Image.open(path, formats=_read_formats())
            except Image.UnidentifiedImageError:
                with open(path, "rb") as f:
                    if f.read(4) in TIFF_MAGIC:
                        return _read_with_opencv(path, max_pixels)
                raise
            with opened as im:
                w, h = im.size
                if w < 1 or h < 1:
                    raise ImageError(f"image has no pixels ({w}x{h})")
                if w * h > max_pixels:
                    raise ImageError(f"image too large: {w}x{h} = {w * h:,} pixels "
                                     f"(limit {max_pixels:,}; see --max-pixels)")
                im.load()
                im = ImageOps.exif_transpose(im)
                return pil_to_rgb(im)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large (decompression-bomb guard): {exc}") from None
    except Image.UnidentifiedImageError:
        raise ImageError("not an image file, or a format gradloc does not read "
                         "(unrecognised format; it reads JPEG, PNG, GIF, BMP, TIFF, WebP, PPM, ...)") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except (OSError, SyntaxError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageError(f"corrupt or truncated image: {msg}") from None


def to_rgb_tensor(image: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tensor:
    """Any accepted input -> ``uint8`` tensor ``[3, H, W]`` (RGB); an empty one is refused."""
    rgb = _to_rgb_tensor(image, max_pixels)
    if rgb.shape[1] == 0 or rgb.shape[2] == 0:
        raise ImageError(f"image has no pixels ({rgb.shape[2]}x{rgb.shape[1]})")
    return rgb


def _to_rgb_tensor(image: ImageInput, max_pixels: int) -> Tensor:
    if isinstance(image, (str, Path)):
        image = open_image(image, max_pixels)
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ImageError(f"image has no pixels ({image.width}x{image.height})")
        image = np.asarray(pil_to_rgb(image))
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise ImageError(f"expected an HxW or HxWxC array with C in 1, 3, 4; got {arr.shape}")
        if arr.dtype == np.uint16:
            arr = (arr.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
        elif arr.dtype != np.uint8:
            if not np.issubdtype(arr.dtype, np.floating):
                raise ImageError(f"unsupported array dtype {arr.dtype}")
            arr = _to_uint8(arr, 1.0)
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        elif arr.shape[2] == 4:
            arr = np.asarray(_flatten_alpha(Image.fromarray(arr, "RGBA")))
        return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).contiguous()
    if isinstance(image, Tensor):
        t = image.detach().cpu()
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise ImageError(f"expected a CxHxW tensor with C in 1, 3; got {tuple(t.shape)}")
        if t.dtype != torch.uint8:
            if not t.is_floating_point():
                raise ImageError(f"unsupported tensor dtype {t.dtype}")
            t = (torch.nan_to_num(t.float(), 0.0, 1.0, 0.0).clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        return t.expand(3, -1, -1).contiguous()
    raise ImageError(f"unsupported input type {type(image).__name__}")


def resize_to_input(rgb: Tensor, size: int = INPUT_SIZE) -> Tensor:
    """Resize ``uint8 [3, H, W]`` (or a batch) to ``[.., 3, size, size]`` with antialiasing.

    The aspect ratio is not kept: the whole image is squeezed into the square, as the
    network saw CIFAR images, so the box mapping back is a per-axis scale.
    """
    return rgb if rgb.shape[-2:] == (size, size) else resize_uint8(rgb, (size, size))


WORK_INPUT_MAX_SIDE = 768  # the working copy: the image shrunk to at most this longer side


def working_image(rgb: Tensor, max_side: int = WORK_INPUT_MAX_SIDE) -> Tensor:
    """``uint8 [3, H, W]`` shrunk (antialiased) so its longer side is at most ``max_side``."""
    h, w = rgb.shape[-2:]
    if max(h, w) <= max_side:
        return rgb
    scale = max_side / max(h, w)
    return resize_uint8(rgb, (max(1, round(h * scale)), max(1, round(w * scale))))


def prepare(image: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS, keep_work: bool = False,
            input_size: int = INPUT_SIZE):
    """One input -> (``uint8 [3, S, S]`` model-sized image, ``S = input_size``, original
    ``(height, width)``, working-resolution ``uint8 [3, h, w]`` or None).

    The working copy (the image itself when its longer side is at most
    :data:`WORK_INPUT_MAX_SIDE`, else shrunk to it) is kept when
    ``keep_work`` asks for it: rescoring cuts proposals out of it, and the window plans of large
    images view it. Which plan an image takes is the generator's choice, made once.
    """
    rgb = to_rgb_tensor(image, max_pixels)
    size = (int(rgb.shape[1]), int(rgb.shape[2]))
    work = working_image(rgb) if keep_work else None
    return resize_to_input(rgb, input_size), size, work
