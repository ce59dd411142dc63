"""Crop rescoring: one box per threshold rung, ranked by the class probability of its crop."""
import pytest
import torch
from torchvision.ops import box_iou

from gradloc import ProposalGenerator
from gradloc.models.classifier import CIFAR10
from gradloc.ops.boxes import clip_nonempty
from gradloc.discovery.config import Options
from gradloc.discovery.proposals import rank
from gradloc.evaluation.report import describe_threshold
from gradloc.discovery.rescoring import Rescorer, blank_in_thumbnail, evidence_scores

from .test_multiscale import RedDetector


def test_rank_keeps_the_best_non_overlapping_boxes():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])
    b, s = rank(boxes, torch.tensor([0.2, 0.9, 0.5]), nms_iou=0.5, top_k=5)
    assert b.tolist() == [[1, 1, 10, 10], [20, 20, 30, 30]] and s.tolist() == pytest.approx([0.9, 0.5])
    assert rank(boxes, torch.tensor([0.2, 0.9, 0.5]), top_k=1)[0].tolist() == [[1, 1, 10, 10]]


def test_clip_nonempty_leaves_a_pixel_to_crop():
    b = clip_nonempty(torch.tensor([[-5.0, 2, 8, 9], [70, 10, 90, 10]]), (40, 64))
    assert b.tolist() == [[0, 2, 8, 9], [63, 10, 64, 11]]


def test_threshold_values_and_validation():
    assert Options(rescore="off").threshold_values() == [None]
    assert Options(rescore="crop").threshold_values() == [0.4, 0.5, 0.6, 0.7]
    assert Options(rescore="crop", ladder=(0.3, 1)).threshold_values() == [0.3, 1.0]
    assert Options(rescore="crop", threshold="otsu").threshold_values() == [None]
    assert Options(rescore="crop", threshold="fraction").threshold_values() == [None]
    assert Options(method="gradcam", rescore="crop").effective().ranking.rescore == "off"  # CAM recipe stays as published
    with pytest.raises(ValueError, match="rescore"):
        Options(rescore="yes")
    with pytest.raises(ValueError, match="fuse"):
        Options(fuse=-1)
    with pytest.raises(ValueError, match="moment_box"):
        Options(moment_box=float("nan"))
    assert Options(method="gradcam").effective().ranking.fuse == Options(method="gradcam").effective().proposals.moment_box == 0
    assert Options(rescore="off").effective().ranking.fuse == Options(rescore="off").effective().proposals.moment_box == 0
    with pytest.raises(ValueError, match="ladder"):
        Options(rescore="crop", ladder="a,b")
    with pytest.raises(ValueError, match="shares"):
        Options(ladder="0.5,2")
    # Other thresholds keep their one setting; rescoring re-ranks its boxes.
    assert Options(threshold="top-n").threshold_values() == [100]


@pytest.mark.parametrize("red", ["small", "large"])
def test_rescoring_follows_the_classifier_evidence_in_each_crop(red):
    # Map: a bright 6x6 blob top-left and a dimmer, larger 12x12 patch bottom-right.
    maps = torch.zeros(1, 32, 32)
    maps[0, 2:8, 2:8] = 10.0
    maps[0, 16:28, 16:28] = 3.0
    # The blob holds 360 / 792 = 45.5% of the mass: rung 0.45 keeps exactly the blob; rung 1.0
    # keeps both, and the patch (more mass) is its best box.
    gen = ProposalGenerator(RedDetector(), device="cpu", rescore="crop", ladder="0.45,1", smooth_sigma=0,
                            kernel=1, union_box=False, moment_box=0, frame_box=0, fuse=0)
    image = torch.full((3, 64, 64), 128, dtype=torch.uint8)
    small, large = torch.tensor([[4.0, 4, 16, 16]]), torch.tensor([[32.0, 32, 56, 56]])
    x0, y0, x1, y1 = (small if red == "small" else large)[0].int().tolist()
    image[:, y0:y1, x0:x1] = torch.tensor([230, 20, 20], dtype=torch.uint8).view(3, 1, 1)
    res = gen.proposals_from_maps(maps, torch.tensor([0]), torch.tensor([3]), torch.ones(1, 10), [(64, 64)], [image])[0]
    assert len(res["boxes"]) == 2
    want = small if red == "small" else large
    assert box_iou(res["boxes"][:1], want).item() > 0.9
    # Scores are the crop's class probability: high for the red crop, chance-level for the grey one.
    assert res["scores"][0] > 0.5 > res["scores"][1]
    # Without rescoring the bright blob wins whatever the classifier says of it.
    plain = ProposalGenerator(RedDetector(), device="cpu", threshold_value=0.45, smooth_sigma=0, kernel=1,
                              union_box=False, rescore="off")
    top = plain.proposals_from_maps(maps, torch.tensor([0]), torch.tensor([3]), torch.ones(1, 10), [(64, 64)])[0]
    assert box_iou(top["boxes"][:1], small).item() > 0.9


def test_rescoring_needs_the_image(random_wrn):
    gen = ProposalGenerator(random_wrn, device="cpu", rescore="crop")
    with pytest.raises(ValueError, match="working resolution"):
        gen.proposals_from_maps(torch.rand(1, 32, 32), torch.tensor([0]), torch.tensor([3]), torch.ones(1, 10),
                                [(64, 64)])
    # The public entry points keep the image, so rescoring runs end to end, small and large images alike.
    out = gen([torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8),
               torch.randint(0, 255, (3, 320, 320), dtype=torch.uint8)], classes="cat")
    for r in out:
        assert len(r["boxes"]) >= 1 and ((r["scores"] >= 0) & (r["scores"] <= 1)).all()
    # The default, crop-delete, is a difference of two probabilities.
    for r in ProposalGenerator(random_wrn, device="cpu")([torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)],
                                                         classes="cat"):
        assert len(r["boxes"]) >= 1 and ((r["scores"] >= -1) & (r["scores"] <= 1)).all()
    batch = gen.run_batch(torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8), [(64, 64), (50, 80)])
    assert all(len(r["boxes"]) >= 1 for r in batch)  # no working image: the 32x32 view is cropped


def test_describe_threshold_names_what_runs():
    assert describe_threshold(Options()) == ("mass ladder 0.4,0.5,0.6,0.7 (best box of each rung), "
                                              "crop-minus-deletion rescoring, +moment box (1.5 std), +frame box "
                                              "(0.9 of each side, whole images), +regions "
                                              "of the 3 strongest peaks at 0.6,0.4,0.2 of their value (pyramid), "
                                              "best box fused with its neighbours (T=0.2)")
    assert describe_threshold(Options(fuse=0, moment_box=0, frame_box=0, peaks=0)).endswith("crop-minus-deletion rescoring")
    assert describe_threshold(Options(rescore="off")) == "mass 0.5"
    # no ladder outside the mass threshold: crop rescoring re-ranks that threshold's boxes
    assert describe_threshold(Options(threshold="top-n", top_n=250, rescore="crop", fuse=0, moment_box=0, frame_box=0, peaks=0)) == "top-250, crop rescoring"
    assert describe_threshold(Options(threshold="otsu", rescore="off")) == "otsu"


def test_blank_boxes_fills_covered_pixels_and_blends_partly_covered_ones():
    from gradloc.ops.boxes import blank_boxes
    image = torch.full((3, 8, 8), 200, dtype=torch.uint8)
    out = blank_boxes(image, torch.tensor([[2.0, 1, 4, 3], [5.5, 0, 8, 8]]), (0, 100, 50))
    assert out.shape == (2, 3, 8, 8)
    assert out[0, :, 1:3, 2:4].flatten(1).tolist() == [[0] * 4, [100] * 4, [50] * 4]
    untouched = torch.ones(8, 8, dtype=torch.bool)
    untouched[1:3, 2:4] = False
    assert (out[0][:, untouched] == 200).all()
    assert out[1, :, :, 5].tolist() == [[100] * 8, [150] * 8, [125] * 8]  # half of column 5 covered
    assert out[1, :, :, 6:].unique().tolist() == [0, 50, 100] and (out[1, :, :, :5] == 200).all()


def test_crop_minus_deletion_prefers_the_whole_object_to_a_part_of_it():
    """A part of a red square is as red as the whole, so its crop scores as high; blanking the
    part leaves red outside it, blanking the whole square leaves none. crop-delete sees that."""
    maps = torch.zeros(1, 32, 32)
    maps[0, 8:24, 8:24] = 1.0   # the whole square, dim
    maps[0, 8:12, 8:12] = 20.0  # its top-left corner, bright: 320 / 560 = 57% of the mass
    image = torch.full((3, 64, 64), 128, dtype=torch.uint8)
    image[:, 16:48, 16:48] = torch.tensor([230, 20, 20], dtype=torch.uint8).view(3, 1, 1)
    part, whole = torch.tensor([[16.0, 16, 24, 24]]), torch.tensor([[16.0, 16, 48, 48]])
    kw = dict(ladder="0.55,1", smooth_sigma=0, kernel=1, union_box=False, moment_box=0, frame_box=0, fuse=0)
    args = (maps, torch.tensor([0]), torch.tensor([3]), torch.ones(1, 10), [(64, 64)], [image])
    gen = ProposalGenerator(RedDetector(), device="cpu", rescore="crop-delete", **kw)
    res = gen.proposals_from_maps(*args)[0]
    assert len(res["boxes"]) == 2 and box_iou(res["boxes"][:1], whole).item() > 0.9
    assert box_iou(res["boxes"][1:], part).item() > 0.9
    # The evidence is the crop's class probability minus the blanked image's; the score is the
    # image's probability of the class (1 here) times exp(evidence - the best's).
    # score_boxes gives the pipeline's own ranking score for any box: the same evidence
    crop = gen.with_options(rescore="crop").score_boxes(image, res["boxes"], "cat")
    evidence = gen.score_boxes(image, res["boxes"], 3)
    blanked = crop - evidence
    torch.testing.assert_close(res["scores"], (evidence - evidence[0]).exp())
    torch.testing.assert_close(blanked, counting_rescorer()[0].deletion_scores(
        blank_in_thumbnail([image], [res["boxes"]], 32, CIFAR10.mean_colour), [3])[0][0])
    assert blanked[0] < 0.2 < blanked[1] and float(crop[0]) == pytest.approx(float(crop[1]), abs=0.02)
    assert describe_threshold(Options(rescore="crop-delete", fuse=0, moment_box=0, frame_box=0, peaks=0)).endswith("crop-minus-deletion rescoring")


def test_crop_minus_deletion_on_large_images_blanks_each_box_in_its_own_window():
    """Multi-scale: a 40 px square on a 384 px canvas is found, and its score shows that blanking
    it in its window removed the evidence (in the whole canvas' 32x32 view it would barely show)."""
    import numpy as np
    canvas = np.full((384, 384, 3), 128, np.uint8)
    canvas[300:340, 40:80] = (230, 20, 20)
    model, inputs = RedDetector(), []
    model.register_forward_hook(lambda m, x, out: None if torch.is_grad_enabled() else inputs.append(x[0]))
    gen = ProposalGenerator(model, device="cpu", batch_size=32, windows=4, smooth_sigma=0, scales="1,2,3,4",
                            threshold="fraction", threshold_value=0.5, rescore="crop-delete")
    out = gen(canvas, classes="cat")[0]
    assert box_iou(out["boxes"][:1], torch.tensor([[40.0, 300.0, 80.0, 340.0]])).item() > 0.7
    # the deletion views: 32x32 window views, each with a box blanked to the colour that
    # normalises to zero (>= 2x2 cells), not the whole canvas' view
    blanked = [v for x in inputs for v in x if (v.abs() < 0.01).all(0).sum() >= 4]
    assert len(blanked) >= 4 and all(v.shape == (3, 32, 32) for v in blanked)
    crop = gen.with_options(rescore="crop").score_boxes(canvas, out["boxes"][:1], "cat")
    cand = out["candidates"][0]
    best = int(box_iou(out["boxes"][:1], cand.boxes)[0].argmax())
    assert cand.scores[best] > 0.5 * crop[0] > 0.2  # the blanked window keeps little of the class
    assert out["scores"][0] == pytest.approx(float(out["probs"][3]))


def test_fusion_replaces_the_best_box_by_the_score_weighted_mean_of_its_neighbours():
    """A red square with a dim halo: the ladder's rungs give nested boxes (square, square plus
    halo), the pipeline's first proposal is fuse_best of them, the others are unchanged."""
    from gradloc.discovery.rescoring import fuse_best
    maps = torch.zeros(1, 32, 32)
    maps[0, 8:24, 8:24] = 1.0    # halo
    maps[0, 10:22, 10:22] = 4.0  # square: 576 / 688 = 84% of the mass
    image = torch.full((3, 64, 64), 128, dtype=torch.uint8)
    image[:, 20:44, 20:44] = torch.tensor([230, 20, 20], dtype=torch.uint8).view(3, 1, 1)
    args = (maps, torch.tensor([0]), torch.tensor([3]), torch.ones(1, 10), [(64, 64)], [image])
    kw = dict(ladder="0.8,1", smooth_sigma=0, kernel=1, union_box=False, nms_iou=1.0, top_k=None, moment_box=0,
              frame_box=0)
    plain = ProposalGenerator(RedDetector(), device="cpu", fuse=0, **kw).proposals_from_maps(*args)[0]
    # rung 0.8: (nearly) the square, 24 px in the image; rung 1: square and halo, 32 px
    assert len(plain["boxes"]) == 2 and box_iou(plain["boxes"][:1], plain["boxes"][1:]).item() > 0.3
    fused = ProposalGenerator(RedDetector(), device="cpu", fuse=0.1, **kw).proposals_from_maps(*args)[0]
    torch.testing.assert_close(fused["boxes"][0], fuse_best(plain["boxes"], plain["scores"], 0.1))
    torch.testing.assert_close(fused["boxes"][1:], plain["boxes"][1:])
    torch.testing.assert_close(fused["scores"], plain["scores"])
    assert not torch.equal(fused["boxes"][0], plain["boxes"][0])  # the two boxes did blend


def counting_rescorer(merge_iou: float = 0.85):
    """A :class:`Rescorer` on :class:`RedDetector`'s probabilities that records each batch it classifies."""
    model, seen = RedDetector().eval(), []

    def classify(views):
        seen.append(len(views))
        with torch.no_grad():
            return model(CIFAR10.normalize(views)).softmax(1)
    return Rescorer(classify, merge_iou, 32, CIFAR10.mean_colour), seen


def box_scores(rescorer, *args, **kwargs):
    return [evidence_scores(e) for e in rescorer.box_evidence(*args, **kwargs)]


def test_identical_views_are_scored_once_and_each_row_gets_its_class():
    grey = torch.full((3, 32, 32), 128, dtype=torch.uint8)
    red = grey.clone()
    red[:, 8:24, 8:24] = torch.tensor([230, 20, 20], dtype=torch.uint8).view(3, 1, 1)
    rows = [torch.stack([red, grey, red]), torch.stack([grey]), torch.zeros(0, 3, 32, 32, dtype=torch.uint8),
            torch.stack([red])]
    rescorer, seen = counting_rescorer()
    got = rescorer.class_probs(rows, [3, 3, 3, 0])
    assert seen == [2]  # six views, two distinct
    direct = rescorer.classify(torch.cat([r for r in rows if len(r)]))
    torch.testing.assert_close(torch.cat(got), torch.cat([direct[:4, 3], direct[4:, 0]]))
    assert got[0][0] > got[0][1] and len(got[2]) == 0


def test_near_duplicates_group_each_box_with_the_first_it_overlaps():
    from gradloc.discovery.rescoring import near_duplicates
    boxes = torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 11], [0, 0, 20, 20], [20, 20, 30, 31.0]])
    reps, owner = near_duplicates(boxes, 0.85)
    assert reps.tolist() == [0, 1, 3] and owner.tolist() == [0, 1, 0, 2, 1]
    reps, owner = near_duplicates(boxes, 1.01)  # off: each its own
    assert reps.tolist() == owner.tolist() == [0, 1, 2, 3, 4]
    assert [len(t) for t in near_duplicates(torch.zeros(0, 4), 0.85)] == [0, 0]


def test_near_duplicate_candidates_share_a_score_and_are_not_scored_twice():
    img = torch.full((3, 64, 64), 128, dtype=torch.uint8)
    img[:, 16:48, 16:48] = torch.tensor([230, 20, 20], dtype=torch.uint8).view(3, 1, 1)
    boxes = torch.tensor([[16, 16, 48, 48], [16, 16, 48, 49], [0, 0, 20, 20.0]])
    rescorer, seen = counting_rescorer()
    merged = box_scores(rescorer, [img], [boxes], [3], "crop-delete")[0]
    assert seen == [2, 2]  # two representatives: their crops, then their blanked views
    assert merged[0] == merged[1] and merged[0] > merged[2]
    each = box_scores(counting_rescorer(merge_iou=1.01)[0], [img], [boxes], [3], "crop-delete")[0]
    torch.testing.assert_close(each[[0, 2]], merged[[0, 2]])
    with pytest.raises(ValueError, match="merge_iou"):
        Options(merge_iou=0)


def test_the_frame_hypothesis_is_scored_by_the_whole_view_without_views_of_its_own():
    img = torch.full((3, 64, 64), 128, dtype=torch.uint8)
    img[:, 2:62, 2:62] = torch.tensor([230, 20, 20], dtype=torch.uint8).view(3, 1, 1)  # fills the view
    boxes = torch.tensor([[16, 16, 48, 48], [3.2, 3.2, 60.8, 60.8]])  # a part, then the frame
    last = torch.tensor([False, True])
    rescorer, seen = counting_rescorer()
    whole = float(rescorer.classify(torch.nn.functional.interpolate(img[None].float(), size=32).round().byte())[0, 3])
    seen.clear()
    scores = box_scores(rescorer, [img], [boxes], [3], "crop-delete", frames=[last], whole=[whole])[0]
    assert seen == [1, 1, 1]  # the part's crop and blanked view, and the blank view once
    blank = rescorer.blank_probs()
    assert scores[1] == pytest.approx(whole - float(blank[3])) and scores[1] > scores[0]
    box_scores(rescorer, [img], [boxes], [3], "crop-delete", frames=[last], whole=[whole])
    assert seen == [1, 1, 1, 1, 1]  # the blank view's probabilities are kept
    crop = box_scores(rescorer, [img], [boxes], [3], "crop", frames=[last], whole=[whole])[0]
    assert crop[1] == pytest.approx(whole)
    # a frame that another candidate already represents shares its score, as any near-duplicate
    near = torch.tensor([[3.2, 3.2, 60.8, 61.0], [3.2, 3.2, 60.8, 60.8]])
    shared = box_scores(rescorer, [img], [near], [3], "crop-delete", frames=[last], whole=[whole])[0]
    assert shared[0] == shared[1]
    # the frame is known by its kind, not its place: first in the row, it scores the same
    first = box_scores(rescorer, [img], [boxes.flip(0)], [3], "crop-delete", frames=[last.flip(0)],
                                    whole=[whole])[0]
    assert torch.equal(first, scores.flip(0))
    # a box not marked as a frame is an ordinary candidate, wherever it is
    plain = box_scores(rescorer, [img], [boxes], [3], "crop-delete", whole=[whole])[0]
    assert len(plain) == 2 and plain[1] != scores[1]


def test_bounded_rows_blank_only_the_boxes_that_can_still_be_best():
    """A box scores its crop less its blanked view, at most its crop: in a bounded row every box
    whose crop beats the best score found is blanked as in the exhaustive row, the best box is
    the same, the others are taken to blank nothing (the unblanked view's probability), and
    fewer views run."""
    image = torch.full((3, 96, 96), 128, dtype=torch.uint8)
    image[:, 30:70, 20:60] = torch.tensor([230, 20, 20], dtype=torch.uint8).view(3, 1, 1)
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(40, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + 8 + torch.rand(40, 2, generator=g) * 30], 1)
    boxes = torch.cat([boxes, torch.tensor([[20.0, 30, 60, 70]])])  # the square itself
    full, seen_full = counting_rescorer(merge_iou=2.0)
    bound, seen_bound = counting_rescorer(merge_iou=2.0)
    e_all = full.box_evidence([image], [boxes], [3], "crop-delete")[0]
    e_bd = bound.box_evidence([image], [boxes], [3], "crop-delete", bounded=[True])[0]
    torch.testing.assert_close(e_bd[:, 0], e_all[:, 0])  # crops are all viewed
    s_all, s_bd = evidence_scores(e_all), evidence_scores(e_bd)
    assert int(s_bd.argmax()) == int(s_all.argmax()) == len(boxes) - 1
    must = e_all[:, 0] > s_all.max()  # could beat the best: viewed
    torch.testing.assert_close(e_bd[must, 1], e_all[must, 1])
    unblanked = bound.crop_scores([image], [torch.tensor([[0.0, 0, 96, 96]])], [3])[0]
    skipped = e_bd[:, 1] != e_all[:, 1]
    assert skipped.any() and torch.allclose(e_bd[skipped, 1], unblanked.expand(int(skipped.sum())))
    assert sum(seen_bound) < sum(seen_full)
    # unbounded rows (ranked by consensus) and crop rescoring are unchanged by the flag
    torch.testing.assert_close(bound.box_evidence([image], [boxes], [3], "crop-delete", bounded=[False])[0], e_all)
    torch.testing.assert_close(bound.box_evidence([image], [boxes], [3], "crop", bounded=[True])[0],
                               full.box_evidence([image], [boxes], [3], "crop")[0])


def test_blanked_views_are_an_option_of_crop_delete_only():
    assert Options().effective().ranking.blanked_views == "bounded"
    assert Options(rescore="crop", blanked_views="all").effective().ranking.blanked_views == "bounded"
    assert Options(rescore="crop", blanked_views="all").inert() == [
        "--blanked-views 'all' does nothing: --rescore crop blanks no box"]
    with pytest.raises(ValueError, match="blanked_views"):
        Options(blanked_views="some")
