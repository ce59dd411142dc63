"""Candidate generation: each (image, class) row's candidate boxes from its windows' maps, each
box typed with where it came from.

:func:`gather` runs the proposal stage (:func:`~gradloc.discovery.proposals.candidate_boxes`: morphology,
components, the moment box, peak regions) on every window of a plan and adds the frame
hypothesis, giving one :class:`RowCandidates` per row. Later stages read a box's meaning from its
``kinds`` entry, never from its position in the row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..ops.boxes import pad_boxes
from .proposals import candidate_boxes, frame_box

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
    blanked: Tensor | None    # uint8 [M, 3, S, S]: the deletion views the plan made (None: rescoring
    #                           blanks each box in the image's own model-sized view)
    whole_prob: float | None  # with a frame box: the class's probability of the whole view, its crop's
    view_sides: Tensor        # int64 [V], the input side (px) of each of the row's maps
    view_probs: Tensor        # float [V], the class's probability of each of those views (their support)

    @property
    def is_frame(self) -> Tensor:
        """bool [M]: which boxes are the frame hypothesis."""
        return torch.tensor([k == "frame" for k in self.kinds], dtype=torch.bool)


def gather(plan, w, smoothed: Tensor, masks: Tensor, shared: Tensor, config, sizes: Sequence[tuple[int, int]],
           work: Sequence[Tensor]) -> list[RowCandidates]:
    """Every row's candidates from a plan's windows ``w``: ``smoothed`` maps ``[N, h, w]`` and
    their threshold masks ``[L, N, h, w]``; ``shared[r]``: row ``r``'s map was contrasted against
    other named classes of its image (no union box, no frame: its box spans several objects);
    ``config``: the :class:`~gradloc.discovery.config.PipelineConfig` that runs."""
    p, ranking = config.proposals, config.ranking
    deletion = ranking.rescore == "crop-delete"
    rows, start = [], 0
    for r, count in enumerate(w.counts):
        i, c = int(w.row_image[r]), int(w.row_class[r])
        boxes, scores, kinds, sides, blanked = [], [], [], [], []
        for n in range(start, start + count):
            b, s, k = candidate_boxes(smoothed[n], masks[:, n], p, ranking.nms_iou, ranking.top_k,
                                      union_box=False if shared[r] else None, peaks=plan.peak_regions)
            b = pad_boxes(b, p.box_padding)
            boxes.append(plan.place(b, w, n, sizes[i], work[i]))
            scores.append(s * w.support[n])
            kinds += k
            sides += [w.side(n)] * len(b)
            if deletion:
                blanked.append(plan.blanked(b, w, n))
        # the frame hypothesis is judged by the whole view's probability of the class (from the
        # map's own pass); none of an image's several named objects fills its frame
        framed = plan.frame_candidate and p.frame_box > 0 and not shared[r]
        if framed:
            boxes.append(plan.place(frame_box(smoothed.shape[-2:], p.frame_box), w, start, sizes[i], work[i]))
            scores.append(torch.zeros(1))
            kinds.append("frame")
            sides.append(w.side(start))
        views = None if not blanked or blanked[0] is None else torch.cat(blanked)
        if views is not None and framed:
            raise ValueError("a plan that blanks its own views offers no frame box")
        rows.append(RowCandidates(i, c, torch.cat(boxes), torch.cat(scores), kinds, torch.tensor(sides), views,
                                  float(w.probs[i, c]) if framed else None,
                                  torch.tensor([w.side(n) for n in range(start, start + count)]),
                                  w.support[start:start + count].float()))
        start += count
    return rows
