"""The shipped WRNs in int8, for CPUs without native bf16.

On a CPU with AVX2 alone, bf16 is emulated and fp32 convolutions run near the cores' peak, so
the network's forward passes (the input-size pyramid and the judge's views, nearly all of a
photograph's time) can only get cheaper in int8 (fbgemm / oneDNN integer kernels). The network
is quantized after training (PyTorch's FX graph mode): weights per channel, activations per
tensor with ranges observed once on calibration images (``scripts/calibrate_int8.py``: CIFAR-10
training images and photographs of none of its classes at the pyramid's sizes) and shipped
beside the weights (``<weights>.int8.pt``). Only the convolutional body is int8: the final
BN-ReLU, the pooling and the classifier stay in float, so the final features, where the
pyramid's gradient x activation starts, are float and have gradients. Passes that need input
gradients (the 32x32 view's map) keep the float network.

A model gets an int8 copy only where calibrated ranges exist for its exact weights (the
shipped classifier and judge) and this PyTorch has the FX quantization API; otherwise
:func:`int8_copy` says why not, and ``--precision auto`` runs fp32.
"""
from __future__ import annotations

import functools
import hashlib
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from .wrn import WideResNet, default_weights_path, extent_judge_path

BACKEND = "x86"  # PyTorch's x86 quantized engine: fbgemm and oneDNN integer kernels
RANGES_SUFFIX = ".int8.pt"


class Body(nn.Module):
    """A WRN's convolutional body: the stem and the three groups, up to the final BN."""

    def __init__(self, wrn: WideResNet) -> None:
        super().__init__()
        self.conv1, self.block1, self.block2, self.block3 = wrn.conv1, wrn.block1, wrn.block2, wrn.block3

    def forward(self, x: Tensor) -> Tensor:
        return self.block3(self.block2(self.block1(self.conv1(x))))


class Int8WideResNet(nn.Module):
    """A WRN whose body runs in int8 and whose head (final BN, ``relu``, pooling, ``fc``) runs
    in float: the same names as :class:`~gradloc.models.wrn.WideResNet`'s where hooks look
    (``relu``: the pooled features), so the layer methods run on it unchanged. Gradients start
    at the final features; asked of the input, there are none."""

    def __init__(self, body: nn.Module, wrn: WideResNet) -> None:
        super().__init__()
        self.body, self.bn, self.relu, self.fc = body, wrn.bn, wrn.relu, wrn.fc
        self.depth, self.width, self.num_classes = wrn.depth, wrn.width, wrn.num_classes

    def features(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            f = self.body(x.detach().float())
        # the int8 body keeps no graph: gradients start here, at its float output
        return self.relu(self.bn(f.requires_grad_(torch.is_grad_enabled())))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def fx_api():
    """PyTorch's FX quantization functions ``(qconfig_mapping, prepare_fx, convert_fx)``, or None
    where this PyTorch lacks them or the x86 engine."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import get_default_qconfig_mapping
            from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    except ImportError:
        return None
    if BACKEND not in torch.backends.quantized.supported_engines:
        return None
    return get_default_qconfig_mapping(BACKEND), prepare_fx, convert_fx


def fingerprint(model: nn.Module) -> str:
    """sha256 of a model's state dict (names, shapes and values, in order): which weights a set
    of ranges was observed on."""
    digest = hashlib.sha256()
    for name, t in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def prepared_body(wrn: WideResNet):
    """The body with observers in place (FX graph mode, the x86 engine's default qconfig:
    per-channel int8 weights, 7-bit-range activations that AVX2's integer multiply cannot
    overflow)."""
    api = fx_api()
    if api is None:
        raise RuntimeError("this PyTorch has no FX quantization (torch.ao.quantization.quantize_fx)")
    qconfig, prepare_fx, _ = api
    torch.backends.quantized.engine = BACKEND
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare_fx(Body(wrn).eval(), qconfig, (torch.zeros(2, 3, 32, 32),))


def observer_state(prepared: nn.Module) -> dict[str, Tensor]:
    """The observed activation ranges of a calibrated :func:`prepared_body`."""
    return {k: v.clone() for k, v in prepared.state_dict().items() if "activation_post_process" in k}


def convert(prepared: nn.Module, wrn: WideResNet) -> Int8WideResNet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Int8WideResNet(fx_api()[2](prepared), wrn).eval().requires_grad_(False)


def shipped_ranges() -> list[Path]:
    return [p.with_name(p.name + RANGES_SUFFIX) for p in (default_weights_path(), extent_judge_path())]


@functools.lru_cache(maxsize=4)
def _ranges_by_fingerprint() -> dict[str, Path]:
    out = {}
    for path in shipped_ranges():
        if path.is_file():
            out[torch.load(path, map_location="cpu", weights_only=True)["fingerprint"]] = path
    return out


_COPIES: dict[tuple[str, str], Int8WideResNet] = {}


def int8_copy(model: nn.Module) -> tuple[Int8WideResNet | None, str]:
    """An int8 copy of ``model`` for forward passes -> ``(copy, "")``, or ``(None, why not)``:
    the model is not a WRN, its weights have no calibrated ranges (only the shipped ones do),
    or this PyTorch cannot quantize. Copies are cached by the weights' fingerprint."""
    if not isinstance(model, WideResNet):
        return None, "int8 runs gradloc's own WRN only"
    if fx_api() is None:
        return None, "this PyTorch has no FX quantization (torch.ao.quantization.quantize_fx)"
    key = fingerprint(model)
    path = _ranges_by_fingerprint().get(key)
    if path is None:
        return None, "int8 needs ranges calibrated on these weights, which only the shipped weights have"
    cached = _COPIES.get((key, str(next(model.parameters()).device)))
    if cached is not None:
        return cached, ""
    try:
        prepared = prepared_body(model)
        observers = torch.load(path, map_location="cpu", weights_only=True)["observers"]
        if set(observers) != set(observer_state(prepared)):
            raise KeyError("observer names")
        prepared.load_state_dict(observers, strict=False)
        copy = convert(prepared, model)
    except Exception as exc:  # a PyTorch whose FX graph names its observers otherwise, or cannot quantize
        return None, f"the int8 ranges in {path.name} do not fit this PyTorch's quantized graph ({type(exc).__name__})"
    _COPIES[(key, str(next(model.parameters()).device))] = copy
    return copy, ""
