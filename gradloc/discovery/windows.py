"""Window plans: which views of each image get saliency maps, and how their boxes go back.

The post-processing (:meth:`gradloc.discovery.pipeline.ProposalGenerator.postprocess`) is one loop over
the windows a plan produces. A plan answers a few questions, as hooks or named properties:

- :meth:`WindowPlan.windows`: the saliency maps of a batch, each of one (image, class) row in
  one window, each window's *support* (the class probability that scales its boxes' scores) and
  its *frame*, where its map lies in the plan's *ranking frame* (:meth:`Windows.place` puts a
  window's grid boxes there); a plan whose windows carry their own views has a box blanked in
  its window's view (otherwise in the whole image's model-sized view);
- :meth:`~WindowPlan.to_work` and :meth:`~WindowPlan.to_original` map the ranking frame to the
  working image (rescoring) and to the original image (the result);
- :meth:`WindowPlan.output`: the map and mask returned per row;
- ``contrast``: whether maps of several named classes of one image are contrasted;
- ``rank_without_rescoring``: whether boxes are ranked (NMS, top-k) when rescoring is off;
- ``peak_regions``: whether the regions around each map's strongest peaks are candidates too
  (:func:`~gradloc.discovery.proposals.peak_boxes`): only where a map spans a scene of several objects;
- ``consensus``: whether rows whose object is large (``--consensus``) are ranked by the
  candidates' agreement (:func:`~gradloc.discovery.rescoring.consensus_scores`): only where candidates come
  from many input sizes, whose class probabilities also tell how large the object is;
- ``frame_candidate``: whether a centred box of nearly the whole view is a candidate too (the
  object fills the picture), scored by the whole view's probability: only where the view is a
  whole thumbnail.

:class:`WholeImage` is the plan with one window, the image's own 32x32 view; :class:`Pyramid`
gives the network the whole image at several input sizes (the default for large images);
:class:`MultiScale` cuts overlapping windows at several scales out of the working image.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import multiscale as ms
from ..ops.boxes import crop_windows, place_boxes, resize_uint8, scale_boxes
from ..models.classes import class_rows
from ..models.network import Network
from ..attribution.saliency import GradientXActivation, make_method


@dataclass
class Windows:
    """A batch's saliency windows. ``counts[r]`` consecutive windows belong to row ``r``."""

    row_image: Tensor    # int64 [R]
    row_class: Tensor    # int64 [R]
    probs: Tensor        # float [B, C], each image's class probabilities (its model-sized view)
    maps: Tensor         # float [N, S, S], one saliency map per window (S: the model's input side)
    support: Tensor      # float [N], the window's probability of its row's class
    counts: list[int]    # windows per row, sum N
    frames: Tensor       # float [N, 4], xyxy: where each window's map lies in the plan's ranking frame
    clip: bool = True    # boxes placed in the ranking frame are clipped to their window's frame
    views: Tensor | None = None   # uint8 [N, 3, S, S], the windows' own views (MultiScale)
    named: Tensor | None = None   # bool [R], the row's image was asked for named classes
    sides: list[int] | None = None  # each window's input side in pixels (None: all model-sized views)

    def side(self, n: int) -> int:
        """The longer side of the input window ``n``'s map was computed at."""
        return int(self.maps.shape[-1]) if self.sides is None else self.sides[n]

    def place(self, n: int, boxes: Tensor) -> Tensor:
        """Boxes ``[K, 4]`` on window ``n``'s map grid -> the plan's ranking frame."""
        return place_boxes(boxes, tuple(self.maps.shape[-2:]), self.frames[n], self.clip)


def image_frames(sizes, row_image: Tensor, counts: Sequence[int]) -> Tensor:
    """The frame ``[0, 0, w, h]`` of each window whose map covers its whole original image."""
    per_row = [[0.0, 0.0, float(sizes[int(i)][1]), float(sizes[int(i)][0])] for i in row_image]
    return torch.tensor([f for f, n in zip(per_row, counts) for _ in range(n)], dtype=torch.float32).view(-1, 4)


class WindowPlan:
    """Base plan: hooks with the whole-image behaviour where one exists."""

    contrast = False
    rank_without_rescoring = True
    peak_regions = False
    frame_candidate = False
    consensus = False

    def windows(self, net: Network, x_uint8: Tensor, sizes, specs, work) -> Windows:
        raise NotImplementedError

    def to_work(self, boxes: Tensor, size: tuple[int, int], work: Tensor) -> Tensor:
        return boxes

    def to_original(self, boxes: Tensor, size: tuple[int, int], work: Tensor) -> Tensor:
        return boxes

    def output(self, w: Windows, start: int, smoothed: Tensor, mask: Tensor, size, work) -> tuple[Tensor, Tensor]:
        """The map and mask returned for the row whose windows start at ``start`` (``smoothed``
        and ``mask`` are those windows')."""
        raise NotImplementedError


class WholeImage(WindowPlan):
    """One window per image: its 32x32 view as prepared, the map's grid boxes scaled straight to
    the original image (clipped) and ranked there; the image's own probability as support. A
    centred box of nearly the whole image is a candidate too (:attr:`frame_candidate`).
    Maps of several classes *named* for one image are contrasted (:func:`contrast_maps`). With
    rescoring off, the boxes stay as :func:`~gradloc.discovery.proposals.propose` ranked them. The map
    and mask returned are the window's own."""

    contrast = True
    rank_without_rescoring = False
    frame_candidate = True

    def windows(self, net, x_uint8, sizes, specs, work) -> Windows:
        maps, row_image, row_class, probs = net.saliency_rows(x_uint8, specs)
        return self.from_maps(maps, row_image, row_class, probs, sizes, [kind == "list" for kind, _ in specs])

    @staticmethod
    def from_maps(maps: Tensor, row_image: Tensor, row_class: Tensor, probs: Tensor, sizes,
                  named: Sequence[bool] | None = None) -> Windows:
        """The plan's windows from maps computed elsewhere (a test's, a cache's); ``sizes``: each
        image's original ``(h, w)``."""
        named_rows = (torch.ones(len(row_image), dtype=torch.bool) if named is None
                      else torch.tensor(list(named), dtype=torch.bool)[row_image])
        counts = [1] * len(row_image)
        return Windows(row_image, row_class, probs, maps, probs[row_image, row_class], counts,
                       image_frames(sizes, row_image, counts), named=named_rows)

    def to_work(self, boxes, size, work):
        return scale_boxes(boxes, size, work.shape[-2:])

    def output(self, w, start, smoothed, mask, size, work):
        return smoothed[0], mask[0]


class MultiScale(WindowPlan):
    """Overlapping windows at several scales cut from the working image (``options.scales``,
    at most ``max_windows``), all scored in one forward pass; the ``top`` best-supported windows
    of each row get maps, with the window's own probability as support. Boxes are placed in the
    working image unclipped, ranked there (always), then scaled (clipped) to the original. A box
    is blanked in its own window's view (in the whole image a small box would vanish). The map
    returned is the windows' maps, each normalised to its maximum and weighted by its support,
    averaged on a working grid; the mask, where any window kept a pixel. No class contrast."""

    def __init__(self, scales, max_windows: int, top: int) -> None:
        self.scales, self.max_windows, self.top = scales, max_windows, top

    def windows(self, net, x_uint8, sizes, specs, work) -> Windows:
        logits = net.logits(x_uint8)  # one pass: the top-k classes and the image's probabilities
        row_image, row_class = class_rows(specs, lambda: logits)
        probs = net.spec.probabilities(logits).cpu()
        if row_class is None:
            row_class = probs.argmax(1)
        boxes, crops = [], []
        for i, img in enumerate(work):
            h, w = img.shape[-2:]
            boxes.append(ms.window_boxes(h, w, ms.resolve_scales(self.scales, sizes[i]), self.max_windows))
            crops.append(crop_windows(img, boxes[-1], x_uint8.shape[-1]))
        # Forward only: every window's class probabilities, shared by all classes of an image.
        window_probs = net.class_probs(torch.cat(crops)).split([len(c) for c in crops])
        # Gradients only for each row's best-supported windows, all rows in one batch.
        picks = [ms.top_windows(window_probs[int(i)][:, int(c)], self.top) for i, c in zip(row_image, row_class)]
        counts = [len(p) for p in picks]
        views = torch.cat([crops[int(i)][p] for i, p in zip(row_image, picks)])
        classes = torch.cat([torch.full((n,), int(c)) for c, n in zip(row_class, counts)])
        maps, support = net.saliency_views(views, classes)
        return Windows(row_image, row_class, probs, maps, support, counts,
                       torch.cat([boxes[int(i)][p] for i, p in zip(row_image, picks)]), clip=False, views=views)

    def to_original(self, boxes, size, work):
        return scale_boxes(boxes, work.shape[-2:], size)

    def output(self, w, start, smoothed, mask, size, work):
        h, wd = work.shape[-2:]
        picked = w.frames[start:start + len(smoothed)]
        support = w.support[start:start + len(smoothed)]
        grid = ms.work_size(h, wd)
        return (ms.accumulate(smoothed, support, picked, (h, wd), grid),
                ms.accumulate(mask.float(), torch.ones(len(mask)), picked, (h, wd), grid) > 0)


PYRAMID_GRID = 64  # every size's map is resampled to this grid over the whole image
# the model-sized view's class probability above which a row's object counts as recognised, and
# large (--consensus view, --fine-inputs unrecognised)
VIEW_CONSENSUS = 0.5


def resize_longer_side(image: Tensor, side: int) -> Tensor:
    """``uint8 [3, H, W]`` resized (antialiased) so its longer side is ``side``, aspect kept."""
    h, w = image.shape[-2:]
    f = side / max(h, w)
    return resize_uint8(image, (max(1, round(h * f)), max(1, round(w * f))))


class Pyramid(WindowPlan):
    """The whole image at several input sizes, every map boxed and every box rescored in one
    pool, so that the evidence of small and large inputs competes on the classifier's answer.

    A CIFAR-10 network recognises objects of about its input's size, so a photograph squeezed
    into 32x32 keeps only its large objects. The network is fully convolutional: given the image
    with its longer side at 64 or 128 pixels (aspect kept), each location of its final features
    sees a region of the photograph at CIFAR scale. Each row gets one map per size: the 32x32
    view's from the pipeline's method, the larger inputs' from :class:`GradientXActivation`
    (input gradients of a large input are dominated by texture). Maps are resampled to a
    :data:`PYRAMID_GRID` grid over the whole image. Each map gives the pipeline's boxes plus the
    regions around its strongest peaks (:attr:`peak_regions`); the boxes of all sizes are
    candidates of one row, so rescoring (a crop must hold the class, the image without the box
    must lose it) decides between a part at a fine size and the whole object at a coarse one.
    Sizes above the working image's longer side add no detail and are skipped; sizes above
    ``fine_above`` (``--fine-inputs``) run only for the rows whose model-sized view does not
    recognise their class (:data:`VIEW_CONSENSUS`): a recognised object is large, and inputs
    that fine show it in parts. Rows of images of
    one shape run as one batch per size, and the classes asked of one image share its forward
    pass at each size (:meth:`GradientXActivation.attribute_rows`). The map returned is the
    sizes' maps, each normalised to its maximum, averaged; the mask, where any size kept a
    pixel. No class contrast.
    """

    rank_without_rescoring = True
    # Rows whose object is large pick by the candidates' agreement (Options.consensus): many sizes'
    # boxes hold a large object, and their consensus is it; the sizes' class probabilities say
    # which objects are large (rescoring.recognised_large).
    consensus = True
    # A photograph's map has a peak on each object it responds to; a mass threshold over the
    # whole map joins them. (On object-centred thumbnails peak regions cut the one object into
    # parts, so the other plans leave them out: BENCHMARKS.md, History.)
    peak_regions = True

    def __init__(self, sizes: Sequence[int], model, layer: str | None = "relu", activation: str = "softmax",
                 fine_above: int | None = None) -> None:
        self.sizes, self.model, self.layer, self._method = tuple(sizes), model, layer, None
        self.activation = activation  # how the model's logits become probabilities (its spec's)
        # inputs above this side only for rows their model-sized view does not recognise (--fine-inputs)
        self.fine_above = fine_above

    @property
    def large_input_method(self) -> GradientXActivation:
        if self._method is None:  # built on first use: a model without the layer fails only here
            from ..models.classifier import find_feature_layer
            self._method = make_method("grad-x-activation", self.model, self.activation,
                                       layer=find_feature_layer(self.model, self.layer))
        return self._method

    def windows(self, net, x_uint8, sizes, specs, work) -> Windows:
        logits = net.logits(x_uint8)
        row_image, row_class = class_rows(specs, lambda: logits)
        probs = net.spec.probabilities(logits).cpu()
        if row_class is None:
            row_class = probs.argmax(1)
        rows_of = defaultdict(list)
        for r, i in enumerate(row_image.tolist()):
            rows_of[i].append(r)
        # per row, its maps in size order: the 32x32 view first, all rows in one batch
        first, first_support = net.saliency_views(x_uint8[row_image], row_class)
        per_row: list[list[Tensor]] = [[self.to_grid(m)] for m in first]
        support: list[list[Tensor]] = [[p] for p in first_support]
        sides: list[list[int]] = [[int(x_uint8.shape[-1])] for _ in first]
        recognised = probs[row_image, row_class] > VIEW_CONSENSUS
        for side in self.sizes:
            fine = self.fine_above is not None and side > self.fine_above
            # the rows that take this size: at a fine one, those their model-sized view does not recognise
            takes = {i: [r for r in rs if not (fine and recognised[r])] for i, rs in rows_of.items()}
            groups = defaultdict(list)  # images of one shape at this size run together
            for i, img in enumerate(work):
                if side <= max(img.shape[-2:]) and takes.get(i):
                    groups[tuple(img.shape[-2:])].append(i)
            for members in groups.values():
                views = torch.stack([resize_longer_side(work[i], side) for i in members])
                rows = [r for i in members for r in takes[i]]
                where = torch.tensor([members.index(int(row_image[r])) for r in rows])
                # the classes asked of one photograph share its forward pass at this size
                maps, p = net.saliency_view_rows(views, where, row_class[rows], self.large_input_method)
                for r, m, q in zip(rows, maps, p):
                    per_row[r].append(self.to_grid(m))
                    support[r].append(q)
                    sides[r].append(side)
        counts = [len(ms_) for ms_ in per_row]
        return Windows(row_image, row_class, probs, torch.stack([m for ms_ in per_row for m in ms_]),
                       torch.stack([q for qs in support for q in qs]), counts, image_frames(sizes, row_image, counts),
                       sides=[s for ss in sides for s in ss])

    @staticmethod
    def to_grid(m: Tensor) -> Tensor:
        return F.interpolate(m[None, None].float(), size=(PYRAMID_GRID, PYRAMID_GRID), mode="bilinear",
                             align_corners=False)[0, 0]

    def to_work(self, boxes, size, work):
        return scale_boxes(boxes, size, work.shape[-2:])

    def output(self, w, start, smoothed, mask, size, work):
        peak = smoothed.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
        return (smoothed / peak).mean(0), mask.any(0)


def contrasted(w: Windows, enabled: bool) -> tuple[Tensor, Tensor]:
    """The class contrast of a :class:`WholeImage` batch: rows whose image was asked for several
    named classes ``bool [R]``, and the maps with those rows contrasted."""
    shared = (torch.bincount(w.row_image)[w.row_image] > 1) & enabled
    if w.named is not None:
        shared &= w.named
    maps = w.maps
    if shared.any():
        maps = maps.clone()
        maps[shared] = contrast_maps(maps[shared], w.row_image[shared])
    return shared, maps


def contrast_maps(maps: Tensor, row_image: Tensor) -> Tensor:
    """Class-contrastive maps: each row minus the strongest other row of the same image.

    A gradient map of one class also lights up the image's other objects (their pixels move
    every logit, and a probability's gradient carries the other classes' terms), so with
    several classes asked for one image each map keeps only where it beats the others. Rows
    are compared as shares of their own total, and the result keeps the row's scale.

    Parameters
    ----------
    maps : Tensor, float, [R, H, W], >= 0
    row_image : Tensor, int, [R]
        The image of each row; rows alone in their image are returned unchanged.

    Returns
    -------
    Tensor, [R, H, W], >= 0
    """
    out = maps.clone()
    total = maps.flatten(1).sum(1).clamp_min(1e-12)[:, None, None]
    shares = maps / total
    for r in range(len(maps)):
        rivals = (row_image == row_image[r]) & (torch.arange(len(maps)) != r)
        if rivals.any():
            kept = (shares[r] - shares[rivals].amax(0)).clamp_min(0)
            if kept.any():  # a map beaten everywhere keeps its own evidence rather than none
                out[r] = kept * total[r]
    return out
