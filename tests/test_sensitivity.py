"""gradloc sensitivity: the per-class mean |d f_c / d x| over a folder, streamed in batches."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from gradloc import class_sensitivity
from gradloc.cli import main
from gradloc.data.preprocess import prepare
from gradloc.models.classifier import CIFAR10
from gradloc.attribution.saliency import Gradient


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.RandomState(0)
    d = tmp_path / "imgs"
    d.mkdir()
    for k in range(7):
        Image.fromarray(rng.randint(0, 255, (32 + 8 * k, 40, 3)).astype(np.uint8)).save(d / f"{k}.png")
    (d / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return d


def test_means_are_the_per_class_average_of_each_images_gradient(folder, random_wrn):
    res = class_sensitivity(random_wrn, [folder], batch_size=3, progress=False)
    files = sorted(p for p in folder.glob("*.png"))
    x = CIFAR10.normalize(torch.stack([prepare(p)[0] for p in files]))
    maps, logits = Gradient(random_wrn)(x, lambda z: z.argmax(1))
    pred = logits.argmax(1).numpy()
    assert res.counts.sum() == 7 and (res.counts == np.bincount(pred, minlength=10)).all()
    for c in set(pred.tolist()):
        np.testing.assert_allclose(res.means[c], maps[pred == c].mean(0).numpy(), rtol=1e-4, atol=1e-7)
    assert [s["file"].endswith("broken.jpg") for s in res.skipped] == [True]
    # batching does not change the result
    again = class_sensitivity(random_wrn, [folder], batch_size=1, progress=False)
    np.testing.assert_allclose(again.means, res.means, rtol=1e-4, atol=1e-7)


def test_a_given_class_counts_every_image_under_it(folder, random_wrn):
    res = class_sensitivity(random_wrn, [folder], cls="ship", progress=False)
    assert res.counts.tolist() == [0] * 8 + [7, 0]
    assert res.means[8].shape == (32, 32) and res.means[8].max() > 0 and res.means[:8].max() == 0


def test_cli_writes_npy_png_and_counts(folder, random_weights_file, tmp_path, capsys):
    out = tmp_path / "sens"
    assert main(["sensitivity", str(folder), "-o", str(out), "--weights", str(random_weights_file),
                 "--workers", "0", "--batch-size", "4"]) == 0
    assert "broken.jpg" in capsys.readouterr().err
    means = np.load(out / "sensitivity.npy")
    counts = json.loads((out / "sensitivity.json").read_text())["counts"]
    assert means.shape == (10, 32, 32) and sum(counts.values()) == 7
    for name, n in counts.items():
        assert (out / f"{name}.npy").is_file() == (n > 0) and (out / f"{name}.png").is_file() == (n > 0)
    assert Image.open(out / "sensitivity.png").size[0] > 600
    assert main(["sensitivity", str(folder), "-o", str(out), "--class", "unicorn"]) == 2
