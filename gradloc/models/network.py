"""The classifier's passes the pipeline needs, batched and in the chosen precision.

Every pass takes ``uint8 [N, 3, 32, 32]`` views: class probabilities without gradients
(:meth:`Network.class_probs`, for window scoring and rescoring) and class-masked saliency maps
(:meth:`Network.saliency_rows` for the rows of whole images, :meth:`Network.saliency_views` for
one class per view).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .classes import class_rows
from .classifier import CIFAR10, ClassifierSpec


class Network:
    """``model`` on ``device`` in chunks of ``batch_size``, under bf16 autocast when ``amp``;
    ``flip``: whole images' maps averaged with their mirror image's; ``spec``: the model's input
    normalisation; ``forward_model``: the network for passes without gradients (the model's int8
    copy under ``--precision int8``; by default the model)."""

    def __init__(self, model: nn.Module, method, device: torch.device, batch_size: int,
                 amp: bool = False, flip: bool = False, spec: ClassifierSpec = CIFAR10,
                 forward_model: nn.Module | None = None) -> None:
        self.model, self.method, self.device, self.batch_size, self.amp = model, method, device, batch_size, amp
        self.flip, self.spec = flip, spec
        self.forward_model = model if forward_model is None else forward_model

    def model_input(self, x_uint8: Tensor) -> Tensor:
        """``uint8 [B, 3, S, S]`` -> normalised float on the device, channels_last."""
        return self.spec.normalize(x_uint8.to(self.device)).contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def logits(self, x_uint8: Tensor) -> Tensor:
        """One forward pass (the image-level probe), ``[B, C]`` in fp32, by the forward model."""
        return self.forward_model(self.model_input(x_uint8)).float()

    def class_probs(self, views: Tensor) -> Tensor:
        """Class probabilities ``[N, C]`` (on the CPU) of ``uint8 [N, 3, 32, 32]``, no gradients."""
        out = []
        with torch.no_grad():
            for s in range(0, len(views), self.batch_size):
                xb = self.model_input(views[s:s + self.batch_size])
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                    out.append(self.spec.probabilities(self.forward_model(xb).float()).cpu())
        return torch.cat(out)

    def saliency_rows(self, x_uint8: Tensor, specs: list[tuple[str, object]]):
        """Maps of whole images' rows: ``uint8 [B, 3, 32, 32]`` and each image's parsed class
        request -> maps ``[R, 32, 32]``, row image ``[R]``, row class ``[R]``, probabilities ``[B, C]``
        (from the same forward pass as the maps)."""
        x = self.model_input(x_uint8)
        row_image, row_class = class_rows(specs, lambda: self._probe(x))
        rows = x[row_image.to(self.device)] if row_class is not None else x
        targets = row_class.to(self.device) if row_class is not None else (lambda z: z.argmax(1))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            maps, logits = self.method(rows, targets)
            if self.flip:
                # Test-time augmentation: the mirrored view's map, mirrored back, for the same
                # classes; the average keeps what both views agree on (a map's noise is not
                # mirror-symmetric, an object's extent is).
                mirrored, _ = self.method(rows.flip(-1), logits.argmax(1) if row_class is None else targets)
                maps = (maps + mirrored.flip(-1)) / 2
        if row_class is None:
            row_class = logits.argmax(1).cpu()
        probs = torch.zeros(len(specs), logits.shape[1])
        probs[row_image] = self.spec.probabilities(logits.float()).cpu()  # rows of one image share its logits
        return maps.detach().cpu(), row_image, row_class, probs

    def saliency_views(self, views: Tensor, classes: Tensor,
                       method=None) -> tuple[Tensor, Tensor]:
        """The saliency method (or ``method``) on ``uint8 [N, 3, h, w]`` views (32x32, or any
        one size: the network is fully convolutional), one class each, in chunks -> maps
        ``[N, h, w]`` and each view's probability of its class ``[N]``."""
        method = method or self.method
        maps, class_probs = [], []
        for s in range(0, len(views), self.batch_size):
            xb = self.model_input(views[s:s + self.batch_size])
            cb = classes[s:s + self.batch_size].to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                m, logits = method(xb, cb)
            maps.append(m.detach().float().cpu())
            class_probs.append(self.spec.probabilities(logits.detach().float()).gather(1, cb[:, None])[:, 0].cpu())
        return torch.cat(maps), torch.cat(class_probs)

    def saliency_view_rows(self, views: Tensor, view_of_row: Tensor, classes: Tensor, method) -> tuple[Tensor, Tensor]:
        """A layer method's maps (``method.attribute_rows``) of rows ``[R]`` over views ``uint8
        [N, 3, h, w]`` of one size: row ``r`` is view ``view_of_row[r]`` with class ``classes[r]``,
        and each view passes forward once for all its rows, in chunks of views -> maps ``[R, h,
        w]`` and each row's probability of its class ``[R]``, in row order."""
        maps = torch.empty(len(view_of_row), *views.shape[-2:])
        class_probs = torch.empty(len(view_of_row))
        for s in range(0, len(views), self.batch_size):
            rows = ((view_of_row >= s) & (view_of_row < s + self.batch_size)).nonzero()[:, 0]
            if not len(rows):
                continue
            xb = self.model_input(views[s:s + self.batch_size])
            cb = classes[rows].to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                m, logits = method.attribute_rows(xb, view_of_row[rows] - s, cb)
            maps[rows] = m.detach().float().cpu()
            class_probs[rows] = self.spec.probabilities(logits.detach().float()).gather(1, cb[:, None])[:, 0].cpu()
        return maps, class_probs

    @torch.no_grad()
    def _probe(self, x: Tensor) -> Tensor:
        return self.model(x).float()
