"""The classifier gradloc explains: a module and what it must be told about it.

:class:`ClassifierSpec` holds everything besides the module that the stages need: the class
names, the square input size the model was trained at, the normalisation of its input and the
last feature layer (Grad-CAM, CAM and the pyramid's gradient x activation hook it). The shipped
WRN is :data:`CIFAR10`; :func:`torchvision_classifier`, :func:`timm_classifier`,
:func:`huggingface_classifier` and :func:`load_callable` build the user's own (``--model
torchvision:NAME`` / ``timm:NAME`` / ``hf:DIR`` / ``MODULE:CALLABLE``).
"""
from __future__ import annotations

import importlib.util
import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .wrn import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The last feature layer of common torchvision families, tried in order (the module whose output
# global pooling averages): ResNet / ResNeXt / RegNet, VGG / AlexNet / MobileNet / EfficientNet /
# ConvNeXt / DenseNet ("features"), and the shipped WRN's final BN-ReLU.
FEATURE_LAYERS = ("relu", "layer4", "trunk_output", "features")


ACTIVATIONS = ("softmax", "sigmoid")


@dataclass(frozen=True)
class ClassifierSpec:
    """A classifier's class names, input side (px, square), input mean and std (RGB in [0, 1])
    and last feature layer (a name in ``model.named_modules()``, None: found by
    :func:`spatial_feature_layer`)."""

    classes: tuple[str, ...]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature_layer: str | None = None
    # how its logits become class probabilities: softmax (one class per image) or sigmoid (each
    # class on its own: a multi-label model, or a binary one with one logit)
    activation: str = "softmax"

    def __post_init__(self) -> None:
        size = self.input_size
        if isinstance(size, (tuple, list)):
            if len(size) != 2 or size[0] != size[1]:
                raise ValueError(f"input_size must be one side or a square (h, w); got {tuple(size)}")
            size = size[0]
        if isinstance(size, bool) or not isinstance(size, int) or size < 8:
            raise ValueError(f"input_size must be an integer side >= 8 px, got {self.input_size!r}")
        object.__setattr__(self, "input_size", size)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose from {', '.join(ACTIVATIONS)}")
        names = tuple(str(c).strip() for c in self.classes)
        fewest = 1 if self.activation == "sigmoid" else 2  # one sigmoid logit is a binary classifier
        if len(names) < fewest or len(set(n.lower() for n in names)) < len(names) or not all(names):
            hint = "; one class with one logit is a binary model: activation sigmoid" if len(names) == 1 else ""
            raise ValueError(f"classes must be at least {'one' if fewest == 1 else 'two'} distinct non-empty "
                             f"name{'' if fewest == 1 else 's'} under {self.activation}, got {len(names)}{hint}")
        object.__setattr__(self, "classes", names)
        for key in ("mean", "std"):
            v = tuple(float(x) for x in getattr(self, key))
            if len(v) != 3 or (key == "std" and not all(x > 0 for x in v)):
                raise ValueError(f"{key} must be three numbers (one per RGB channel){', all > 0' if key == 'std' else ''}")
            object.__setattr__(self, key, v)

    @property
    def mean_colour(self) -> tuple[float, float, float]:
        """The colour (0-255) that normalises to zero: no evidence, what blanking fills with."""
        return tuple(255 * m for m in self.mean)

    def probabilities(self, logits: Tensor) -> Tensor:
        """Logits ``[B, C]`` -> class probabilities by :attr:`activation`."""
        return logits.sigmoid() if self.activation == "sigmoid" else logits.softmax(1)

    def normalize(self, x_uint8: Tensor) -> Tensor:
        """``uint8 [B, 3, H, W]`` -> float, normalised as the model was trained."""
        mean = torch.tensor(self.mean, device=x_uint8.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x_uint8.device).view(1, 3, 1, 1)
        return (x_uint8.float() / 255.0 - mean) / std


CIFAR10 = ClassifierSpec(CIFAR10_CLASSES, 32, CIFAR10_MEAN, CIFAR10_STD)  # its WRN's features: "relu", found


def logits_of(output) -> Tensor:
    """A classifier's output as its logits ``[B, C]``, read in this one place: a tensor as it is;
    a tuple or list, its first element; a dict or a transformers ``ModelOutput``, its ``logits``
    (or its only tensor); an object with a ``logits`` tensor."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        if "logits" in output:
            return logits_of(output["logits"])
        tensors = [v for v in output.values() if isinstance(v, Tensor)]
        if len(tensors) == 1:
            return tensors[0]
    elif isinstance(output, (tuple, list)) and output:
        return logits_of(output[0])
    elif isinstance(getattr(output, "logits", None), Tensor):
        return output.logits
    raise ValueError(f"the classifier returned a {type(output).__name__}, not logits (a tensor, or a tuple, dict or "
                     "ModelOutput holding them under 'logits')")


def reading_logits(model: nn.Module) -> nn.Module:
    """``model`` with every call returning :func:`logits_of` its output (a forward hook on the
    model itself, added once: its layers keep their names for the methods that hook them)."""
    if not getattr(model, "_gradloc_reads_logits", False):
        model.register_forward_hook(lambda module, args, out: None if isinstance(out, Tensor) else logits_of(out))
        model._gradloc_reads_logits = True
    return model


def find_feature_layer(model: nn.Module, name: str | None = None) -> str:
    """``name`` if the model has it, else the first of :data:`FEATURE_LAYERS` it has; a
    one-line error naming its top-level layers when there is none."""
    layers = dict(model.named_modules())
    if name is not None and name in layers:
        return name
    found = next((n for n in FEATURE_LAYERS if name is None and n in layers), None)
    if found is None:
        tops = ", ".join(n for n in layers if n and "." not in n)
        what = f"no layer {name!r}" if name else "no feature layer gradloc knows"
        raise ValueError(f"the model has {what} (tried {', '.join(FEATURE_LAYERS)}); give the last "
                         f"convolutional layer's name (--feature-layer); top-level layers: {tops}")
    return found


def spatial_feature_layer(model: nn.Module, spec: "ClassifierSpec") -> str | None:
    """The layer whose output is the model's last feature map ``[B, C, h, w]``, which Grad-CAM,
    CAM and the pyramid's gradient x activation hook: the spec's (it must exist), else the first
    of :data:`FEATURE_LAYERS` the model has, else the one :func:`last_spatial_layer` finds. None
    where the model has none: a vision transformer's features are tokens."""
    if spec.feature_layer is not None:
        return find_feature_layer(model, spec.feature_layer)
    layers = dict(model.named_modules())
    return next((n for n in FEATURE_LAYERS if n in layers), None) or last_spatial_layer(model, spec.input_size)


def torchvision_classifier(name: str, num_classes: int) -> nn.Module:
    """``torchvision.models.<name>`` with ``num_classes`` outputs and random weights (the user
    loads theirs: nothing is downloaded)."""
    import torchvision
    try:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    except (ValueError, KeyError):
        known = ", ".join(sorted(torchvision.models.list_models(torchvision.models))[:12])
        raise ValueError(f"torchvision has no classification model {name!r} (e.g. {known}, ...)") from None


@dataclass(frozen=True)
class DataConfig:
    """What a model source knows of its model's input (None: not known; the user says)."""

    input_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    feature_layer: str | None = None
    activation: str | None = None  # "sigmoid" where the source says the model is multi-label


def distinct_names(names) -> tuple[str, ...]:
    """Class names as given, a name that repeats but for its case (torchvision's ImageNet names
    "Cardigan", a dog, and "cardigan", a sweater) followed by its index in each place:
    "Cardigan (264)", "cardigan (474)". Names are told apart regardless of case
    (:class:`ClassifierSpec`)."""
    names = [str(n) for n in names]
    folded = [n.strip().lower() for n in names]
    return tuple(f"{n} ({i})" if folded.count(f) > 1 else n for i, (n, f) in enumerate(zip(names, folded)))


def torchvision_weights_meta(name: str, member: str) -> tuple[tuple[str, ...], DataConfig]:
    """What a torchvision weights enum says of its model (``resnet18`` and ``IMAGENET1K_V1``):
    its class names (``meta["categories"]``) and input (its ``transforms()``: the crop's side,
    mean, std). Only the description: the state dict is the user's ``--weights`` file."""
    import torchvision
    try:
        members = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        raise ValueError(f"torchvision has no weights enum for {name!r}") from None
    if member not in members.__members__:
        raise ValueError(f"torchvision's {members.__name__} has no {member!r} (it has "
                         f"{', '.join(members.__members__)})")
    weights = members[member]
    t = weights.transforms()
    crop = getattr(t, "crop_size", None)
    return distinct_names(weights.meta["categories"]), DataConfig(int(crop[0]) if crop else None, tuple(t.mean),
                                                                  tuple(t.std))


def timm_classifier(name: str, num_classes: int) -> tuple[nn.Module, DataConfig]:
    """``timm.create_model(name)`` with ``num_classes`` outputs and random weights (the user
    loads theirs: nothing is downloaded), and its data config as timm resolves it
    (``timm.data.resolve_model_data_config``: input size, mean, std) with the module of its
    last feature map (``feature_info``)."""
    try:
        import timm
        import timm.data
    except ImportError:
        raise ValueError("--model timm:... needs timm (pip install 'gradloc[timm]')") from None
    if not timm.is_model(name):
        near = ", ".join(timm.list_models(f"*{name}*")[:8]) or "timm.list_models() lists them"
        raise ValueError(f"timm has no model {name!r} (similar: {near})")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    except Exception as exc:  # timm's builders raise many types
        raise ValueError(f"--model timm:{name}: building it raised {type(exc).__name__}: {exc}") from None
    data = timm.data.resolve_model_data_config(model)
    info = getattr(model, "feature_info", None)
    layer = info[-1].get("module") if isinstance(info, list) and info else None
    side = data["input_size"][-1]
    return model, DataConfig(int(side), tuple(data["mean"]), tuple(data["std"]), layer)


def last_spatial_layer(model: nn.Module, side: int) -> str | None:
    """The module whose output is the model's last feature map: of the modules that give a
    ``[B, C, h, w]`` tensor with h x w > 1 on a blank ``side`` x ``side`` input, the last to
    finish (a container finishes after its children, so a network's last stage is found, not its
    last convolution). None where the features after it are tokens ``[B, N, C]`` (a vision
    transformer's patch embedding is a convolution, but what it pools is not a map)."""
    names = {m: n for n, m in model.named_modules() if n}
    found: list[tuple[str, int]] = []  # (module, ndim) in the order they finish

    def record(module, args, out):
        if isinstance(out, Tensor) and out.ndim == 4 and out.shape[-1] * out.shape[-2] > 1:
            found.append((names[module], 4))
        elif isinstance(out, Tensor) and out.ndim == 3 and out.shape[1] > 1:
            found.append((names[module], 3))
    hooks = [m.register_forward_hook(record) for m in names]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, side, side, device=device))
    finally:
        for h in hooks:
            h.remove()
    return found[-1][0] if found and found[-1][1] == 4 else None


def huggingface_classifier(folder: str | Path) -> tuple[nn.Module, tuple[str, ...], DataConfig]:
    """A local ``transformers`` image classifier folder (``save_pretrained``'s: config.json,
    model.safetensors, preprocessor_config.json) -> the model with its weights, its class names
    (``id2label``) and its input as its image processor's config describes it (the side: the
    centre crop's, else the resize's; ``image_mean``, ``image_std``). Nothing is downloaded."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"--model hf:{folder}: not a transformers model folder (no config.json)")
    try:
        import transformers
    except ImportError:
        raise ValueError("--model hf:... needs transformers (pip install 'gradloc[hf]')") from None
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # transformers raises many types for a folder it cannot load
        raise ValueError(f"--model hf:{folder}: cannot load it ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    labels = model.config.id2label
    names = distinct_names(labels[i] for i in sorted(labels, key=int))
    processor = folder / "preprocessor_config.json"
    config = json.loads(processor.read_text(encoding="utf-8")) if processor.is_file() else {}

    def side_of(size) -> int | None:
        if isinstance(size, int):
            return size
        if isinstance(size, Mapping):
            return size.get("height") or size.get("shortest_edge")
        return None
    side = (side_of(config.get("crop_size")) if config.get("do_center_crop") else None) or side_of(config.get("size"))
    def rgb(v) -> tuple[float, float, float] | None:
        return tuple(float(x) for x in v) if isinstance(v, (list, tuple)) and len(v) == 3 else None
    layer = last_spatial_layer(model, side) if side else None
    multi_label = getattr(model.config, "problem_type", None) == "multi_label_classification"
    return model, names, DataConfig(side, rgb(config.get("image_mean")), rgb(config.get("image_std")), layer,
                                    "sigmoid" if multi_label else None)


def load_callable(spec: str, num_classes: int) -> nn.Module:
    """``MODULE:CALLABLE`` -> ``CALLABLE(num_classes=...)`` (or ``CALLABLE()``) from an
    importable module or a ``.py`` file path, which must give an ``nn.Module``."""
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ValueError(f"--model {spec!r}: give torchvision:NAME or MODULE:CALLABLE")
    try:
        if module_name.endswith(".py"):
            loader = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
        fn = getattr(module, attr)
    except Exception as exc:  # importing the user's module runs their code
        raise ValueError(f"--model {spec!r}: cannot load it ({type(exc).__name__}: {exc})") from None
    try:  # CALLABLE(num_classes=...) where it takes that keyword, else CALLABLE()
        params = inspect.signature(fn).parameters.values()
        takes = any(p.name == "num_classes" or p.kind is p.VAR_KEYWORD for p in params)
    except (TypeError, ValueError):  # no signature to read (a builtin): try the keyword
        takes = True
    try:
        model = fn(num_classes=num_classes) if takes else fn()
    except Exception as exc:  # the user's code: whatever it raises is said in one line
        raise ValueError(f"--model {spec}: building it raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"--model {spec!r} gave a {type(model).__name__}, not a torch.nn.Module")
    return model


def read_class_names(path: str | Path) -> tuple[str, ...]:
    """One class name a line (blank lines and # comments ignored)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read class names from {path}: {exc}") from None
    names = tuple(ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#"))
    if not names:
        raise ValueError(f"no class names in {path} (one name a line)")
    return names


def load_user_classifier(source: str, weights: str | Path, class_names: str | Path | Sequence[str] | None,
                         input_size: int | None,
                         mean: tuple[float, float, float] | None = None, std: tuple[float, float, float] | None = None,
                         feature_layer: str | None = None, activation: str | None = None) -> tuple[nn.Module, ClassifierSpec]:
    """``--model`` (``torchvision:NAME[:WEIGHTS]``, ``timm:NAME``, ``hf:DIR`` or
    ``MODULE:CALLABLE``) with its ``weights`` (a state dict, ``.pt`` or ``.safetensors``; an
    ``hf:`` folder holds its own) and description -> the model, weights loaded, and its
    :class:`ClassifierSpec`. What the user does not give comes from the source (a torchvision
    weights enum's categories and transforms; timm's data config; the folder's id2label, problem
    type and image processor config) or, for the input's mean and std, is ImageNet's. The
    ``activation`` (softmax or sigmoid), when neither the user nor the source says: sigmoid for
    one class name (a binary model with one logit), else softmax."""
    from .wrn import WeightsError, load_weights
    kind, _, name = source.partition(":")
    known, names = DataConfig(), None
    if kind == "torchvision" and ":" in name:  # torchvision:NAME:WEIGHTS, the enum's description
        name, _, member = name.partition(":")
        names, known = torchvision_weights_meta(name, member)
    if kind == "hf":
        if weights != "default":
            raise ValueError(f"--model {source}: the folder holds its weights; give no --weights")
        model, names, known = huggingface_classifier(name)
    needs = [flag for flag, missing in (("--weights FILE (its state dict)", weights == "default" and kind != "hf"),
                                        ("--class-names FILE", class_names is None and names is None),
                                        ("--input-size N", input_size is None and known.input_size is None
                                         and kind != "timm"))
             if missing]
    if needs:
        raise ValueError(f"--model {source} needs {', '.join(needs)}")
    if class_names is not None:  # a file of names, or the names themselves (the API)
        names = read_class_names(class_names) if isinstance(class_names, (str, Path)) else tuple(class_names)
    if kind == "torchvision":
        model = torchvision_classifier(name, len(names))
    elif kind == "timm":
        model, known = timm_classifier(name, len(names))
    elif kind != "hf":
        model = load_callable(source, len(names))
    if kind != "hf":
        try:
            load_weights(model, weights)
        except WeightsError as exc:
            raise WeightsError(f"--model {source}: {exc}") from None
    side = input_size or known.input_size
    if side is None:
        raise ValueError(f"--model {source}: its image processor config gives no input size; give --input-size N")
    activation = activation or known.activation or ("sigmoid" if len(names) == 1 else "softmax")
    return model, ClassifierSpec(tuple(names), side, mean or known.mean or IMAGENET_MEAN,
                                 std or known.std or IMAGENET_STD, feature_layer or known.feature_layer, activation)
