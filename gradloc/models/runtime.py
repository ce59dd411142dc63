"""Where and how the classifier runs, decided once: the model and its spec, the device, the
precision, the batch size and the largest image accepted.

The pipeline (:class:`~gradloc.discovery.pipeline.ProposalGenerator`), the engines (local and
Ray) and evaluation (the CAM baselines) all take one :class:`Runtime`; none resolves a device
or a precision of its own.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .classifier import CIFAR10, ClassifierSpec, reading_logits
from .int8 import int8_copy
from .wrn import WideResNet, extent_judge_path, resolve_precision, wide_resnet

DEFAULT_MAX_PIXELS = 100_000_000  # larger images are refused (decompression-bomb guard)
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when available, else the CPU; ``cuda`` without a CUDA device is a one-line
    error; any other torch device as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} but no CUDA device is available")
    return torch.device(device)


class ClassifierError(ValueError):
    """The classifier itself fails the check: it does not run, or gives the wrong shape or NaN."""


def check_classifier(model: nn.Module, spec: ClassifierSpec, device: torch.device) -> None:
    """One forward pass of two mean-colour inputs of the spec's side: the classifier must run
    and give ``len(spec.classes)`` finite logits each, or a one-line error says what it did."""
    x = torch.zeros(2, 3, spec.input_size, spec.input_size, device=device).contiguous(memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # the user's model: whatever it raises is said in one line
        raise ClassifierError(f"the classifier fails on a [2, 3, {spec.input_size}, {spec.input_size}] input: "
                         f"{type(exc).__name__}: {exc}") from None
    if out.ndim != 2 or out.shape[1] != len(spec.classes):
        raise ClassifierError(f"the classifier gives outputs of shape {list(out.shape)} for a batch of 2; "
                         f"{len(spec.classes)} class names need [2, {len(spec.classes)}]")
    if not torch.isfinite(out.float()).all():
        raise ClassifierError("the classifier gives non-finite outputs (NaN or infinity) on a mean-colour input")


@dataclass(frozen=True)
class Runtime:
    """The classifier (eval mode, frozen, on ``device``, channels_last) and how it runs.

    ``precision`` is resolved (``fp32``, ``bf16`` or ``int8``,
    :func:`~gradloc.models.wrn.resolve_precision`). ``forward_model`` runs the passes that need no
    input gradient (class probabilities, the pyramid's gradient x activation, which starts at
    the final features): under ``int8`` the model's int8 copy (:mod:`~gradloc.models.int8`),
    else the model itself. Build one with :meth:`build`, which validates and resolves every field.
    """

    model: nn.Module
    spec: ClassifierSpec
    device: torch.device
    precision: str
    batch_size: int
    max_pixels: int
    forward_model: nn.Module

    @classmethod
    def build(cls, model: nn.Module, spec: ClassifierSpec = CIFAR10, device: str | torch.device = "auto",
              precision: str = "auto", batch_size: int = 64, max_pixels: int = DEFAULT_MAX_PIXELS) -> "Runtime":
        for name, value in (("batch_size", batch_size), ("max_pixels", max_pixels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        where = resolve_device(device)
        model.eval().requires_grad_(False)
        model = reading_logits(model.to(where).to(memory_format=torch.channels_last))
        check_classifier(model, spec, where)
        resolved, forward_model = resolve_precision(precision, where), model
        if resolved == "int8":
            forward_model, why = int8_copy(model)
            if forward_model is None:  # auto falls back to fp32; int8 asked for is refused
                if precision == "int8":
                    raise ValueError(f"--precision int8: {why}")
                resolved, forward_model = "fp32", model
        return cls(model, spec, where, resolved, batch_size, max_pixels, forward_model)

    @property
    def amp(self) -> bool:
        """Whether the network's passes run under bf16 autocast."""
        return self.precision == "bf16"

    def settings(self) -> dict:
        """What travels to another process besides the model and the device: there,
        ``Runtime.build(model, device=..., **settings)`` builds the same runtime."""
        return {"spec": self.spec, "precision": self.precision, "batch_size": self.batch_size,
                "max_pixels": self.max_pixels}


def judge_runtime(judge: str, runtime: Runtime) -> tuple[str, Runtime | None]:
    """The network that scores candidate boxes (``--judge``), on ``runtime``'s device, precision
    and batch size -> the judge's resolved name and its runtime, or None where the classifier
    judges its own boxes. ``auto`` is the shipped extent judge for gradloc's CIFAR-10 WRN (the
    shipped weights or one's own), else the classifier: the judge knows CIFAR-10's classes at
    32 px, and another model's boxes are its own to judge."""
    spec = runtime.spec
    cifar = (spec.classes, spec.input_size, spec.mean, spec.std) == (CIFAR10.classes, CIFAR10.input_size,
                                                                     CIFAR10.mean, CIFAR10.std)
    ours = cifar and isinstance(runtime.model, WideResNet)
    name = ("extent" if ours else "classifier") if judge == "auto" else judge
    if name == "classifier":
        return name, None
    if not cifar:
        raise ValueError(f"--judge {judge} is a CIFAR-10 WRN-16-4 and cannot judge this classifier's classes "
                         "(use --judge classifier)")
    model = wide_resnet(16, 4, weights=extent_judge_path() if name == "extent" else name)
    precision = runtime.precision
    if precision == "int8" and int8_copy(model)[0] is None:  # a judge of one's own without int8 ranges
        precision = "fp32"
    return name, Runtime.build(model, runtime.spec, runtime.device, precision, runtime.batch_size, runtime.max_pixels)
