"""The input-size pyramid: which inputs get maps, batching, and discovery on a large image."""
import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

from gradloc import ProposalGenerator, WideResNet
from gradloc.attribution.saliency import GradientXActivation
from gradloc.discovery.windows import PYRAMID_GRID, resize_longer_side


class RedFeatures(nn.Module):
    """A fully convolutional stand-in: a 1x1 'feature' per location that is the pixel's
    redness, ReLU (the layer named ``relu``), global pooling, and a head whose class 3 ("cat")
    logit is the mean redness. Where the evidence lies at every input size is then known."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight[:] = torch.tensor([1.0, -1.0, 0.0]).view(1, 3, 1, 1)
            self.conv.bias.zero_()
        self.relu = nn.ReLU()

    def forward(self, x):
        red = self.relu(self.conv(x)).mean((2, 3))
        return torch.cat([torch.zeros(len(x), 3), 6 * red, torch.zeros(len(x), 6)], 1)


class RecordingWRN(WideResNet):
    """A WRN that records the input shape of every pass that computes gradients."""

    def __init__(self, weights: dict) -> None:
        super().__init__(depth=10, width=1)
        self.load_state_dict(weights)
        self.calls = []

    def forward(self, x):
        if torch.is_grad_enabled():
            self.calls.append(tuple(x.shape))
        return super().forward(x)


def test_large_images_get_one_map_per_input_size_small_ones_the_32_view(random_wrn):
    rng = np.random.RandomState(0)
    big = rng.randint(0, 255, (300, 420, 3)).astype(np.uint8)
    mid = rng.randint(0, 255, (200, 170, 3)).astype(np.uint8)
    small = rng.randint(0, 255, (64, 64, 3)).astype(np.uint8)
    model = RecordingWRN(random_wrn.state_dict())
    gen = ProposalGenerator(model, device="cpu", input_sizes="64,256")
    out = gen([big, mid, small], classes=[["cat", "dog"], "cat", "cat"])
    calls = model.calls
    # the 32x32 views of both large images' three rows in one batch, by the pipeline's method;
    # then per size and image shape one batch, by gradient x activation, where the two classes
    # of the first image share its one pass; 256 > 200 is skipped for the smaller image; the
    # 64x64 thumbnail takes the whole-image plan (saliency_rows)
    assert calls[0] == (3, 3, 32, 32)
    assert sorted(calls[1:4]) == sorted([(1, 3, 46, 64), (1, 3, 64, 54), (1, 3, 183, 256)])
    assert calls[4:] == [(1, 3, 32, 32)] * 2  # the thumbnail's map and its mirror image's
    assert out[0]["maps"].shape == (2, PYRAMID_GRID, PYRAMID_GRID) and out[2]["maps"].shape == (1, 32, 32)
    for res, (h, w) in zip(out, [(300, 420), (200, 170), (64, 64)]):
        b = res["boxes"]
        assert len(b) and (b[:, :2] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
    # batch independence: an image alone gets the same result
    alone = gen(big, classes=[["cat", "dog"]])[0]
    torch.testing.assert_close(alone["maps"], out[0]["maps"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(alone["boxes"], out[0]["boxes"])
    # and each class asked alone gets the maps and boxes it gets beside the other
    for k, name in enumerate(["cat", "dog"]):
        one = gen(big, classes=name)[0]
        torch.testing.assert_close(one["maps"][0], out[0]["maps"][k], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(one["boxes"], out[0]["boxes"][out[0]["labels"] == int(one["labels"][0])])


def test_rows_of_one_view_share_its_forward_pass(random_wrn):
    """attribute_rows: several classes of one view from one forward pass equal each class's own."""
    x = torch.randn(2, 3, 48, 64)
    view_of_row, classes = torch.tensor([0, 0, 0, 1]), torch.tensor([1, 4, 7, 4])
    method = GradientXActivation(random_wrn)
    maps, logits = method.attribute_rows(x, view_of_row, classes)
    own_maps, own_logits = method(x[view_of_row], classes)
    torch.testing.assert_close(maps, own_maps, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(logits, own_logits, rtol=1e-4, atol=1e-5)


def test_the_pyramid_finds_a_small_object_the_32_view_cannot_box():
    canvas = np.full((480, 640, 3), 128, np.uint8)
    canvas[300:360, 80:140] = (230, 20, 20)  # a 60x60 red square: 3x4 pixels of a 32x32 view
    truth = torch.tensor([[80.0, 300.0, 140.0, 360.0]])
    out = ProposalGenerator(RedFeatures(), device="cpu")(canvas, classes="cat")[0]
    assert box_iou(out["boxes"][:1], truth).item() > 0.5
    assert out["maps"].shape == (1, PYRAMID_GRID, PYRAMID_GRID)
    peak = np.unravel_index(int(out["maps"][0].argmax()), out["maps"][0].shape)
    assert 300 <= (peak[0] + 0.5) * 480 / PYRAMID_GRID <= 360 and 80 <= (peak[1] + 0.5) * 640 / PYRAMID_GRID <= 140


def test_gradient_x_activation_matches_captum(random_wrn):
    captum = pytest.importorskip("captum.attr")
    x = torch.randn(3, 3, 64, 48)
    target = torch.tensor([1, 4, 7])
    ours = GradientXActivation(random_wrn, output="logits", positive=False).feature_maps(x, target)[0]
    ref = captum.LayerGradientXActivation(random_wrn, random_wrn.relu).attribute(x, target=target).sum(1)
    torch.testing.assert_close(ours, ref.float(), rtol=1e-4, atol=1e-5)


def test_resize_longer_side_keeps_the_aspect():
    img = torch.randint(0, 255, (3, 300, 420), dtype=torch.uint8)
    assert resize_longer_side(img, 128).shape == (3, 91, 128)
    assert resize_longer_side(img.transpose(1, 2), 64).shape == (3, 64, 46)


@pytest.mark.parametrize("sizes", ["32,64", "64,x", "2000"])
def test_bad_input_sizes_are_refused(random_wrn, sizes):
    with pytest.raises(ValueError, match="input_sizes"):
        ProposalGenerator(random_wrn, input_sizes=sizes)


def test_peak_regions_find_a_small_object_beside_a_stronger_one():
    canvas = np.full((480, 640, 3), 128, np.uint8)
    canvas[40:280, 300:620] = (250, 0, 0)    # a large, very red region
    canvas[360:420, 60:120] = (170, 90, 90)  # a small, faintly red square
    small = torch.tensor([[60.0, 360.0, 120.0, 420.0]])
    gen = ProposalGenerator(RedFeatures(), device="cpu", top_k=None, nms_iou=1.0)

    def best_iou(g):
        return box_iou(g(canvas, classes="cat")[0]["boxes"], small).max().item()
    # the mass threshold keeps the strong region (and their union); the small square's own
    # peak gives it a box of its own
    assert best_iou(gen.with_options(peaks=0)) < 0.5
    assert best_iou(gen) > 0.5


class RecordingRed(RedFeatures):
    """:class:`RedFeatures` recording the input side of every pass that computes gradients."""

    def __init__(self):
        super().__init__()
        self.sides = []

    def forward(self, x):
        if torch.is_grad_enabled():
            self.sides.append(max(x.shape[-2:]))
        return super().forward(x)


@pytest.mark.parametrize("fine_inputs", ["unrecognised", "all"])
def test_inputs_over_four_times_the_model_side_only_for_rows_the_32_view_does_not_recognise(fine_inputs):
    """A large red square is recognised in the photograph's 32x32 view: under ``unrecognised``
    its row skips the 192 and 256 px inputs (its candidates there would be parts), while a
    small one's row takes them; ``all`` gives every row every size."""
    large = np.full((300, 400, 3), 128, np.uint8)
    large[40:260, 80:320] = (230, 20, 20)
    small = np.full((300, 400, 3), 128, np.uint8)
    small[200:230, 300:330] = (230, 20, 20)
    model = RecordingRed()
    gen = ProposalGenerator(model, device="cpu", fine_inputs=fine_inputs)
    sizes = {}
    for name, img in (("large", large), ("small", small)):
        model.sides.clear()
        res = gen(img, classes="cat")[0]
        sizes[name] = sorted(set(model.sides))
        assert set(res["candidates"][0].sides.tolist()) <= set(sizes[name])
        if name == "large":
            assert float(res["probs"][3]) > 0.5
        else:
            assert float(res["probs"][3]) < 0.5
    assert sizes["small"] == [32, 48, 64, 96, 128, 192, 256]
    assert sizes["large"] == ([32, 48, 64, 96, 128] if fine_inputs == "unrecognised" else sizes["small"])
