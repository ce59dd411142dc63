"""The training script end to end on a tiny subset: train, resume, export, load with checksum."""
import json
import subprocess
import sys

import torch

from gradloc.model import wide_resnet

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
