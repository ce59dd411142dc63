"""Candidate generation: each (image, class) row's candidate boxes from its windows' maps, each
box typed with where it came from.

:class:`CandidateMaker` runs the proposal stage (:func:`~gradloc.discovery.proposals.candidate_boxes`:
morphology, components, the moment box, peak regions) on every window of a batch, places each
window's boxes with the window's own placement (:meth:`~gradloc.discovery.windows.Windows.place`)
and adds the frame hypothesis, giving one :class:`RowCandidates` per row. Later stages read a
box's meaning from its ``kinds`` entry, never from its position in the row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..ops.boxes import blank_boxes, pad_boxes
from .proposals import candidate_boxes, frame_box
from .windows import Windows

KINDS = ("component", "moment", "peak", "frame")


@dataclass(frozen=True)
class RowCandidates:
    """One (image, class) row's candidates as generated, before rescoring and selection."""

    image: int                # the row's image in the batch
    cls: int                  # its class index
    boxes: Tensor             # float [M, 4], xyxy in the plan's ranking frame
    scores: Tensor            # float [M], component score x the window's support (the ranking without rescoring)
    kinds: list[str]          # per box, one of KINDS: a threshold rung's component, the moment box,
    #                           a peak region, or the frame (the object fills the view)
    sides: Tensor             # int64 [M], the input side (px) of the map each box came from
    blanked: Tensor | None    # uint8 [M, 3, S, S]: the deletion views of the windows' own views (None:
    #                           rescoring blanks each box in the image's own model-sized view)
    whole_prob: float | None  # with a frame box: the class's probability of the whole view, its crop's
    view_sides: Tensor        # int64 [V], the input side (px) of each of the row's maps
    view_probs: Tensor        # float [V], the class's probability of each of those views (their support)

    @property
    def is_frame(self) -> Tensor:
        """bool [M]: which boxes are the frame hypothesis."""
        return torch.tensor([k == "frame" for k in self.kinds], dtype=torch.bool)


class CandidateMaker:
    """The proposal stage's settings, given once: morphology ``morph`` with a ``kernel``,
    components scored by ``score``, the ``union_box``, NMS at ``nms_iou`` and the ``top_k`` best
    of one threshold; the ``moment`` box (standard deviations, 0: off), ``peaks`` regions at
    ``peak_shares`` (where the plan asks for them); boxes grown by ``padding``; the ``frame``
    box's share of each side (0: off, where the plan offers it); ``blank``: the deletion views
    of windows that carry their own views, filled with ``fill``."""

    def __init__(self, *, morph: str, kernel: int, score: str, union_box: bool, nms_iou: float,
                 top_k: int | None, moment: float, peaks: int, peak_shares: Sequence[float], padding: float,
                 frame: float, blank: bool, fill: Sequence[float]) -> None:
        self.box_args = dict(morph=morph, kernel=kernel, score=score, nms_iou=nms_iou, top_k=top_k, moment=moment)
        self.peaks, self.peak_shares, self.union_box = peaks, tuple(peak_shares), union_box
        self.padding, self.frame, self.blank, self.fill = padding, frame, blank, tuple(fill)

    def rows(self, w: Windows, smoothed: Tensor, masks: Tensor, shared: Tensor, peak_regions: bool,
             frame_candidate: bool) -> list[RowCandidates]:
        """Every row's candidates from a batch's windows ``w``: ``smoothed`` maps ``[N, h, w]`` and
        their threshold masks ``[L, N, h, w]``; ``shared[r]``: row ``r``'s map was contrasted
        against other named classes of its image (no union box, no frame: its box spans several
        objects); ``peak_regions`` and ``frame_candidate``: whether the plan asks for those."""
        rows, start = [], 0
        for r, count in enumerate(w.counts):
            i, c = int(w.row_image[r]), int(w.row_class[r])
            boxes, scores, kinds, sides, blanked = [], [], [], [], []
            for n in range(start, start + count):
                b, s, k = candidate_boxes(smoothed[n], masks[:, n], union_box=self.union_box and not shared[r],
                                          peaks=self.peaks if peak_regions else 0, peak_shares=self.peak_shares,
                                          **self.box_args)
                b = pad_boxes(b, self.padding)
                boxes.append(w.place(n, b))
                scores.append(s * w.support[n])
                kinds += k
                sides += [w.side(n)] * len(b)
                if self.blank and w.views is not None:
                    blanked.append(blank_boxes(w.views[n], b, self.fill))
            # the frame hypothesis is judged by the whole view's probability of the class (from the
            # map's own pass); none of an image's several named objects fills its frame
            framed = frame_candidate and self.frame > 0 and not shared[r]
            if framed:
                boxes.append(w.place(start, frame_box(smoothed.shape[-2:], self.frame)))
                scores.append(torch.zeros(1))
                kinds.append("frame")
                sides.append(w.side(start))
            views = torch.cat(blanked) if blanked else None
            if views is not None and framed:
                raise ValueError("a plan that blanks its own views offers no frame box")
            rows.append(RowCandidates(i, c, torch.cat(boxes), torch.cat(scores), kinds, torch.tensor(sides), views,
                                      float(w.probs[i, c]) if framed else None,
                                      torch.tensor([w.side(n) for n in range(start, start + count)]),
                                      w.support[start:start + count].float()))
            start += count
        return rows
