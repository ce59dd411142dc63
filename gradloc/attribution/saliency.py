"""Class-masked saliency maps: how strongly each input pixel influences chosen classes.

Every method maps normalised inputs ``x [M, 3, H, W]`` and their targets (class indices ``[M]``,
a float class mask ``[M, C]``, or a callable picking the mask from the clean logits, by default
the predicted class) to non-negative maps ``[M, H, W]`` plus the clean logits ``[M, C]``. Rows are
independent (eval mode), so the gradient of the *summed* masked output gives every row's own
gradient in ONE backward pass; only the input's gradients are computed.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Targets = Union[Tensor, Callable[[Tensor], Tensor]]

OUTPUTS = ("logits", "probs", "log_probs")
# the model output a class mask multiplies, per activation (how the classifier's logits become probabilities)
OUTPUT_OF: dict[str, dict[str, Callable[[Tensor], Tensor]]] = {
    "softmax": {"logits": lambda z: z, "probs": lambda z: z.softmax(1), "log_probs": lambda z: z.log_softmax(1)},
    "sigmoid": {"logits": lambda z: z, "probs": torch.sigmoid, "log_probs": F.logsigmoid},
}
REDUCTIONS = ("max", "l2", "sum")


def predicted_class(logits: Tensor) -> Tensor:
    """Default target: the arg-max class of each row, ``[M]``."""
    return logits.argmax(1)


def class_mask(targets: Tensor, num_classes: int) -> Tensor:
    """Class indices ``[M]`` or a mask ``[M, C]`` -> float mask ``[M, C]``."""
    if targets.ndim == 1:
        return F.one_hot(targets.long(), num_classes).float()
    if targets.ndim == 2 and targets.shape[1] == num_classes:
        return targets.float()
    raise ValueError(f"targets must be [M] indices or an [M, {num_classes}] mask, "
                     f"got {tuple(targets.shape)}")


def resolve_mask(targets: Targets, logits: Tensor) -> Tensor:
    picked = targets(logits.detach()) if callable(targets) else targets.to(logits.device)
    return class_mask(picked, logits.shape[1])


def reduce_channels(g: Tensor, how: str = "max", positive: bool = False) -> Tensor:
    """Per-channel attributions ``[M, 3, H, W]`` -> map ``[M, H, W]``.

    ``positive`` keeps positive evidence only (the sign of the gradient); otherwise
    magnitudes are used. ``how``: max over channels, L2 norm, or sum.
    """
    g = g.clamp(min=0) if positive else g.abs()
    if how == "max":
        return g.amax(1)
    if how == "l2":
        return g.norm(dim=1)
    if how == "sum":
        return g.sum(1)
    raise ValueError(f"unknown channel reduction {how!r}; choose from {REDUCTIONS}")


@contextlib.contextmanager
def capture_output(module: nn.Module):
    """Record ``module``'s forward output in ``store["out"]`` while the context is open."""
    store: dict[str, Tensor] = {}
    handle = module.register_forward_hook(lambda m, i, o: store.__setitem__("out", o))
    try:
        yield store
    finally:
        handle.remove()


def get_layer(model: nn.Module, name: str) -> nn.Module:
    layers = dict(model.named_modules())
    if name not in layers:
        tops = [n for n in layers if n and "." not in n]
        raise ValueError(f"model has no layer {name!r}; top-level layers: {', '.join(tops)}")
    return layers[name]


class SaliencyMethod:
    """Base class: class-masked input gradients, reduced over colour channels.

    Parameters
    ----------
    model : nn.Module
        A classifier in eval mode taking normalised ``[M, 3, H, W]`` input.
    output : {"probs", "logits", "log_probs"}
        Which output the class mask multiplies. Default probabilities, as in the
        original experiment.
    reduce : {"max", "l2", "sum"}
        Channel reduction. Default max of |g|.
    positive : bool
        Keep positive evidence only.

    ``activation`` says how the model's logits become the probabilities ``probs`` means:
    ``softmax`` (the default) or ``sigmoid`` for a multi-label model; :func:`make_method` sets it
    from the classifier's spec.
    """

    name = "gradient"
    activation = "softmax"

    def __init__(self, model: nn.Module, output: str = "probs", reduce: str = "max",
                 positive: bool = False) -> None:
        if output not in OUTPUTS:
            raise ValueError(f"unknown output {output!r}; choose from {tuple(OUTPUTS)}")
        if reduce not in REDUCTIONS:
            raise ValueError(f"unknown channel reduction {reduce!r}; choose from {REDUCTIONS}")
        self.model, self.output, self.reduce, self.positive = model, output, reduce, positive

    def model_output(self, logits: Tensor) -> Tensor:
        """The output the class mask multiplies (``output``, by ``activation``)."""
        return OUTPUT_OF[self.activation][self.output](logits)

    def score(self, logits: Tensor, mask: Tensor) -> Tensor:
        """The masked output summed over the batch: its input gradient is every row's."""
        return (self.model_output(logits.float()) * mask).sum()

    def input_gradient(self, x: Tensor, targets: Targets) -> tuple[Tensor, Tensor, Tensor]:
        """One forward and one backward: (gradient ``[M,3,H,W]``, logits, mask)."""
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(x)
            mask = resolve_mask(targets, logits)
            (grad,) = torch.autograd.grad(self.score(logits, mask), x)
        return grad, logits.detach(), mask

    @torch.no_grad()
    def clean_forward(self, x: Tensor, targets: Targets) -> tuple[Tensor, Tensor]:
        logits = self.model(x)
        return logits, resolve_mask(targets, logits)

    def attribute(self, x: Tensor, targets: Targets) -> tuple[Tensor, Tensor]:
        grad, logits, _ = self.input_gradient(x, targets)
        return reduce_channels(grad, self.reduce, self.positive), logits

    def __call__(self, x: Tensor, targets: Targets = predicted_class) -> tuple[Tensor, Tensor]:
        """Maps ``[M, H, W]`` (float, >= 0) and clean logits ``[M, C]``."""
        maps, logits = self.attribute(x, targets)
        return maps.float(), logits.float()


class Gradient(SaliencyMethod):
    """|d f_c / d x| (Simonyan et al. 2013), class-masked."""


class GradientPositive(SaliencyMethod):
    """Positive part of the class-masked gradient: pixels whose increase raises the class."""

    name = "gradient-positive"

    def __init__(self, model, output="probs", reduce="max", positive=True):
        super().__init__(model, output, reduce, positive)


class GradXInput(SaliencyMethod):
    """Gradient times input (Shrikumar et al. 2016), input relative to the data mean."""

    name = "grad-x-input"

    def __init__(self, model, output="probs", reduce="sum", positive=False):
        super().__init__(model, output, reduce, positive)

    def attribute(self, x, targets):
        grad, logits, _ = self.input_gradient(x, targets)
        return reduce_channels(grad * x, self.reduce, self.positive), logits


class SmoothGrad(SaliencyMethod):
    """Average of maps over noisy copies of the input (Smilkov et al. 2017).

    All ``samples`` noisy copies of all rows go through one forward and one backward.
    ``noise`` is the Gaussian's standard deviation as a fraction of the input's range.
    ``mode``: "mean" (SmoothGrad), "square" (SmoothGrad-squared, mean of squared maps)
    or "var" (VarGrad, variance of the gradients; Adebayo et al. 2018).
    """

    name = "smoothgrad"

    def __init__(self, model, output="probs", reduce="max", positive=False,
                 samples: int = 16, noise: float = 0.15, mode: str = "mean", seed: int = 0):
        super().__init__(model, output, reduce, positive)
        if mode not in ("mean", "square", "var"):
            raise ValueError(f"unknown SmoothGrad mode {mode!r}")
        if samples < 1:
            raise ValueError("samples must be >= 1")
        self.samples, self.noise, self.mode, self.seed = samples, noise, mode, seed

    def attribute(self, x, targets):
        logits, mask = self.clean_forward(x, targets)
        m, n = x.shape[0], self.samples
        span = (x.amax((1, 2, 3)) - x.amin((1, 2, 3))).view(m, 1, 1, 1, 1)
        gen = torch.Generator(device=x.device).manual_seed(self.seed)  # same noise every call
        eps = torch.randn((n,) + tuple(x.shape), generator=gen, device=x.device, dtype=x.dtype)
        noisy = (x[None] + eps * span.transpose(0, 1) * self.noise).reshape(n * m, *x.shape[1:])
        grad, _, _ = self.input_gradient(noisy, mask.repeat(n, 1))
        grad = grad.view(n, m, *x.shape[1:])
        if self.mode == "var":
            return reduce_channels(grad.var(0, unbiased=False), self.reduce, positive=False), logits
        maps = reduce_channels(grad.flatten(0, 1), self.reduce, self.positive).view(n, m, *x.shape[2:])
        return (maps.square().mean(0) if self.mode == "square" else maps.mean(0)), logits


class IntegratedGradients(SaliencyMethod):
    """Path integral of gradients from a baseline (Sundararajan et al. 2017).

    Riemann midpoint sum with ``steps`` points, all in one backward pass. The baseline is
    the data mean (zero after normalisation) unless ``baseline`` gives a value.
    """

    name = "integrated-gradients"

    def __init__(self, model, output="probs", reduce="sum", positive=False,
                 steps: int = 16, baseline: float = 0.0):
        super().__init__(model, output, reduce, positive)
        self.steps, self.baseline = steps, baseline

    def attribute(self, x, targets):
        logits, mask = self.clean_forward(x, targets)
        base = torch.full_like(x, self.baseline)
        alphas = (torch.arange(self.steps, device=x.device, dtype=x.dtype) + 0.5) / self.steps
        path = base[None] + alphas.view(-1, 1, 1, 1, 1) * (x - base)[None]
        grad, _, _ = self.input_gradient(path.flatten(0, 1), mask.repeat(self.steps, 1))
        attr = grad.view(self.steps, *x.shape).mean(0) * (x - base)
        return reduce_channels(attr, self.reduce, self.positive), logits


class LayerInfluence(SaliencyMethod):
    """Influence of pixels on an intermediate block's output, for the masked classes.

    The block's activations ``A`` are weighted per channel by how much the masked
    output depends on them (the spatial mean of ``d score / d A``, positive part, as
    Grad-CAM weighs channels), and the map is the input gradient of that weighted sum:
    pixel-resolution evidence routed through the block. ``weighting="none"`` drops the
    class weights (plain influence on the block's total activation, class-agnostic).
    """

    name = "layer"

    def __init__(self, model, output="probs", reduce="max", positive=False,
                 layer: str = "block2", weighting: str = "class"):
        super().__init__(model, output, reduce, positive)
        if weighting not in ("class", "none"):
            raise ValueError(f"unknown layer weighting {weighting!r}")
        self.layer, self.weighting = get_layer(model, layer), weighting

    def attribute(self, x, targets):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad(), capture_output(self.layer) as store:
            logits = self.model(x)
            act = store["out"]
            mask = resolve_mask(targets, logits)
            if self.weighting == "class":
                (g_act,) = torch.autograd.grad(self.score(logits, mask), act, retain_graph=True)
                weights = g_act.mean((2, 3), keepdim=True).clamp(min=0)
            else:
                weights = torch.ones_like(act[:, :, :1, :1])
            (grad,) = torch.autograd.grad((act * weights).sum(), x)
        return reduce_channels(grad, self.reduce, self.positive), logits.detach()


class GradCAM(SaliencyMethod):
    """Grad-CAM (Selvaraju et al. 2017): a layer's activations weighted per channel by the
    spatial mean of the class score's gradient, summed over channels, ReLU, bilinear
    upsampling to the input.

    The default layer ``relu`` is the WRN's final BN-ReLU output, the features global pooling
    and the linear head see, as in the paper (``block3``'s output comes before it). With a GAP +
    linear head and ``output="logits"``, the map is CAM's up to a constant factor, after ReLU.
    """

    name = "gradcam"

    def __init__(self, model, output="logits", reduce="max", positive=True, layer: str = "relu"):
        super().__init__(model, output, reduce, positive)
        self.layer = get_layer(model, layer)

    def channel_weights(self, act: Tensor, logits: Tensor, mask: Tensor) -> Tensor:
        """``[M, K]``: the spatial mean of the masked score's gradient w.r.t. ``act`` ``[M, K, h, w]``."""
        (g_act,) = torch.autograd.grad(self.score(logits, mask), act)
        return g_act.mean((2, 3))

    def feature_maps(self, x: Tensor, targets: Targets) -> tuple[Tensor, Tensor]:
        """Maps at the layer's resolution ``[M, h, w]`` (8x8 for ``relu``) and clean logits."""
        # Parameters are frozen, so the input must carry the graph; the backward stops at act.
        with torch.enable_grad(), capture_output(self.layer) as store:
            logits = self.model(x.detach().requires_grad_(True))
            act = store["out"]
            weights = self.channel_weights(act, logits, resolve_mask(targets, logits))
        cam = torch.einsum("mk,mkhw->mhw", weights.detach().float(), act.detach().float())
        return (cam.clamp(min=0) if self.positive else cam), logits.detach()

    def attribute(self, x, targets):
        cam, logits = self.feature_maps(x, targets)
        # as a saliency method the map is evidence for the class: CAM's negative part is dropped
        cam = F.interpolate(cam[:, None].clamp(min=0), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return cam[:, 0], logits


class GradientXActivation(GradCAM):
    """Gradient x activation at a layer (Captum's ``LayerGradientXActivation``), summed over
    channels, positive part, bilinear upsampling to the input: the class-masked output's
    gradient w.r.t. the final features, times those features, location by location.

    On a large input (a photograph at 128 px) each location of the final features sees an
    object at the network's own scale, where an input gradient is dominated by texture; with
    the default ``probs`` output the map is contrastive (a class's evidence minus the
    probability-weighted evidence of the others). Multi-size discovery
    (:class:`~gradloc.discovery.windows.Pyramid`) uses it for every input larger than 32x32.
    """

    name = "grad-x-activation"

    def __init__(self, model, output="probs", reduce="max", positive=True, layer: str = "relu"):
        super().__init__(model, output, reduce, positive, layer)

    def feature_maps(self, x: Tensor, targets: Targets) -> tuple[Tensor, Tensor]:
        return self.row_feature_maps(x, torch.arange(len(x)), targets)

    def row_feature_maps(self, x: Tensor, view_of_row: Tensor, targets: Targets) -> tuple[Tensor, Tensor]:
        """Maps at the layer's resolution of rows ``[R]``, row ``r`` being view ``view_of_row[r]``
        of ``x`` ``[M, ...]`` and its class ``targets[r]`` (indices ``[R]``, or a callable of the
        views' logits), and the views' clean logits ``[M, C]``. Each view passes forward once:
        the gradient from the output back to the layer (the head alone) is all that differs
        between the classes of one view, so its rows take turns there, one backward per turn."""
        view_of_row = view_of_row.to(x.device)
        with torch.enable_grad(), capture_output(self.layer) as store:
            logits = self.model(x.detach().requires_grad_(True))
            act = store["out"]
            masks = resolve_mask(targets, logits[view_of_row])
            # a row's turn: how many earlier rows share its view
            same = view_of_row[:, None] == view_of_row[None, :]
            turn = torch.tril(same, diagonal=-1).sum(1)
            g_rows = torch.empty((len(view_of_row), *act.shape[1:]), dtype=act.dtype, device=act.device)
            turns = int(turn.max()) + 1 if len(turn) else 0
            for k in range(turns):
                mine = turn == k
                mask = torch.zeros_like(logits, dtype=torch.float32)
                mask[view_of_row[mine]] = masks[mine]
                (g_act,) = torch.autograd.grad(self.score(logits, mask), act, retain_graph=k + 1 < turns)
                g_rows[mine] = g_act[view_of_row[mine]]
        m = (g_rows.float() * act.detach().float()[view_of_row]).sum(1)
        return (m.clamp(min=0) if self.positive else m), logits.detach()

    def attribute_rows(self, x: Tensor, view_of_row: Tensor, targets: Targets) -> tuple[Tensor, Tensor]:
        """:meth:`row_feature_maps` upsampled to the input -> maps ``[R, H, W]`` and the rows'
        logits ``[R, C]`` (each its view's), as :meth:`attribute` gives them for one row per view."""
        cam, logits = self.row_feature_maps(x, view_of_row, targets)
        cam = F.interpolate(cam[:, None].clamp(min=0), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return cam[:, 0].float(), logits[view_of_row.to(logits.device)].float()


class CAM(GradCAM):
    """Class activation mapping (Zhou et al. 2016): the final features weighted by the linear
    head's weights of the masked classes, ``sum_k w_ck F_k(x, y)``; :meth:`feature_maps` keeps
    the sign, as in the paper (the pipeline's maps drop the negative part). Needs global
    average pooling and a linear head ``model.fc`` after ``layer``."""

    name = "cam"

    def __init__(self, model, output="logits", reduce="max", positive=False, layer: str = "relu"):
        super().__init__(model, output, reduce, positive, layer)
        self.head = get_layer(model, "fc")
        if not isinstance(self.head, nn.Linear):
            raise ValueError("CAM needs a linear head named 'fc' after global average pooling")

    def channel_weights(self, act, logits, mask):
        return mask.to(self.head.weight.dtype) @ self.head.weight


class Occlusion(SaliencyMethod):
    """Drop of the masked output when a grey patch covers each pixel (Zeiler & Fergus 2014).

    For every patch size a grid of patches (stride half the size) is filled with the
    data mean; a pixel's value is the mean drop over the patches covering it, averaged
    over patch sizes (a scale-free map). Forward passes only, batched per patch size.
    """

    name = "occlusion"

    def __init__(self, model, output="probs", reduce="max", positive=True,
                 patches: tuple[int, ...] = (4, 8, 16), chunk: int = 512):
        super().__init__(model, output, reduce, positive)
        self.patches, self.chunk = tuple(patches), chunk

    @torch.no_grad()
    def attribute(self, x, targets):
        logits, mask = self.clean_forward(x, targets)
        clean = (self.model_output(logits) * mask).sum(1)
        m, _, h, w = x.shape
        total = torch.zeros(m, h, w, device=x.device)
        for p in self.patches:
            stride = max(1, p // 2)
            ys = list(range(0, max(h - p, 0) + 1, stride))
            xs = list(range(0, max(w - p, 0) + 1, stride))
            boxes = [(y, xx) for y in ys for xx in xs]
            covers = torch.zeros(len(boxes), h, w, device=x.device)
            for i, (y, xx) in enumerate(boxes):
                covers[i, y:y + p, xx:xx + p] = 1
            drops = []
            for start in range(0, len(boxes), max(1, self.chunk // m)):
                cov = covers[start:start + max(1, self.chunk // m)]
                occluded = x[None] * (1 - cov[:, None, None])  # mean fill = 0 after normalising
                out = self.model(occluded.flatten(0, 1)).view(len(cov), m, -1)
                drops.append(clean[None] - (self.model_output(out.flatten(0, 1)).view(len(cov), m, -1)
                                            * mask[None]).sum(2))
            drop = torch.cat(drops)  # [P, M]
            heat = torch.einsum("pm,phw->mhw", drop, covers) / covers.sum(0).clamp(min=1)
            total += heat.clamp(min=0) if self.positive else heat.abs()
        return total / len(self.patches), logits


METHODS: dict[str, Callable[..., SaliencyMethod]] = {
    "gradient": Gradient,
    "gradient-positive": GradientPositive,
    "grad-x-input": GradXInput,
    "smoothgrad": SmoothGrad,
    "smoothgrad-sq": lambda model, **kw: SmoothGrad(model, mode="square", **kw),
    "vargrad": lambda model, **kw: SmoothGrad(model, mode="var", **kw),
    "integrated-gradients": IntegratedGradients,
    "layer": LayerInfluence,
    "gradcam": GradCAM,
    "cam": CAM,
    "grad-x-activation": GradientXActivation,
    "occlusion": Occlusion,
}


def make_method(name: str, model: nn.Module, activation: str = "softmax", **options) -> SaliencyMethod:
    """Build a saliency method by its CLI name for a model whose probabilities are the
    ``activation`` of its logits; ``options`` go to its constructor."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    if activation not in OUTPUT_OF:
        raise ValueError(f"unknown activation {activation!r}; choose from {', '.join(OUTPUT_OF)}")
    method = METHODS[name](model, **options)
    method.activation = activation
    return method
