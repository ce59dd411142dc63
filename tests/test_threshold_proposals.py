"""Thresholds and proposals on hand-made maps with known answers."""
import numpy as np
import pytest
import torch

from gradloc.ops.boxes import scale_boxes
from gradloc.discovery.proposals import (candidate_boxes, box_contrast, component_boxes, moment_box, morphology, propose, rank,
                               union_box)
from gradloc.discovery.rescoring import fuse_best, rank_and_fuse
from gradloc.discovery.threshold import fraction_of_max, mass, otsu, percentile, threshold, top_n


def two_blobs():
    """A 32x32 map with a strong 4x5 blob and a weaker 3x3 blob."""
    m = np.zeros((32, 32), np.float32)
    m[2:6, 3:8] = 2.0     # rows 2..5, cols 3..7: 20 pixels, mass 40
    m[20:23, 25:28] = 1.0  # rows 20..22, cols 25..27: 9 pixels, mass 9
    return m


def test_two_blobs_give_exactly_their_boxes():
    m = two_blobs()
    mask = top_n(torch.from_numpy(m)[None], 29)[0].numpy()
    assert mask.sum() == 29
    boxes, scores = propose(m, mask, morph="close", kernel=3, top_k=5)
    assert boxes.tolist() == [[3.0, 2.0, 8.0, 6.0], [25.0, 20.0, 28.0, 23.0]]
    assert scores.tolist() == pytest.approx([40 / 49, 9 / 49])


def test_union_box_and_top_k():
    m = two_blobs()
    mask = m > 0
    boxes, scores = propose(m, mask, include_union=True, top_k=None, nms_iou=0.9)
    assert [3.0, 2.0, 28.0, 23.0] in boxes.tolist()
    assert scores[0] == pytest.approx(1.0)  # the union holds all the mass
    boxes1, _ = propose(m, mask, top_k=1)
    assert boxes1.tolist() == [[3.0, 2.0, 8.0, 6.0]]


def test_closing_joins_a_one_pixel_gap_and_eight_connectivity():
    mask = np.zeros((10, 10), np.uint8)
    mask[2, 2:4] = 1
    mask[2, 5:7] = 1          # gap at column 4
    assert len(component_boxes(mask, mask.astype(float))[0]) == 2
    closed = morphology(mask, "close", 3, "rect")
    assert len(component_boxes(closed, closed.astype(float))[0]) == 1
    diag = np.zeros((5, 5), np.uint8)
    diag[1, 1] = diag[2, 2] = 1  # diagonal neighbours: one 8-connected component
    assert component_boxes(diag, diag.astype(float))[0].tolist() == [[1, 1, 3, 3]]


def test_empty_mask_gives_no_boxes():
    boxes, scores = propose(np.zeros((32, 32), np.float32), np.zeros((32, 32), bool))
    assert boxes.shape == (0, 4) and scores.shape == (0,)
    assert union_box(np.zeros((4, 4))) is None


@pytest.mark.parametrize("size", [(45, 77), (1, 1), (1001, 3), (32, 32)])
def test_scale_boxes_to_odd_sizes(size):
    grid = torch.tensor([[0.0, 0.0, 32.0, 32.0], [8.0, 16.0, 24.0, 20.0]])
    out = scale_boxes(grid, (32, 32), size)
    h, w = size
    torch.testing.assert_close(out[0], torch.tensor([0.0, 0.0, w, h]))
    torch.testing.assert_close(out[1], torch.tensor([w / 4, h / 2, w * 3 / 4, h * 20 / 32]))


def test_scale_boxes_clips():
    out = scale_boxes(torch.tensor([[-2.0, -1.0, 40.0, 33.0]]), (32, 32), (64, 64))
    assert out.tolist() == [[0.0, 0.0, 64.0, 64.0]]


def test_top_n_ties_break_in_raster_order():
    m = torch.ones(1, 4, 4)
    mask = top_n(m, 5)[0]
    assert mask.flatten().tolist() == [True] * 5 + [False] * 11


def test_top_n_never_keeps_zero_saliency():
    m = torch.zeros(1, 4, 4)
    m[0, 1, 1] = 1
    assert top_n(m, 5).sum() == 1


def test_mass_keeps_the_fewest_pixels_reaching_the_share():
    m = torch.tensor([[[4.0, 3.0, 2.0, 1.0, 0.0]]])  # total 10
    assert mass(m, 0.4)[0, 0].tolist() == [True, False, False, False, False]   # 4 >= 4
    assert mass(m, 0.41)[0, 0].tolist() == [True, True, False, False, False]   # 4 < 4.1 <= 7
    assert mass(m, 1.0)[0, 0].tolist() == [True, True, True, True, False]      # never a zero
    assert mass(m, 0.0).sum() == 0


def test_mass_adapts_to_how_spread_the_map_is():
    peaked, spread = torch.zeros(1, 32, 32), torch.ones(1, 32, 32)
    peaked[0, 10:14, 10:14] = 100.0  # 16 pixels carry 99.9% of the mass
    assert mass(peaked, 0.5).sum() == 8
    assert mass(spread, 0.5).sum() == 512
    assert torch.equal(threshold(peaked, "mass", 0.5), mass(peaked, 0.5))


def test_fraction_percentile_otsu():
    m = torch.tensor([[[0.0, 0.1, 0.5], [0.9, 1.0, 0.2], [0.0, 0.0, 0.0]]])
    assert fraction_of_max(m, 0.5).sum() == 3
    assert percentile(m, 50).sum() == 4
    bimodal = torch.zeros(1, 10, 10)
    bimodal[0, :3] = 1.0
    bimodal[0, 3:] = 0.05
    assert otsu(bimodal).sum() == 30
    assert otsu(torch.ones(1, 5, 5)).sum() == 0  # a flat map has no foreground
    with pytest.raises(ValueError):
        threshold(m, "magic")


def test_box_contrast_exact_and_in_propose():
    sal = np.zeros((10, 10), np.float32)
    sal[2:4, 2:4] = 1.0           # 4 units in a 2x2 patch
    sal[9, 9] = 4.0               # 4 units in one pixel
    boxes = np.array([[2, 2, 4, 4], [0, 0, 10, 10], [9, 9, 10, 10]], np.float32)
    # saliency share minus area share: 0.5 - 0.04, 1 - 1, 0.5 - 0.01
    np.testing.assert_allclose(box_contrast(sal, boxes), [0.46, 0.0, 0.49], atol=1e-6)
    # In propose, the union box is scored the same way, so it cannot win just by being larger.
    mask = (sal > 0).astype(np.uint8)
    b, s = propose(sal, mask, morph="none", score="contrast", include_union=True, top_k=None)
    assert b[0].tolist() == [9, 9, 10, 10] and s[0].item() == pytest.approx(0.49)
    union = [i for i, x in enumerate(b.tolist()) if x == [2, 2, 10, 10]]
    assert union and s[union[0]].item() == pytest.approx(1.0 - 0.64)


def test_fusion_averages_the_best_box_with_its_neighbours_by_score():
    boxes = torch.tensor([[10.0, 10, 30, 30],    # best
                          [8.0, 8, 32, 32],      # a larger neighbour, IoU 0.69
                          [14.0, 14, 26, 26],    # a smaller one, IoU 0.36
                          [40.0, 40, 60, 60]])   # another object: no overlap, never fused
    scores = torch.tensor([0.9, 0.8, 0.5, 0.95 - 1.0])
    w = torch.tensor([0.0, -0.1, -0.4]).div(0.1).softmax(0)  # softmax((s - s_best) / T) over the first three
    expected = (w[:, None] * boxes[:3]).sum(0)
    torch.testing.assert_close(fuse_best(boxes, scores, 0.1), expected)
    # A far-off box with the top score is fused alone (nothing overlaps it): it stays as it is.
    assert fuse_best(boxes, torch.tensor([0.1, 0.1, 0.1, 0.9]), 0.1).tolist() == [40, 40, 60, 60]
    # A cold temperature keeps the best box; a hot one tends to the plain mean of the cluster.
    torch.testing.assert_close(fuse_best(boxes, scores, 1e-4), boxes[0])
    torch.testing.assert_close(fuse_best(boxes, scores, 1e4), boxes[:3].mean(0), atol=1e-3, rtol=0)
    # In rank, only the first proposal is replaced; the others are NMS's survivors, best first.
    b, s = rank_and_fuse(boxes, scores, nms_iou=0.5, top_k=5, fuse=0.1)
    torch.testing.assert_close(b[0], expected)
    assert b[1:].tolist() == [[14, 14, 26, 26], [40, 40, 60, 60]] and s.tolist() == pytest.approx([0.9, 0.5, -0.05])
    b0, _ = rank(boxes, scores, nms_iou=0.5, top_k=5)
    assert b0[0].tolist() == [10, 10, 30, 30]


def test_moment_box_spans_the_spread_of_the_map():
    m = np.zeros((32, 32), np.float32)
    m[8:24, 4:12] = 1.0   # uniform: centres 8.5..23.5 (rows), 4.5..11.5 (columns)
    m[0, 31] = -50.0      # negative evidence is not mass
    sd_rows, sd_cols = np.sqrt((16 ** 2 - 1) / 12), np.sqrt((8 ** 2 - 1) / 12)
    expected = [8 - 1.5 * sd_cols, 16 - 1.5 * sd_rows, 8 + 1.5 * sd_cols, 16 + 1.5 * sd_rows]
    np.testing.assert_allclose(moment_box(m, 1.5)[0].numpy(), expected, rtol=1e-5)
    assert moment_box(m, 20)[0].tolist() == [0, 0, 32, 32]  # clipped to the grid
    assert moment_box(np.zeros((32, 32)), 1.5).shape == (0, 4)


def boxes_from_mask(m, masks, config, peaks=False):
    """The candidate boxes and scores of one map under a :class:`~gradloc.discovery.config.ProposalConfig`."""
    return candidate_boxes(m, masks, morph=config.morph, kernel=config.kernel, score=config.component_score,
                           union_box=config.union_box, moment=config.moment_box, peaks=config.peaks if peaks else 0,
                           peak_shares=config.peak_shares())[:2]


def test_moment_box_is_a_rescoring_candidate_only():
    from gradloc.discovery.config import Options
    m = torch.zeros(32, 32)
    m[8:24, 4:12] = 1.0
    masks = (m > 0)[None].expand(2, 32, 32)
    with_rescoring, _ = boxes_from_mask(m, masks, Options(frame_box=False).effective().proposals)
    assert len(with_rescoring) == 3 and with_rescoring[-1].tolist() == moment_box(m.numpy(), 1.5)[0].tolist()
    assert len(boxes_from_mask(m, masks, Options(moment_box=0, frame_box=False).effective().proposals)[0]) == 2
    assert len(boxes_from_mask(m, masks[:1], Options(rescore="off").effective().proposals)[0]) == 1


def test_peak_boxes_box_each_peak_by_its_own_value():
    from gradloc.discovery.proposals import peak_boxes
    m = two_blobs()
    # the weak blob's region at half *its* value is its own 3x3, not lost to the strong blob
    assert peak_boxes(m, 2, (0.5,)).tolist() == [[3, 2, 8, 6], [25, 20, 28, 23]]
    assert peak_boxes(m, 1, (0.5,)).tolist() == [[3, 2, 8, 6]]  # strongest first
    assert peak_boxes(m, 2, (0.5,), min_peak=0.6).tolist() == [[3, 2, 8, 6]]  # 1.0 < 0.6 * 2.0
    smooth = torch.nn.functional.avg_pool2d(torch.from_numpy(m)[None, None], 3, 1, 1)[0, 0].numpy()
    b = peak_boxes(smooth, 1, (0.9, 0.1))
    assert len(b) == 2 and (b[0, 2:] - b[0, :2] < b[1, 2:] - b[1, :2]).all()  # lower share, larger region
    assert peak_boxes(np.zeros((32, 32)), 3).shape == (0, 4)
    assert peak_boxes(m, 0).shape == (0, 4)


def test_peak_regions_are_rescoring_candidates_of_plans_that_ask():
    from gradloc.discovery.config import Options
    m = torch.from_numpy(two_blobs())
    masks = (m > 0)[None].expand(2, 32, 32)
    config = Options(peaks=2, peak_fractions="0.5", frame_box=False).effective().proposals
    plain, _ = boxes_from_mask(m, masks, config)
    with_peaks, scores = boxes_from_mask(m, masks, config, peaks=True)
    assert len(with_peaks) == len(plain) + 2 and with_peaks[-1].tolist() == [25, 20, 28, 23]
    assert (scores[len(plain):] == 0).all()
    off = Options(rescore="off").effective().proposals  # no rescoring: no peak regions (nothing would rank them)
    assert len(boxes_from_mask(m, masks[:1], off, peaks=True)[0]) == len(boxes_from_mask(m, masks[:1], off)[0])


@pytest.mark.parametrize("bad", [dict(peaks=-1), dict(peak_fractions="0.5,1.2"), dict(peak_fractions="x"),
                                 dict(peak_fractions="")])
def test_bad_peak_options_are_refused(bad):
    from gradloc.discovery.config import Options
    with pytest.raises(ValueError, match="peak"):
        Options(**bad)


def test_frame_box_is_the_centred_box_of_a_share_of_each_side():
    from gradloc.discovery.config import Options
    from gradloc.discovery.proposals import frame_box
    assert frame_box((32, 32), 0.9).tolist() == [pytest.approx([1.6, 1.6, 30.4, 30.4])]
    assert frame_box((20, 48), 1).tolist() == [[0, 0, 48, 20]]
    assert Options(rescore="off").effective().proposals.frame_box == 0
    with pytest.raises(ValueError, match="frame_box"):
        Options(frame_box=1.5)
