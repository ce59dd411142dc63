"""Golden outputs: the pipeline's predictions for fixed inputs and settings, recorded once and
compared on every run, so that a restructuring that should not change behaviour provably does not.

The inputs are the bundled samples resized to about 40, 300 and 800 px (the last two take the
input-size pyramid under ``scales="auto"``), with the tests' seeded random WRN and with the shipped
weights. Each case is a setting x a class request; boxes, scores, labels (in order) and maps are
compared with ``assert_close``. Everything runs in fp32 (``precision="auto"`` would pick bf16 on
CPUs that have it, and bf16 results are close, not equal). Float results can differ between CPU kinds: after moving the
project to another kind of machine, or after a change meant to alter results, re-record with
``GRADLOC_RECORD_GOLDEN=1 python -m pytest tests/test_golden.py`` and say why in the commit.
"""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gradloc import ProposalGenerator
from gradloc.models.wrn import wide_resnet

from .conftest import SAMPLES

GOLDEN = Path(__file__).parent / "golden"
RECORD = os.environ.get("GRADLOC_RECORD_GOLDEN") == "1"
SETTINGS = {
    "defaults": {},
    # every blanked view and every input for every row: the defaults before bounded blanked views and
    # --fine-inputs unrecognised, unchanged
    "exhaustive": {"blanked_views": "all", "fine_inputs": "all"},
    # the boxes judged by the classifier itself: the defaults before the extent judge, unchanged
    "judge-classifier": {"judge": "classifier"},
    "rescore-off": {"rescore": "off"},
    "rescore-crop": {"rescore": "crop"},
    "gradcam": {"method": "gradcam"},
    "padding": {"box_padding": 0.1, "rescore": "off"},
    "scales-off": {"scales": "off"},
    "scales-1-2": {"scales": "1,2"},
}
REQUESTS = {"predicted": None, "top3": "top3", "list": [["cat", "dog"]] * 3}
CASES = [(s, r) for s in SETTINGS for r in REQUESTS if r == "predicted" or s in ("defaults", "rescore-off")]


def golden_images() -> list[np.ndarray]:
    cat = Image.open(SAMPLES / "chelsea_cat.png").convert("RGB")
    pair = Image.open(SAMPLES / "composite_cat_dog.png").convert("RGB")
    return [np.asarray(cat.resize((40, 27), Image.BICUBIC)),
            np.asarray(pair.resize((300, 225), Image.BICUBIC)),
            np.asarray(cat.resize((800, 532), Image.BICUBIC))]


@pytest.fixture(scope="module")
def models(random_wrn):
    return {"random": random_wrn, "shipped": wide_resnet(weights="default")}


def snapshot(out: list[dict]) -> list[dict]:
    """What is compared: everything but the full maps, which are kept as 4x4-cell means (the
    multi-scale ones are 256 px a side; the files stay small)."""
    keys = ("boxes", "scores", "labels", "probs", "map_classes", "peaks")
    snap = [{k: o[k].clone() for k in keys} for o in out]
    for s, o in zip(snap, out):
        s["maps"] = torch.nn.functional.avg_pool2d(o["maps"][:, None].float(), 4, ceil_mode=True)[:, 0]
    return snap


@pytest.mark.parametrize("model_name", ["random", "shipped"])
@pytest.mark.parametrize("setting,request_name", CASES)
def test_golden_outputs(models, model_name, setting, request_name):
    torch.manual_seed(0)
    gen = ProposalGenerator(models[model_name], device="cpu", batch_size=8, precision="fp32", **SETTINGS[setting])
    got = snapshot(gen(golden_images(), classes=REQUESTS[request_name]))
    path = GOLDEN / f"{model_name}-{setting}-{request_name}.pt"
    if RECORD:
        GOLDEN.mkdir(exist_ok=True)
        torch.save(got, path)
        pytest.skip(f"recorded {path.name}")
    if not path.is_file():
        pytest.fail(f"{path} missing: record with GRADLOC_RECORD_GOLDEN=1")
    want = torch.load(path, weights_only=True)
    assert len(got) == len(want)
    for g, w, image in zip(got, want, golden_images()):
        for k in w:
            # a peak is where a map is largest: between tied cells (a random model's Grad-CAM has
            # them) it may move by one cell of the map's grid from one machine to another
            cell = max(image.shape[:2]) / (4 * g["maps"].shape[-1]) if k == "peaks" else 1e-4
            torch.testing.assert_close(g[k], w[k], rtol=1e-4, atol=max(cell, 1e-4), msg=lambda m: f"{k}: {m}")


def test_golden_localize_json_of_the_samples(tmp_path):
    """`gradloc localize samples` (the README's main job): its images and skipped lists, byte for byte."""
    import json

    from gradloc.cli import main
    assert main(["localize", str(SAMPLES), "-o", str(tmp_path), "--vis-limit", "0", "--workers", "0",
                 "--precision", "fp32"]) == 0
    data = json.loads((tmp_path / "predictions.json").read_text(encoding="utf-8"))
    for rec in data["images"]:
        rec["file"] = Path(rec["file"]).relative_to(SAMPLES).as_posix()
    text = json.dumps({"images": data["images"], "skipped": data["skipped"]}, indent=0, sort_keys=True) + "\n"
    path = GOLDEN / "localize-samples.json"
    if RECORD:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        pytest.skip(f"recorded {path.name}")
    assert text == path.read_text(encoding="utf-8")
