"""Multi-scale windows: geometry, accumulation, and the pipeline path on large images."""
import numpy as np
import pytest
import torch

from gradloc import ProposalGenerator
from gradloc.ops.boxes import crop_windows, place_boxes
from gradloc.discovery.multiscale import accumulate, top_windows, wants_multiscale, window_boxes
from torchvision.ops import box_iou


def test_window_grid_counts_and_cover():
    b = window_boxes(300, 200, (1, 2, 3))
    assert len(b) == 1 + 9 + 25
    assert b[0].tolist() == [0, 0, 200, 300]
    assert b[:, 0].min() == 0 and b[:, 2].max() == 200 and b[:, 3].max() == 300
    halves = b[1:10]
    assert torch.allclose(halves[:, 2] - halves[:, 0], torch.tensor(100.0))
    assert sorted(set(halves[:, 0].tolist())) == [0.0, 50.0, 100.0]  # half-window strides
    # The cap drops whole scales (finest first), so every kept scale covers the image ...
    capped = window_boxes(300, 200, (1, 2, 3), max_windows=12)
    assert len(capped) == 10 and capped[:, 3].max() == 300
    # ... and only a coarsest scale that alone exceeds it is cut.
    assert len(window_boxes(300, 200, (3,), max_windows=12)) == 12


def test_top_windows_and_boxes_to_image():
    assert top_windows(torch.tensor([0.1, 0.7, 0.2, 0.7]), 3).tolist() == [1, 3, 2]
    grid_box = torch.tensor([[8.0, 0.0, 16.0, 32.0]])
    placed = place_boxes(grid_box, (32, 32), torch.tensor([100.0, 50.0, 164.0, 146.0]))
    assert placed.tolist() == [[116.0, 50.0, 132.0, 146.0]]


def test_accumulate_pastes_a_window_where_it_belongs():
    m = torch.zeros(2, 32, 32)
    m[0, 8:24, 8:24] = 1.0       # whole-image window: a blob in the centre
    m[1] = 1.0                   # a window over the top-left quarter, uniform
    boxes = torch.tensor([[0.0, 0, 64, 64], [0.0, 0, 32, 32]])
    full = accumulate(m, torch.tensor([1.0, 0.5]), boxes, (64, 64), (64, 64))
    assert full.shape == (64, 64)
    # bottom-right: only the whole-image window, its blob edge region is 0 far away
    assert full[60, 60] == 0
    # centre is covered by the blob of window 0 only (window 1 stops at 32)
    assert full[40, 40] == pytest.approx(1.0, abs=0.05)
    # top-left corner: window 0 gives 0, window 1 gives 0.5; mean over 2 windows
    assert full[2, 2] == pytest.approx(0.25, abs=0.02)


def test_crop_windows_shapes():
    img = torch.randint(0, 255, (3, 90, 130), dtype=torch.uint8)
    crops = crop_windows(img, window_boxes(90, 130, (1, 2)))
    assert crops.shape == (10, 3, 32, 32) and crops.dtype == torch.uint8


def test_auto_turns_on_for_large_images_only():
    assert not wants_multiscale((64, 64), "auto")
    assert wants_multiscale((400, 500), "auto")
    assert not wants_multiscale((400, 500), "off")
    assert wants_multiscale((64, 64), "1,2")
    assert not wants_multiscale((640, 640), "1")


def test_pipeline_multiscale_on_a_large_image(random_wrn):
    rng = np.random.RandomState(0)
    big = rng.randint(0, 255, (300, 420, 3)).astype(np.uint8)
    small = rng.randint(0, 255, (40, 40, 3)).astype(np.uint8)
    gen = ProposalGenerator(random_wrn, device="cpu", batch_size=16, max_windows=14, scales="1,2,3")
    out_big, out_small = gen([big, small], classes=[["cat", "dog"], "cat"])
    assert out_big["maps"].shape[0] == 2 and max(out_big["maps"].shape[1:]) == 256  # working grid
    assert out_small["maps"].shape == (1, 40, 40)  # explicit scales: every image, on its working grid
    b = out_big["boxes"]
    assert len(b) >= 1 and (b[:, 2] <= 420).all() and (b[:, 3] <= 300).all() and (b[:, :2] >= 0).all()
    assert set(out_big["labels"].tolist()) <= {3, 5}
    # Batch independence holds for the multi-scale path too.
    alone = gen(big, classes=[["cat", "dog"]])[0]
    torch.testing.assert_close(alone["maps"], out_big["maps"], rtol=1e-4, atol=1e-6)
    off = ProposalGenerator(random_wrn, device="cpu", scales="off")(big)[0]
    assert off["maps"].shape == (1, 32, 32)


def test_bad_scales_are_refused(random_wrn):
    with pytest.raises(ValueError, match="scales"):
        ProposalGenerator(random_wrn, scales="big")


class RedDetector(torch.nn.Module):
    """A stand-in classifier whose class 3 ("cat") logit grows with the share of red pixels:
    a window's support for the class is then known, and so is where its gradient lies."""

    def forward(self, x):
        red = torch.relu(x[:, 0] - x[:, 1]).mean((1, 2))
        return torch.cat([torch.zeros(len(x), 3), 4 * red[:, None], torch.zeros(len(x), 6)], 1)


def test_multiscale_finds_a_small_object_in_a_large_image():
    canvas = np.full((384, 384, 3), 128, np.uint8)
    canvas[300:340, 40:80] = (230, 20, 20)  # a 40x40 red square, bottom-left
    # A flat map over the square: keep every pixel above half the maximum, no smoothing. Boxes
    # ranked by component score: any part of the square is as red as the whole, so crop
    # rescoring could pick a part (tests/test_rescore.py covers rescoring).
    model = RedDetector()
    calls = []
    model.register_forward_hook(lambda m, x, out: calls.append(len(x[0])) if torch.is_grad_enabled() else None)
    gen = ProposalGenerator(model, device="cpu", batch_size=32, windows=4, smooth_sigma=0, scales="1,2,3,4",
                            threshold="fraction", threshold_value=0.5, rescore="off")
    out = gen(canvas, classes="cat")[0]
    assert sum(calls) == 4  # gradients only for the 4 best windows of the one (image, class) row
    iou = box_iou(out["boxes"][:1], torch.tensor([[40.0, 300.0, 80.0, 340.0]]))
    assert iou.item() > 0.7
    single = ProposalGenerator(RedDetector(), device="cpu", scales="off", smooth_sigma=0, threshold="fraction",
                               threshold_value=0.5, rescore="off")(canvas, classes="cat")[0]
    assert box_iou(single["boxes"][:1], torch.tensor([[40.0, 300.0, 80.0, 340.0]])).item() < 0.7
