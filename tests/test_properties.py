"""Property-based tests (hypothesis): box operations, the top-N threshold, the class mask."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import box_iou, clip_boxes_to_image

from gradloc.ops.boxes import scale_boxes
from gradloc.attribution.saliency import make_method
from gradloc.discovery.threshold import mass, top_n

coord = st.floats(0, 500, allow_nan=False, width=32)


@st.composite
def boxes(draw, n=st.integers(1, 6)):
    k = draw(n)
    out = []
    for _ in range(k):
        x0, x1 = sorted([draw(coord), draw(coord)])
        y0, y1 = sorted([draw(coord), draw(coord)])
        out.append([x0, y0, x1 + 1, y1 + 1])  # positive area
    return torch.tensor(out)


@given(boxes(), boxes())
def test_iou_symmetric_and_bounded(a, b):
    ab, ba = box_iou(a, b), box_iou(b, a)
    torch.testing.assert_close(ab, ba.T)
    assert (ab >= 0).all() and (ab <= 1 + 1e-6).all()
    assert torch.allclose(box_iou(a, a).diagonal(), torch.ones(len(a)), atol=1e-5)


@given(boxes(), st.integers(1, 4000), st.integers(1, 4000))
def test_scaling_round_trip(b, h, w):
    grid = b / 520 * 32  # boxes inside the 32x32 grid
    there = scale_boxes(grid, (32, 32), (h, w))
    back = scale_boxes(there, (h, w), (32, 32))
    torch.testing.assert_close(back, grid, rtol=1e-4, atol=1e-3)


@given(boxes(), st.integers(1, 300), st.integers(1, 300))
def test_clipping_stays_inside(b, h, w):
    c = clip_boxes_to_image(b - 100, (h, w))
    assert (c[:, 0::2] >= 0).all() and (c[:, 0::2] <= w).all()
    assert (c[:, 1::2] >= 0).all() and (c[:, 1::2] <= h).all()
    assert (c[:, 2] >= c[:, 0]).all() and (c[:, 3] >= c[:, 1]).all()


@given(st.integers(0, 2**31 - 1), st.integers(0, 1024))
def test_top_n_keeps_exactly_n_without_ties(seed, n):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randperm(1024, generator=g).float().add(1).view(1, 32, 32)  # distinct, > 0
    mask = top_n(maps, n)
    assert mask.sum() == n
    if 0 < n < 1024:
        assert maps[mask].min() > maps[~mask].max()


@given(st.integers(0, 2**31 - 1), st.floats(0.01, 1.0))
def test_mass_share_is_reached_by_the_largest_pixels(seed, share):
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(2, 16, 16, generator=g) ** 3
    mask = mass(maps, share)
    for m, k in zip(maps.double(), mask):  # sums in float64; the threshold works in float32
        kept, total = m[k].sum(), m.sum()
        assert kept >= share * total * (1 - 1e-5)
        # minimal: dropping the smallest kept pixel falls below the share
        assert kept - m[k].min() < share * total * (1 + 1e-5)
        assert k.all() or m[k].min() >= m[~k].max()


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 6), st.sampled_from(["gradient", "gradient-positive", "layer"]))
def test_map_is_independent_of_batch_neighbours(random_wrn, seed, batch, method):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 32, 32, generator=g)
    targets = torch.randint(0, 10, (batch,), generator=g)
    m = make_method(method, random_wrn)
    together, _ = m(x, targets)
    k = int(torch.randint(0, batch, (1,), generator=g))
    alone, _ = m(x[k:k + 1], targets[k:k + 1])
    torch.testing.assert_close(together[k], alone[0], rtol=1e-4, atol=1e-6)
