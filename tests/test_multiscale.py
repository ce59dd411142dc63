"""Multi-scale windows: geometry, accumulation, and the pipeline path on large images."""
import numpy as np
import pytest
import torch

from gradloc import ProposalGenerator
from gradloc.multiscale import accumulate, crop_windows, window_boxes, wants_multiscale


def test_window_grid_counts_and_cover():
    b = window_boxes(300, 200, (1, 2, 3))
    assert len(b) == 1 + 9 + 25
    assert b[0].tolist() == [0, 0, 200, 300]
    assert b[:, 0].min() == 0 and b[:, 2].max() == 200 and b[:, 3].max() == 300
    halves = b[1:10]
    assert torch.allclose(halves[:, 2] - halves[:, 0], torch.tensor(100.0))
    assert sorted(set(halves[:, 0].tolist())) == [0.0, 50.0, 100.0]  # half-window strides
    assert len(window_boxes(300, 200, (1, 2, 3), max_windows=12)) == 12


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
    gen = ProposalGenerator(random_wrn, device="cpu", batch_size=16, max_windows=14)
    out_big, out_small = gen([big, small], classes=[["cat", "dog"], "cat"])
    assert out_big["maps"].shape[0] == 2 and max(out_big["maps"].shape[1:]) == 256  # working grid
    assert out_small["maps"].shape == (1, 32, 32)                                     # single window
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
