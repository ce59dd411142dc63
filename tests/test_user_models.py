"""A user's own classifier never ends in a traceback: every failure while building, loading or
running it is one line naming what went wrong (exit 2); outputs that are tuples, dicts or
ModelOutputs are read for their logits; "all" follows the model's class count; one writer per
output folder; resuming a finished run does nothing."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gradloc.cli import main

MODELS = '''
import os

import torch
from torch import nn


class Net(nn.Module):
    """A small CNN whose forward returns what ``shape`` says."""

    def __init__(self, num_classes=3, shape="tensor"):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, num_classes)
        self.shape = shape

    def forward(self, x):
        f = self.features(x)
        logits = self.fc(f.mean((2, 3)))
        if self.shape == "tuple":
            return logits, f
        if self.shape == "dict":
            return {"logits": logits, "features": f}
        if self.shape == "nan":
            return logits * float("nan")
        if os.environ.get("FAIL_ON_WHITE") and x.mean() > 1.5:  # a white image (normalised) breaks it
            raise RuntimeError("CUDA out of memory (simulated)")
        return logits


def plain(num_classes=3):
    return Net(num_classes)

def as_tuple(num_classes=3):
    return Net(num_classes, "tuple")

def as_dict(num_classes=3):
    return Net(num_classes, "dict")

def with_nan(num_classes=3):
    return Net(num_classes, "nan")

def broken(num_classes=3):
    raise RuntimeError("no such checkpoint layout")

def needs_keywords(*, depth, width):
    return Net(3)

def wrong_count(num_classes=3):
    return Net(num_classes + 2)
'''


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """models.py, a state dict of Net(3) (every builder shares its layers), three class names and
    a folder of three photos (the last one white)."""
    root = tmp_path_factory.mktemp("user")
    (root / "models.py").write_text(MODELS)
    sys.path.insert(0, str(root))
    try:
        import models  # noqa: F401  the file as the user wrote it
        torch.manual_seed(0)
        torch.save(models.Net(3).state_dict(), root / "net.pt")
        torch.save(models.Net(5).state_dict(), root / "net5.pt")
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("models", None)
    (root / "names.txt").write_text("cat\ndog\nbird\n")
    (root / "empty.txt").write_text("# no names here\n\n")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.RandomState(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.randint(0, 255, (48, 48, 3)).astype(np.uint8)).save(photos / name)
    Image.fromarray(np.full((48, 48, 3), 255, np.uint8)).save(photos / "z_white.png")
    return root


def localize(kit, out, builder, *extra, weights="net.pt", names="names.txt"):
    return main(["localize", str(kit / "photos"), "-o", str(out), "--model", f"{kit / 'models.py'}:{builder}",
                 "--weights", str(kit / weights), "--class-names", str(kit / names), "--input-size", "32",
                 "--precision", "fp32", "--workers", "0", "--vis-limit", "0", *extra])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("gradloc: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("builder,weights,names,expected", [
    ("broken", "net.pt", "names.txt", "building it raised RuntimeError: no such checkpoint layout"),
    ("needs_keywords", "net.pt", "names.txt", "building it raised TypeError"),
    ("wrong_count", "net5.pt", "names.txt", "models.py:wrong_count: the classifier gives outputs of shape [2, 5]"),
    ("with_nan", "net.pt", "names.txt", "non-finite outputs"),
    ("plain", "net.pt", "empty.txt", "no class names in"),
    ("plain", "net5.pt", "names.txt", "--model"),
    ("missing", "net.pt", "names.txt", "cannot load it (AttributeError"),
])
def test_a_model_that_cannot_be_built_or_run_is_one_line_and_writes_nothing(kit, tmp_path, capsys, builder, weights,
                                                                               names, expected):
    out = tmp_path / "out"
    assert localize(kit, out, builder, weights=weights, names=names) == 2
    assert expected in one_line_error(capsys)
    assert not (out / "predictions.json").exists() and not (out / "predictions.jsonl").exists()


@pytest.mark.parametrize("builder", ["as_tuple", "as_dict"])
def test_outputs_that_hold_logits_are_read_for_them(kit, tmp_path, builder):
    plain, other = tmp_path / "plain", tmp_path / builder
    assert localize(kit, plain, "plain") == 0 and localize(kit, other, builder) == 0
    a = json.loads((plain / "predictions.json").read_text())["images"]
    b = json.loads((other / "predictions.json").read_text())["images"]
    assert [r["probs"] for r in a] == [r["probs"] for r in b] and set(a[0]["probs"]) == {"cat", "dog", "bird"}
    assert [r["proposals"] for r in a] == [r["proposals"] for r in b]


def test_a_model_failing_on_a_later_batch_keeps_what_finished_and_resume_continues(kit, tmp_path, capsys,
                                                                                   monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("FAIL_ON_WHITE", "1")
    assert localize(kit, out, "plain", "--batch-size", "1") == 2
    line = one_line_error(capsys)
    assert "RuntimeError while running: CUDA out of memory (simulated)" in line and "--resume" in line
    done = [json.loads(ln)["file"] for ln in (out / "predictions.jsonl").read_text().splitlines()]
    assert [Path(f).name for f in done] == ["a.png", "b.png"]
    assert not (out / ".gradloc.lock").exists()  # released on the way out
    # the same run resumed, the model working again (memory freed), finishes it
    monkeypatch.delenv("FAIL_ON_WHITE")
    assert localize(kit, out, "plain", "--batch-size", "1", "--resume") == 0
    images = json.loads((out / "predictions.json").read_text())["images"]
    assert sorted(Path(r["file"]).name for r in images) == ["a.png", "b.png", "z_white.png"]


def test_all_classes_follow_the_model_class_count(kit, tmp_path, capsys):
    ann = {"images": [{"id": 1, "file_name": "a.png", "width": 48, "height": 48}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [4, 4, 30, 30]}],
           "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    assert main(["evaluate", str(tmp_path / "ann.json"), "--images", str(kit / "photos"), "-o", str(tmp_path / "ev"),
                 "--model", f"{kit / 'models.py'}:plain", "--weights", str(kit / "net.pt"), "--class-names",
                 str(kit / "names.txt"), "--input-size", "32", "--precision", "fp32", "--workers", "0",
                 "--request", "all", "--feature-layer", "features"]) == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "ev" / "metrics.json").read_text())["results"]
    assert {m["kind"] for m in results.values()} == {"gradloc", "cam baseline"}


def test_a_second_writer_to_one_output_folder_is_refused_and_a_stale_lock_taken_over(kit, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".gradloc.lock").write_text(str(sleeper.pid))
        assert localize(kit, out, "plain") == 2
        assert f"being written by another gradloc run (pid {sleeper.pid})" in one_line_error(capsys)
        assert not (out / "predictions.jsonl").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    # the owner is gone (killed): its lock is stale and the next run takes it over
    assert localize(kit, out, "plain") == 0
    assert not (out / ".gradloc.lock").exists()


def test_resuming_a_finished_run_does_nothing_and_says_so(kit, tmp_path, capsys):
    out = tmp_path / "out"
    assert localize(kit, out, "plain") == 0
    before = (out / "predictions.json").read_bytes()
    stamp = os.stat(out / "predictions.json").st_mtime_ns
    capsys.readouterr()
    assert localize(kit, out, "plain", "--resume") == 0
    assert "nothing to do" in capsys.readouterr().err
    assert (out / "predictions.json").read_bytes() == before and os.stat(out / "predictions.json").st_mtime_ns == stamp


def test_killed_anywhere_and_resumed_ends_with_the_bytes_of_an_uninterrupted_run(tmp_path, random_weights_file):
    """SIGKILL at random moments of a 240-image run, resumed each time: the final predictions.json
    is byte for byte the uninterrupted run's (one image a batch: the same passes either way)."""
    import random
    import signal
    import time
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.RandomState(1)
    for k in range(240):
        Image.fromarray(rng.randint(0, 255, (32, 32, 3)).astype(np.uint8)).save(photos / f"{k:03d}.png")
    args = ["localize", str(photos), "--weights", str(random_weights_file), "--precision", "fp32", "--batch-size", "1",
            "--workers", "0", "--vis-limit", "0"]
    assert main([*args, "-o", str(tmp_path / "whole")]) == 0
    out = tmp_path / "killed"
    command = [sys.executable, "-c", "import sys; from gradloc.cli import main; sys.exit(main(sys.argv[1:]))",
               *args, "-o", str(out), "--resume"]
    chooser = random.Random(0)
    kills = 0
    jsonl = out / "predictions.jsonl"
    for _ in range(5):  # each run is killed once it has written a random number of new lines
        start = len(jsonl.read_text().splitlines()) if jsonl.exists() else 0
        target = start + chooser.randint(1, 40)
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and (len(jsonl.read_text().splitlines()) if jsonl.exists() else 0) < target:
            time.sleep(0.02)
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    assert kills >= 2  # it was killed mid-run, at least twice
    assert subprocess.run(command, capture_output=True, timeout=600).returncode == 0
    assert (out / "predictions.json").read_bytes() == (tmp_path / "whole" / "predictions.json").read_bytes()
