"""The training script end to end on a tiny subset: train, resume, export, load with checksum."""
import json
import subprocess
import sys

import pytest
import torch

from gradloc.models.wrn import wide_resnet

from .conftest import ROOT, shared_file


def run(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "train_cifar10.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_train_resume_export(tmp_path):
    data = shared_file("cifar10-jpeg.tar.gz")
    common = ["--data", data, "--ckpt-dir", tmp_path, "--depth", 10, "--width", 1, "--epochs", 3,
              "--batch-size", 16, "--max-batches", 2, "--limit-per-class", 4]
    first = run(*common)
    assert first.returncode == 0, first.stderr
    log = [json.loads(x) for x in first.stdout.splitlines() if x.startswith("{")]
    assert [e["epoch"] for e in log] == [1, 2, 3]
    again = run(*common, "--resume")  # already finished: nothing more to do
    assert again.returncode == 0 and "resumed from" in again.stdout and '"epoch"' not in again.stdout
    changed = run(*common[:-1], 5, "--resume")
    assert changed.returncode != 0 and "different --limit-per-class 4" in changed.stderr
    out = tmp_path / "w.pt"
    exp = run(*common, "--export", out)
    assert exp.returncode == 0, exp.stderr
    model = wide_resnet(10, 1, weights=out)  # verifies the written .sha256
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_export_without_checkpoint_is_a_clear_error(tmp_path):
    res = run("--ckpt-dir", tmp_path / "empty", "--export", tmp_path / "w.pt")
    assert res.returncode != 0 and "no checkpoint to export" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "w.pt").exists()


def test_interrupted_run_resumes_mid_epoch_exactly(tmp_path):
    """Stopped twice mid-epoch and resumed, a run ends with the same weights and log as one that
    was never interrupted: the progress checkpoint replays the batches and augmentations."""
    data = shared_file("cifar10-jpeg.tar.gz")
    common = ["--data", data, "--depth", 10, "--width", 1, "--epochs", 2, "--batch-size", 16,
              "--max-batches", 4, "--limit-per-class", 8, "--threads", 1, "--save-every", 0]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run(*common, "--ckpt-dir", whole).returncode == 0
    first = run(*common, "--ckpt-dir", parts, "--stop-after", 2)
    assert first.returncode == 0 and "at epoch 1 step 2" in first.stdout, first.stderr
    assert (parts / "progress.pt").is_file() and not (parts / "last.pt").exists()
    second = run(*common, "--ckpt-dir", parts, "--resume", "--stop-after", 3)  # crosses an epoch end
    assert second.returncode == 0 and "at epoch 1, step 2" in second.stdout and "at epoch 2 step 1" in second.stdout
    third = run(*common, "--ckpt-dir", parts, "--resume")
    assert third.returncode == 0 and "at epoch 2, step 1" in third.stdout, third.stderr
    assert not (parts / "progress.pt").exists()
    a = torch.load(whole / "last.pt", weights_only=True)
    b = torch.load(parts / "last.pt", weights_only=True)
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=0, atol=0)
    drop_time = lambda log: [{k: v for k, v in e.items() if k != "seconds"} for e in json.loads(log)]  # noqa: E731
    assert drop_time(a["log"]) == drop_time(b["log"])


def test_second_cycle_starts_from_given_weights(tmp_path):
    """--init loads an exported file before training: with a zero learning rate the weights stay
    exactly those given; a missing or wrong-architecture file is a clear error, not a traceback."""
    data = shared_file("cifar10-jpeg.tar.gz")
    start = tmp_path / "start.pt"
    torch.manual_seed(5)
    torch.save(wide_resnet(10, 1, weights=None).state_dict(), start)
    common = ["--data", data, "--depth", 10, "--width", 1, "--epochs", 1, "--batch-size", 16,
              "--max-batches", 1, "--limit-per-class", 2]
    res = run(*common, "--ckpt-dir", tmp_path / "a", "--init", start, "--lr", 0)
    assert res.returncode == 0, res.stderr
    trained = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    given = torch.load(start, weights_only=True)
    assert all(torch.equal(trained[k], given[k]) for k in given if "running" not in k and "num_batches" not in k)
    resumed = run(*common, "--ckpt-dir", tmp_path / "a", "--init", tmp_path / "other.pt", "--lr", 0, "--resume")
    assert resumed.returncode != 0 and "different --init" in resumed.stderr
    for bad in (tmp_path / "missing.pt", start):
        res = run(*common[:2], "--depth", 16, "--width", 2, "--ckpt-dir", tmp_path / "b", "--init", bad)
        assert res.returncode != 0 and "cannot start from" in res.stderr and "Traceback" not in res.stderr


def test_cutout_zeroes_one_clipped_square_per_image_and_leaves_other_runs_unchanged():
    """--cutout N blanks one N x N square (clipped at the border) per image; with 0 the
    augmentations are exactly those of runs made before the option existed."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("train_cifar10", ROOT / "scripts" / "train_cifar10.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    x = torch.randn(256, 3, 32, 32) + 10  # no zeros anywhere before cutout
    plain = train.augment(x, torch.Generator().manual_seed(4))
    assert torch.equal(plain, train.augment(x, torch.Generator().manual_seed(4), cutout=0))
    cut = train.augment(x, torch.Generator().manual_seed(4), cutout=12)
    holes = cut == 0
    assert torch.equal(holes.all(1), holes.any(1))  # the same pixels in every channel
    area = holes[:, 0].sum((1, 2))
    assert area.max() == 144 and area.min() >= 36 and (area < 144).any()  # full squares and clipped ones
    rows, cols = holes[:, 0].any(2), holes[:, 0].any(1)
    assert torch.equal(area, rows.sum(1) * cols.sum(1))  # each hole is one axis-aligned rectangle
    assert torch.equal(cut[~holes], plain[~holes])  # the rest is the plain augmentation


def write_photo_set(root, n=8):
    """A tiny COCO-format set of 64x64 photographs, one class each, and a folder of negatives."""
    import numpy as np
    from PIL import Image
    (root / "set" / "images").mkdir(parents=True)
    (root / "neg" / "x").mkdir(parents=True)
    rng = np.random.RandomState(0)
    images, annotations = [], []
    for i in range(n):
        Image.fromarray(rng.randint(0, 255, (64, 64, 3)).astype(np.uint8)).save(root / "set" / "images" / f"p{i}.jpg")
        Image.fromarray(rng.randint(0, 255, (64, 64, 3)).astype(np.uint8)).save(root / "neg" / "x" / f"n{i}.jpg")
        images.append({"id": i, "file_name": f"p{i}.jpg", "width": 64, "height": 64})
        annotations.append({"id": i, "image_id": i, "category_id": i % 10, "bbox": [0, 0, 64, 64]})
    cats = [{"id": c, "name": name} for c, name in enumerate(
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"))]
    (root / "set" / "annotations.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": cats}))
    return root / "set", root / "neg"


def test_photos_split_and_outlier_exposure(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("photo_sets", ROOT / "scripts" / "photo_sets.py")
    photo_sets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(photo_sets)
    load_labelled_photos, load_photo_folder, photo_split = (photo_sets.load_labelled_photos,
                                                            photo_sets.load_photo_folder, photo_sets.photo_split)
    photos, negatives = write_photo_set(tmp_path)
    x, y, names = load_labelled_photos(photos)
    assert x.shape == (8, 64, 64, 3) and y.tolist() == list(range(8)) and names == sorted(names)
    assert load_photo_folder(negatives).shape == (8, 64, 64, 3)
    half = photo_split(names, 0.5, 0)
    assert len(half) == 4 and half == photo_split(list(reversed(names)), 0.5, 0)  # order-free, seeded
    assert half != photo_split(names, 0.5, 1)
    data = shared_file("cifar10-jpeg.tar.gz")
    res = run("--data", data, "--ckpt-dir", tmp_path / "ck", "--depth", 10, "--width", 1, "--epochs", 1,
              "--batch-size", 16, "--max-batches", 2, "--limit-per-class", 4, "--photos", photos,
              "--negatives", negatives, "--extra-batch", 4)
    assert res.returncode == 0, res.stderr
    assert "photos: 4 of 8" in res.stdout and "negatives: 8" in res.stdout
    trained = (tmp_path / "ck" / "photos_trained.txt").read_text().splitlines()
    assert sorted(trained[1:]) == sorted(half)


def test_random_resized_crops_cover_the_chosen_share():
    import importlib.util
    spec = importlib.util.spec_from_file_location("train", ROOT / "scripts" / "train_cifar10.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    x = torch.zeros(64, 3, 64, 64)
    x[:, :, :, 32:] = 1.0  # left half 0, right half 1
    out = train.random_resized_crops(x, torch.Generator().manual_seed(0), out=32, min_area=1.0, ratio=(1, 1))
    # area 1 and aspect 1: the whole image, flipped or not, so each row holds both halves
    assert out.shape == (64, 3, 32, 32)
    torch.testing.assert_close(out.mean((1, 2, 3)), torch.full((64,), 0.5), atol=0.02, rtol=0)


def load_train_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("train", ROOT / "scripts" / "train_cifar10.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    return train


def test_extent_crops_targets_and_ranking_loss():
    train = load_train_module()
    x = torch.zeros(3, 3, 64, 64)
    x[:, :, 16:48, 16:48] = 1.0  # the object: the centre square, its box [16, 16, 48, 48]
    boxes = torch.tensor([[16.0, 16, 48, 48]]).expand(3, 4)
    gen = torch.Generator().manual_seed(0)
    tight, iou = train.extent_crops(x, boxes, gen, scale=(1.0, 1.0), jitter=0.0)
    assert torch.allclose(iou, torch.ones(3)) and tight.mean() > 0.95  # the crop is the object
    loose, iou = train.extent_crops(x, boxes, gen, scale=(2.0, 2.0), jitter=0.0)
    assert torch.allclose(iou, torch.full((3,), 0.25)) and 0.2 < loose.mean() < 0.3  # a quarter of it is
    soft = train.extent_targets(torch.tensor([3, 3, 3]), torch.tensor([0.2, 0.55, 0.9]))
    torch.testing.assert_close(soft[0], torch.full((10,), 0.1))  # background: uniform
    assert soft[2, 3] == 1.0 and soft[1, 3] == pytest.approx(0.5 + 0.05)  # the object; halfway
    labels = torch.tensor([1, 2])
    good = torch.zeros(3, 2, 10)
    good[0, [0, 1], [1, 2]] = 5.0  # the object's logit beats surroundings and part by 5
    assert train.extent_ranking_loss(good.view(6, 10), labels, 1.0) == 0
    assert train.extent_ranking_loss(torch.zeros(6, 10), labels, 1.0) == pytest.approx(2.0)


def test_extent_training_runs_and_records_its_split(tmp_path):
    photos, _ = write_photo_set(tmp_path)
    data = shared_file("cifar10-jpeg.tar.gz")
    res = run("--data", data, "--ckpt-dir", tmp_path / "ck", "--depth", 10, "--width", 1, "--epochs", 1,
              "--batch-size", 16, "--max-batches", 2, "--limit-per-class", 4, "--extent", photos,
              "--extra-batch", 4, "--extent-rank", 1)
    assert res.returncode == 0, res.stderr
    assert "extent: 4 of 8 boxed photographs" in res.stdout
    assert len((tmp_path / "ck" / "extent_trained.txt").read_text().splitlines()) == 5
