"""--engine ray on a local cluster: byte-identical outputs, order, faults and resume across engines.

Skipped without Ray (pip install "gradloc[ray]"). One cluster (2 CPUs) serves the module; its
actors are :class:`tests.ray_faults.FaultyBatchWorker` (sent by value: workers need not import
the tests), and its workers inherit the fault-injection variables set before it starts.
"""
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")

from gradloc.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    marker = tmp_path_factory.mktemp("faults") / "killed-once"
    os.environ["GRADLOC_RAY_SLOW_BATCH"] = "0"     # the first batch finishes last
    os.environ["GRADLOC_RAY_KILL_ONCE"] = str(marker)  # one actor dies once, mid-batch
    from tests import ray_faults
    ray.cloudpickle.register_pickle_by_value(ray_faults)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("gradloc.engines.ray_actors.BatchWorker", ray_faults.FaultyBatchWorker)
        yield marker
    ray.shutdown()
    for k in ("GRADLOC_RAY_SLOW_BATCH", "GRADLOC_RAY_KILL_ONCE"):
        os.environ.pop(k, None)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.RandomState(0)
    for k, name in enumerate(["a.png", "_underscore.png", ".hidden.png", "b.webp", "c.jpg", "d.png", "e.png",
                              "f.jpg"]):
        size = (200, 260, 3) if k % 3 == 0 else (40, 48, 3)
        Image.fromarray(rng.randint(0, 255, size).astype(np.uint8)).save(d / name)
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return d


def localize(folder, out, weights, *extra):
    args = ["localize", str(folder), "-o", str(out), "--weights", str(weights), "--batch-size", "3",
            "--precision", "fp32", "--method", "smoothgrad", "--samples", "4", "--workers", "0", *extra]
    assert main([str(a) for a in args]) == 0


def same_outputs(a: Path, b: Path) -> None:
    assert (a / "predictions.json").read_bytes() == (b / "predictions.json").read_bytes()
    assert (a / "predictions.jsonl").read_bytes() == (b / "predictions.jsonl").read_bytes()
    panels = sorted(p.name for p in (a / "vis").glob("*.png"))
    assert panels == sorted(p.name for p in (b / "vis").glob("*.png")) and panels
    for name in panels:
        assert (a / "vis" / name).read_bytes() == (b / "vis" / name).read_bytes(), name


def test_ray_gives_the_local_engines_bytes_despite_order_and_a_killed_actor(cluster, folder, tmp_path,
                                                                             random_weights_file):
    localize(folder, tmp_path / "local", random_weights_file)
    localize(folder, tmp_path / "ray", random_weights_file, "--engine", "ray", "--ray-address", "auto",
             "--actors", "2")
    assert cluster.exists()  # an actor was killed once, and its batch retried
    same_outputs(tmp_path / "local", tmp_path / "ray")
    import json
    data = json.loads((tmp_path / "ray" / "predictions.json").read_text())
    names = [Path(r["file"]).name for r in data["images"]]
    assert {"_underscore.png", "b.webp"} <= set(names)
    assert [Path(s["file"]).name for s in data["skipped"]] == ["corrupt.jpg"]


def test_a_run_begun_locally_finishes_on_ray(cluster, folder, tmp_path, random_weights_file):
    # A killed local run, resumed by each engine: the same bytes. (The resumed batches start after
    # the finished images, so with SmoothGrad's batch-shaped noise both differ from a fresh run.)
    runs = {}
    for engine in ("local", "ray"):
        out = runs[engine] = tmp_path / engine
        localize(folder, out, random_weights_file)
        lines = (out / "predictions.jsonl").read_bytes().splitlines(keepends=True)
        (out / "predictions.jsonl").write_bytes(b"".join(lines[:4]) + lines[4][:7])  # killed mid-line
        (out / "predictions.json").unlink()
        localize(folder, out, random_weights_file, "--resume", "--engine", engine, "--ray-address", "auto")
    assert (runs["local"] / "predictions.json").read_bytes() == (runs["ray"] / "predictions.json").read_bytes()
    import json
    assert len(json.loads((runs["ray"] / "predictions.json").read_text())["images"]) == 8


def test_ray_with_per_image_labels_and_a_users_classifier(cluster, folder, tmp_path, random_weights_file):
    """Each batch carries its files' own classes, and the actors build the user's classifier:
    --classes-from and --model give the local engine's bytes on Ray too."""
    import torch
    from gradloc.models.classifier import torchvision_classifier
    torch.manual_seed(0)
    torch.save(torchvision_classifier("resnet18", 3).state_dict(), tmp_path / "r18.pt")
    (tmp_path / "names.txt").write_text("cat\ndog\nship\n")
    labels = tmp_path / "labels.csv"
    labels.write_text("file,class\na.png,dog\nc.jpg,ship\nc.jpg,cat\nd.png,cat\n")
    model = ["--model", "torchvision:resnet18", "--weights", tmp_path / "r18.pt", "--class-names",
             tmp_path / "names.txt", "--input-size", "64", "--classes-from", labels]
    for engine in ("local", "ray"):
        args = ["localize", str(folder), "-o", str(tmp_path / engine), "--batch-size", "3", "--precision", "fp32",
                "--workers", "0", "--engine", engine, "--ray-address", "auto", *model]
        assert main([str(a) for a in args]) == 0
    same_outputs(tmp_path / "local", tmp_path / "ray")
    import json
    data = json.loads((tmp_path / "ray" / "predictions.json").read_text())
    got = {Path(r["file"]).name: sorted({p["label"] for p in r["proposals"]}) for r in data["images"]}
    assert got == {"a.png": ["dog"], "c.jpg": ["cat", "ship"], "d.png": ["cat"]}
