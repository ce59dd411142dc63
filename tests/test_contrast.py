"""Class contrast: with several classes asked for one image, each map keeps where it beats the others."""
import torch
from torchvision.ops import box_iou

from gradloc import ProposalGenerator
from gradloc.discovery.windows import contrast_maps

LEFT, RIGHT = (slice(4, 12), slice(2, 10)), (slice(18, 28), slice(20, 30))  # (rows, cols) on the 32x32 grid
LEFT_BOX, RIGHT_BOX = torch.tensor([[2.0, 4, 10, 12]]), torch.tensor([[20.0, 18, 30, 28]])  # xyxy, grid pixels


def two_object_maps() -> torch.Tensor:
    """Row 0 (class A) is strong on the left object and weaker on the right one; row 1 (class B)
    the other way round: each class's gradient also lights up the other object."""
    maps = torch.zeros(2, 32, 32)
    maps[0][LEFT], maps[0][RIGHT] = 5.0, 2.0
    maps[1][LEFT], maps[1][RIGHT] = 1.5, 4.0
    return maps


def test_each_map_keeps_only_where_it_beats_the_other_classes_of_its_image():
    maps = two_object_maps()
    lone = torch.rand(1, 32, 32)
    out = contrast_maps(torch.cat([maps, lone]), torch.tensor([0, 0, 1]))
    assert out.shape == (3, 32, 32) and (out >= 0).all()
    assert out[0][LEFT].min() > 0 and out[0][RIGHT].max() == 0
    assert out[1][RIGHT].min() > 0 and out[1][LEFT].max() == 0
    assert torch.equal(out[2], lone[0])  # a class asked alone keeps its map
    # The comparison is between shares of each map's total, so scaling one map changes nothing.
    scaled = contrast_maps(maps * torch.tensor([10.0, 1.0])[:, None, None], torch.tensor([0, 0]))
    assert torch.allclose(scaled[0] / 10, out[0]) and torch.allclose(scaled[1], out[1])


def test_images_with_one_class_each_are_returned_as_they_are():
    maps = torch.rand(3, 32, 32)
    assert torch.equal(contrast_maps(maps, torch.tensor([0, 1, 2])), maps)


def boxes_per_class(gen, maps, row_image, row_class):
    res = gen.proposals_from_maps(maps, row_image, row_class, torch.ones(1, 10), [(32, 32)])[0]
    return {c: res["boxes"][res["labels"] == c] for c in row_class.tolist()}


def test_two_classes_of_one_image_get_a_box_each_and_no_box_spanning_both(random_wrn):
    gen = ProposalGenerator(random_wrn, device="cpu", rescore="off", smooth_sigma=0, kernel=1, threshold_value=0.9)
    maps, rows, classes = two_object_maps(), torch.tensor([0, 0]), torch.tensor([3, 5])
    both = torch.cat([LEFT_BOX, RIGHT_BOX])
    got = boxes_per_class(gen, maps, rows, classes)
    assert box_iou(got[3][:1], LEFT_BOX).item() == 1 and box_iou(got[5][:1], RIGHT_BOX).item() == 1
    for c in (3, 5):  # no proposal overlaps both objects
        assert ((box_iou(got[c], both) > 0).sum(1) < 2).all()
    # Without the contrast, the class-3 map's mask holds both objects and its union box spans them.
    gen = gen.with_options(class_contrast=False)
    plain = boxes_per_class(gen, maps, rows, classes)
    assert ((box_iou(plain[3], both) > 0).sum(1) == 2).any()


def test_a_class_asked_alone_is_boxed_the_same_with_or_without_contrast(random_wrn):
    gen = ProposalGenerator(random_wrn, device="cpu", rescore="off", smooth_sigma=0, kernel=1, threshold_value=0.9)
    maps = two_object_maps()[:1]
    with_contrast = boxes_per_class(gen, maps, torch.tensor([0]), torch.tensor([3]))[3]
    gen = gen.with_options(class_contrast=False)
    assert torch.equal(with_contrast, boxes_per_class(gen, maps, torch.tensor([0]), torch.tensor([3]))[3])


def test_grad_cam_keeps_its_published_box_recipe():
    from gradloc.discovery.config import Options
    assert Options().class_contrast and not Options(method="gradcam").effective().proposals.class_contrast


def test_a_map_beaten_everywhere_keeps_its_own_evidence():
    maps = torch.rand(1, 32, 32).repeat(3, 1, 1)
    maps[2] = 0
    maps[2][LEFT] = 1.0
    out = contrast_maps(maps, torch.tensor([0, 0, 0]))
    # rows 0 and 1 are the same map: neither is stronger anywhere, so both stay as they are
    assert torch.equal(out[0], maps[0]) and torch.equal(out[1], maps[1])
    assert out[2][LEFT].min() > 0 and torch.isclose(out[2].sum(), out[2][LEFT].sum())


def test_top_k_guesses_are_not_contrasted(random_wrn):
    # top-k classes are guesses about one object: contrasting them would split it among them
    gen = ProposalGenerator(random_wrn, device="cpu", rescore="off", smooth_sigma=0, kernel=1, threshold_value=0.9)
    maps, rows, classes = two_object_maps(), torch.tensor([0, 0]), torch.tensor([3, 5])
    guessed = gen.proposals_from_maps(maps, rows, classes, torch.ones(1, 10), [(32, 32)], named=[False])[0]
    gen = gen.with_options(class_contrast=False)
    plain = gen.proposals_from_maps(maps, rows, classes, torch.ones(1, 10), [(32, 32)])[0]
    assert torch.equal(guessed["boxes"], plain["boxes"]) and torch.equal(guessed["maps"], plain["maps"])


def test_named_classes_are_contrasted_and_top_k_is_not_end_to_end(random_wrn):
    import numpy as np
    gen = ProposalGenerator(random_wrn, device="cpu", rescore="off")
    image = np.random.RandomState(0).randint(0, 255, (32, 32, 3)).astype(np.uint8)
    top = gen(image, classes="top2")[0]
    named = gen(image, classes=[top["map_classes"].tolist()])[0]
    gen = gen.with_options(class_contrast=False)
    plain = gen(image, classes=[top["map_classes"].tolist()])[0]
    assert torch.equal(top["maps"], plain["maps"])
    assert not torch.equal(named["maps"], plain["maps"])
