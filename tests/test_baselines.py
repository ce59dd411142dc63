"""Baselines: Grad-CAM and CAM as published (cross-checked against pytorch-grad-cam), the CAM
paper's box at image resolution, selective search."""
import copy

import numpy as np
import pytest
import torch
from PIL import Image

from gradloc.data.annotations import AnnotatedImage, AnnotatedSet
from gradloc.evaluation.baselines import (cam_box, has_selective_search, predict_cam, selective_search,
                               upsample_map)
from gradloc.models.classifier import CIFAR10
from gradloc.models.runtime import Runtime
from gradloc.models.wrn import wide_resnet
from gradloc.data.preprocess import prepare
from gradloc.attribution.saliency import CAM, GradCAM

from .conftest import SAMPLES


@pytest.fixture(scope="module")
def shipped():
    return wide_resnet(weights="default")


def sample_batch():
    files = sorted((SAMPLES / "cifar10").glob("*.png")) + [SAMPLES / "chelsea_cat.png"]
    return CIFAR10.normalize(torch.stack([prepare(f)[0] for f in files]))


def test_gradcam_targets_the_pooled_features(random_wrn):
    # The default layer is the final BN-ReLU output: pooling it and applying fc gives the logits.
    cam = GradCAM(random_wrn)
    assert cam.layer is random_wrn.relu
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(random_wrn.fc(random_wrn.features(x).mean((2, 3))), random_wrn(x))


def test_gradcam_equals_relu_of_cam_up_to_scale(random_wrn):
    # With a GAP + linear head, d logit_c / d F_k(x, y) = w_ck / (h w): Grad-CAM = ReLU(CAM) / (h w).
    x = torch.randn(3, 3, 32, 32)
    c = torch.tensor([1, 4, 9])
    g, _ = GradCAM(random_wrn).feature_maps(x, c)
    m, _ = CAM(random_wrn).feature_maps(x, c)
    assert g.shape == (3, 8, 8)
    torch.testing.assert_close(g, m.clamp(min=0) / 64, rtol=1e-4, atol=1e-6)
    assert (m < 0).any()  # CAM keeps its sign, as in the paper


def test_gradcam_matches_pytorch_grad_cam(shipped):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = sample_batch()
    classes = shipped(x).argmax(1)
    ours, _ = GradCAM(shipped).attribute(x, classes)  # bilinear to 32x32
    model = copy.deepcopy(shipped).requires_grad_(True)  # pytorch-grad-cam backpropagates into parameters
    with pgc.GradCAM(model=model, target_layers=[model.relu]) as ref:
        theirs = ref(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    for o, t in zip(ours.numpy(), theirs):
        assert np.corrcoef(o.ravel(), t.ravel())[0, 1] >= 0.99
        size = (480, 640)
        a = cam_box(upsample_map(torch.from_numpy(o), size), size)
        b = cam_box(upsample_map(torch.from_numpy(t), size), size)
        assert torch.allclose(a, b, atol=4.0), (a, b)  # maps differ only by min-max scaling


def test_cam_box_is_the_largest_region_above_a_fifth_of_the_maximum():
    m = np.zeros((100, 200), np.float32)
    m[10:20, 10:20] = 1.0       # the peak, 100 px
    m[50:90, 100:180] = 0.25    # above 20% of the maximum, 3,200 px: the largest region
    m[0:5, 190:200] = 0.1       # below it
    assert cam_box(m, (100, 200)).tolist() == [[100.0, 50.0, 180.0, 90.0]]
    # A map computed at half the image's size: the box scales to the image.
    assert cam_box(m, (200, 400)).tolist() == [[200.0, 100.0, 360.0, 180.0]]


def test_upsample_map_keeps_aspect_and_caps_size():
    cam = torch.rand(8, 8)
    assert upsample_map(cam, (30, 40)).shape == (30, 40)
    assert upsample_map(cam, (3000, 1500)).shape == (1024, 512)


def test_predict_cam_on_an_annotated_set(tmp_path, random_wrn):
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 255, (60, 90, 3)).astype(np.uint8)).save(tmp_path / "a.png")
    im = AnnotatedImage("a.png", 90, 60, torch.tensor([[0.0, 0, 45, 30], [10, 10, 80, 50]]),
                        torch.tensor([3, 5]), torch.tensor([False, False]))
    ds = AnnotatedSet([im, AnnotatedImage("gone.png", 90, 60, im.boxes[:1], im.labels[:1], im.difficult[:1])])
    for method in ("gradcam", "cam"):
        preds, skipped = predict_cam(Runtime.build(random_wrn, device="cpu"), ds, tmp_path, method, progress=False)
        assert preds[1] is None and skipped[0]["file"].endswith("gone.png")
        p = preds[0]
        assert set(p.boxes) == {3, 5} and p.maps[3].shape == (8, 8)
        for c in (3, 5):
            x0, y0, x1, y1 = p.boxes[c][0].tolist()
            assert 0 <= x0 < x1 <= 90 and 0 <= y0 < y1 <= 60
            assert 0 <= p.peaks[c][0] <= 90 and 0 <= p.peaks[c][1] <= 60


@pytest.mark.skipif(not has_selective_search(), reason="OpenCV contrib (cv2.ximgproc) not installed")
def test_selective_search_boxes_lie_in_the_image():
    rgb = np.zeros((120, 160, 3), np.uint8)
    rgb[20:70, 30:100] = (200, 30, 30)
    rgb[80:110, 110:150] = (20, 200, 40)
    boxes = selective_search(rgb, max_boxes=50)
    assert 0 < len(boxes) <= 50
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 160).all() and (boxes[:, 3] <= 120).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    # The red block is among the proposals.
    from torchvision.ops import box_iou
    assert box_iou(boxes, torch.tensor([[30.0, 20, 100, 70]])).max() > 0.8
