"""Which photographs' rows pick the box their candidates agree on: those whose object is large,
told by the 32x32 view's probability of the class (``--consensus view``, default) or by the input
sizes at which the classifier recognises it (``--consensus scale``)."""
import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

import gradloc
from gradloc.discovery.rescoring import rank_and_fuse, recognised_large

SIDES = torch.tensor([32, 48, 64, 96, 128, 192, 256])


def test_recognised_large_compares_the_coarse_and_the_fine_views():
    falling = torch.tensor([0.9, 0.8, 0.7, 0.5, 0.3, 0.2, 0.1])
    assert recognised_large(SIDES, falling)          # recognised when squeezed: a large object
    assert not recognised_large(SIDES, falling.flip(0))  # only at 192-256 px: a small one
    # the middle is the sizes' geometric mean (sqrt(32 * 256) = 90.5): 96 counts as fine
    assert recognised_large(SIDES, torch.tensor([0.5, 0.5, 0.5, 0.0, 0.4, 0.4, 0.4]))
    assert not recognised_large(SIDES, torch.tensor([0.5, 0.5, 0.5, 1.0, 0.5, 0.5, 0.6]))
    # a photograph too small for the fine sizes has only coarse views: large
    assert recognised_large(torch.tensor([32, 48, 64, 96]), torch.tensor([0.1, 0.1, 0.1, 0.0]))
    assert not recognised_large(torch.tensor([32]), torch.tensor([0.9]))  # one view says nothing of size


class SizeTelling(nn.Module):
    """Two classes; class 0's logit rises as the input shrinks (``coarse``) or grows, so the
    classifier "recognises" it in the coarse or in the fine views; its maps come from a random
    convolution, as any model's would."""

    def __init__(self, coarse: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 2)
        self.sign = 1.0 if coarse else -1.0

    def forward(self, x):
        logits = self.head(self.features(x).mean((2, 3)))
        by_size = self.sign * (96.0 - x.shape[-1]) / 16.0
        return logits + torch.stack([torch.full((len(x),), by_size), torch.zeros(len(x))], 1).to(logits)


@pytest.fixture(scope="module")
def photograph():
    """A 320x240 photograph: a large textured object and two small patches on a flat ground."""
    rng = np.random.default_rng(0)
    img = np.full((240, 320, 3), 30, np.uint8)
    img[60:200, 80:240] = rng.integers(100, 255, (140, 160, 3), dtype=np.uint8)
    img[10:50, 10:50] = rng.integers(100, 255, (40, 40, 3), dtype=np.uint8)
    img[190:230, 270:310] = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    return img


@pytest.mark.parametrize("gate", ["scale", "view"])
@pytest.mark.parametrize("coarse", [True, False])
def test_rows_pick_by_agreement_only_where_the_object_is_recognised_coarse(photograph, coarse, gate):
    """The size-telling classifier gives its class a high probability in the 32x32 view and the
    coarse views (``coarse``), or a low one there and a high one in the fine views: either gate
    takes the first for a large object."""
    gen = gradloc.ProposalGenerator.from_classifier(SizeTelling(coarse), ["near", "far"], 32, (0.5,) * 3, (0.25,) * 3,
                                                    feature_layer="features", precision="fp32", device="cpu",
                                                    consensus=gate)
    out = gen(photograph, classes="near")[0]
    cand = out["candidates"][0]
    agreed = rank_and_fuse(cand.boxes, cand.scores, 0.5, 5, 0.2, consensus=True)[0][0]
    best = rank_and_fuse(cand.boxes, cand.scores, 0.5, 5, 0.2, consensus=False)[0][0]
    assert float(box_iou(agreed[None], best[None])) < 0.9  # the two rules choose different boxes here
    expected = agreed if coarse else best
    torch.testing.assert_close(out["boxes"][0], expected, rtol=0, atol=0.5)
    # --consensus off picks by the evidence alone, whatever the sizes say
    off = gen.with_options(consensus="off")(photograph, classes="near")[0]
    torch.testing.assert_close(off["boxes"][0], best, rtol=0, atol=0.5)
