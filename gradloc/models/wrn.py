"""Pre-activation wide ResNet for CIFAR-10 and safe loading of its weights.

The architecture follows Zagoruyko & Komodakis, "Wide Residual Networks" (BMVC 2016):
a 3x3 stem, three groups of pre-activation basic blocks with widths 16k, 32k, 64k and
strides 1, 2, 2, then BN-ReLU, global average pooling and a linear classifier.
WRN-d-k has (d - 4) / 6 blocks per group.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import Tensor, nn

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
# Per-channel statistics of the CIFAR-10 training set (RGB, in [0, 1]).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

DEFAULT_WEIGHTS_NAME = "wrn16-4_cifar10.pt"
EXTENT_JUDGE_NAME = "wrn16-4_extent_judge.pt"  # the shipped judge of boxes (weights/MODEL_CARD.md)


class WeightsError(RuntimeError):
    """A weights file is missing, corrupt, or does not fit the architecture."""


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with an identity or 1x1-conv shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = (
            nn.Conv2d(in_ch, out_ch, 1, stride, 0, bias=False)
            if stride != 1 or in_ch != out_ch else None
        )

    def forward(self, x: Tensor) -> Tensor:
        o = torch.relu(self.bn1(x))
        # With a projection, the shortcut sees the pre-activated input (as in the paper's code).
        skip = x if self.shortcut is None else self.shortcut(o)
        o = self.conv1(o)
        o = self.conv2(self.dropout(torch.relu(self.bn2(o))))
        return o + skip


class WideResNet(nn.Module):
    """WRN-``depth``-``width`` for 32x32 inputs.

    Parameters
    ----------
    depth : int
        Total depth; ``(depth - 4)`` must be divisible by 6. Default 16.
    width : int
        Widening factor k. Default 4.
    num_classes : int
        Number of outputs. Default 10.
    dropout : float
        Dropout between the two convolutions of each block (training only).

    Notes
    -----
    The three groups are exposed as ``block1``, ``block2``, ``block3`` so that saliency
    methods can take the influence of pixels on an intermediate block's output. In this
    pre-activation network ``block3``'s output is not yet normalised; ``relu`` (after the final
    BN) gives the features that global pooling and ``fc`` see, Grad-CAM's layer.
    """

    def __init__(self, depth: int = 16, width: int = 4, num_classes: int = 10,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1, got {depth}")
        if width < 1:
            raise ValueError(f"WRN width must be >= 1, got {width}")
        self.depth, self.width, self.num_classes = depth, width, num_classes
        n = (depth - 4) // 6
        widths = (16, 16 * width, 32 * width, 64 * width)
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.block1 = self._group(widths[0], widths[1], n, 1, dropout)
        self.block2 = self._group(widths[1], widths[2], n, 2, dropout)
        self.block3 = self._group(widths[2], widths[3], n, 2, dropout)
        self.bn = nn.BatchNorm2d(widths[3])
        # A module (not a call) so that hooks can take the features the classifier pools:
        # Grad-CAM and CAM target its output.
        self.relu = nn.ReLU()
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @staticmethod
    def _group(in_ch: int, out_ch: int, n: int, stride: int, dropout: float) -> nn.Sequential:
        return nn.Sequential(*[
            PreActBlock(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1, dropout)
            for i in range(n)
        ])

    def features(self, x: Tensor) -> Tensor:
        """Final feature map before pooling, ``[B, 64k, 8, 8]`` for 32x32 input."""
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.relu(self.bn(x))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` for normalised input ``[B, 3, 32, 32]``."""
        return self.fc(self.features(x).mean((2, 3)))


VECTOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_flags() -> list[str]:
    """Which of :data:`VECTOR_FLAGS` (the units that decide precision and speed) the CPU
    advertises, as /proc/cpuinfo names them (Linux; none when unknown)."""
    try:
        have = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return [f for f in VECTOR_FLAGS if f in have]


# oneDNN's ISA caps (ONEDNN_MAX_CPU_ISA) below which its convolutions have no native bf16
ISA_CAPS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI")


def isa_cap() -> str | None:
    """The instruction-set cap the user set for oneDNN (``ONEDNN_MAX_CPU_ISA``, older
    ``DNNL_MAX_CPU_ISA``), upper-case, or None."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return value.strip().upper() if value and value.strip() else None


def cpu_has_native_bf16() -> bool:
    """True where the CPU advertises AVX-512 BF16 or AMX-BF16 (Linux; False when unknown) and
    oneDNN is not capped below them (:func:`isa_cap`: with ``ONEDNN_MAX_CPU_ISA=AVX2`` bf16 is
    emulated, as on an AVX2-only CPU)."""
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags())) and isa_cap() not in ISA_CAPS_WITHOUT_BF16


PRECISIONS = ("auto", "fp32", "bf16", "int8")


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` -> ``bf16`` where the device computes it natively (CUDA with bf16 support, or a
    CPU with AVX-512-BF16 / AMX), else ``int8`` on the CPU (the runtime falls back to fp32 for a
    model without an int8 copy: :func:`~gradloc.models.int8.int8_copy`), else ``fp32``; the
    others as given (``int8`` on the CPU only)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    kind = torch.device(device).type
    if precision == "int8" and kind != "cpu":
        raise ValueError(f"--precision int8 runs on the CPU (its integer kernels), not on {kind}")
    if precision != "auto":
        return precision
    if kind == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if kind != "cpu":
        return "fp32"
    return "bf16" if cpu_has_native_bf16() else "int8"


def weights_dir() -> Path:
    """Folder holding the shipped weights: inside the installed package, else the checkout's."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "weights"
    if installed.is_dir():
        return installed
    return package.parent / "weights"


def default_weights_path() -> Path:
    return weights_dir() / DEFAULT_WEIGHTS_NAME


def extent_judge_path() -> Path:
    return weights_dir() / EXTENT_JUDGE_NAME


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _expected_sha256(path: Path) -> str | None:
    side = path.with_name(path.name + ".sha256")
    if not side.is_file():
        return None
    text = side.read_text().split()
    return text[0].lower() if text else None


def read_state_dict(path: Path) -> dict:
    """A weights file's contents: ``.safetensors`` by safetensors, anything else by ``torch.load``
    with ``weights_only=True`` (no pickled code runs either way)."""
    if path.suffix != ".safetensors":
        return torch.load(path, map_location="cpu", weights_only=True)
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise WeightsError(f"reading {path.name} needs safetensors (pip install safetensors)") from None
    return load_file(str(path), device="cpu")


def load_weights(model: nn.Module, path: str | Path, verify: bool = True) -> nn.Module:
    """Load a state dict saved by ``torch.save`` (or a ``.safetensors`` file) into ``model``, safely.

    The file is read by :func:`read_state_dict` (no pickled code runs). When a
    ``<file>.sha256`` lies beside it and ``verify`` is true, the checksum must match.

    Raises
    ------
    WeightsError
        With a one-line reason when the file is missing, fails its checksum, cannot be
        read, or holds a state dict of another architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    expected = _expected_sha256(path) if verify else None
    if expected is not None:
        actual = sha256_of(path)
        if actual != expected:
            raise WeightsError(
                f"weights file {path} fails its checksum (sha256 {actual[:12]}..., "
                f"expected {expected[:12]}...): the file is corrupt or was replaced")
    try:
        state = read_state_dict(path)
    except WeightsError:
        raise
    except Exception as exc:  # torch and safetensors raise many types for a bad file
        raise WeightsError(f"cannot read weights file {path}: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a training checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if wrong_shape:
            k = wrong_shape[0]
            parts.append(f"{len(wrong_shape)} shape mismatches (e.g. {k}: file "
                         f"{tuple(state[k].shape)} vs model {tuple(own[k].shape)})")
        arch = (f"WRN-{model.depth}-{model.width}" if isinstance(model, WideResNet)
                else type(model).__name__)
        raise WeightsError(f"weights file {path} does not fit {arch}: " + "; ".join(parts))
    model.load_state_dict(state)
    return model


def wide_resnet(depth: int = 16, width: int = 4, weights: str | Path | None = "default",
                verify: bool = True) -> WideResNet:
    """Build a WRN in eval mode with parameters frozen, optionally loading weights.

    Parameters
    ----------
    weights : str, Path or None
        ``"default"`` for the shipped weights (WRN-16-4 only), a file path, or ``None``
        for random initialisation.
    """
    model = WideResNet(depth, width)
    if weights is not None:
        if weights == "default":
            if (depth, width) != (16, 4):
                raise WeightsError(f"no shipped weights for WRN-{depth}-{width}; "
                                   "pass a weights file or weights=None")
            weights = default_weights_path()
        load_weights(model, weights, verify=verify)
    model.eval()
    model.requires_grad_(False)  # saliency needs input gradients only
    return model
