"""Any classifier: from_classifier and --model, with oracles: the shipped WRN through
from_classifier gives pretrained()'s boxes; a small CNN trained here on generated images
(the object's place known) finds its objects; torchvision ResNet-18 plumbing at 64 and 224 px."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.ops import box_iou

import gradloc
from gradloc.cli import main
from gradloc.models.wrn import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 70, 230)}
TINY_CNN = '''
from torch import nn

def tiny_cnn(num_classes=4):
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))
'''


def scene(rng, side: int, obj: int, colour) -> tuple[np.ndarray, list[float]]:
    """Grey noise with one coloured square of side ``obj`` at a random place; its box."""
    img = rng.randint(90, 160, (side, side, 3)).astype(np.uint8)
    x, y = rng.randint(0, side - obj + 1, 2)
    img[y:y + obj, x:x + obj] = colour
    return img, [float(x), float(y), float(x + obj), float(y + obj)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny CNN trained for a few seconds to tell the squares' colours, saved as a module
    file and a state dict."""
    folder = tmp_path_factory.mktemp("tiny")
    (folder / "tiny_cnn.py").write_text(TINY_CNN)
    namespace: dict = {}
    exec(TINY_CNN, namespace)
    torch.manual_seed(0)
    model = namespace["tiny_cnn"](4)
    rng = np.random.RandomState(0)
    names = [*COLOURS, "none"]  # "none": noise alone, so that a colour's evidence is its square
    xs, ys = [], []
    for k in range(800):
        img, _ = scene(rng, 32, rng.randint(8, 16), COLOURS[names[k % 4]]) if k % 4 < 3 else \
            (rng.randint(90, 160, (32, 32, 3)).astype(np.uint8), None)
        xs.append(torch.from_numpy(img).permute(2, 0, 1))
        ys.append(k % 4)
    x = (torch.stack(xs).float() / 255 - 0.5) / 0.25
    y = torch.tensor(ys)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(6):
        for s in torch.randperm(len(x)).split(50):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[s]), y[s], label_smoothing=0.1).backward()
            opt.step()
    model.eval()
    assert (model(x).argmax(1) == y).float().mean() > 0.95  # it learned the colours
    torch.save(model.state_dict(), folder / "tiny.pt")
    (folder / "names.txt").write_text("\n".join(names) + "\n")
    return folder, model


def test_the_shipped_wrn_through_from_classifier_gives_pretrained_boxes():
    images = [SAMPLES / "cifar10" / "cat.png", SAMPLES / "chelsea_cat.png", SAMPLES / "composite_cat_dog.png"]
    ref = gradloc.ProposalGenerator.pretrained(precision="fp32")
    gen = gradloc.ProposalGenerator.from_classifier(ref.model, classes=CIFAR10_CLASSES, input_size=32,
                                                    mean=CIFAR10_MEAN, std=CIFAR10_STD, precision="fp32")
    for spec in (None, "top3"):
        for a, b in zip(ref(images, classes=spec), gen(images, classes=spec)):
            assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])
            assert torch.equal(a["probs"], b["probs"])


def test_a_small_cnn_trained_here_finds_its_objects(tiny, tmp_path):
    folder, model = tiny
    gen = gradloc.ProposalGenerator.from_classifier(model, classes=[*COLOURS, "none"], input_size=32,
                                                    mean=(0.5,) * 3, std=(0.25,) * 3, precision="fp32")
    rng = np.random.RandomState(1)
    images, truth, colours = [], [], []
    for k in range(12):
        name = list(COLOURS)[k % 3]
        img, box = scene(rng, 64, rng.randint(18, 30), COLOURS[name])
        images.append(img)
        truth.append(box)
        colours.append(name)
        Image.fromarray(img).save(tmp_path / f"{k:02d}_{name}.png")
    out = gen(images)
    assert all([*COLOURS, "none"][int(r["labels"][0])] == c for r, c in zip(out, colours))
    # every top box overlaps its square, and far better than the best centred box of the canvas
    ious = [float(box_iou(r["boxes"][:1], torch.tensor([b])).max()) for r, b in zip(out, truth)]
    centred = [max(float(box_iou(torch.tensor([[32 - s / 2, 32 - s / 2, 32 + s / 2, 32 + s / 2]]), torch.tensor([b])))
                   for s in (32, 45, 55)) for b in truth]
    assert min(ious) >= 0.3 and np.mean(ious) >= np.mean(centred) + 0.1, (ious, centred)
    # the same through the command line, the model given as MODULE:CALLABLE from a file
    code = main(["localize", str(tmp_path), "-o", str(tmp_path / "out"), "--model", f"{folder / 'tiny_cnn.py'}:tiny_cnn",
                 "--weights", str(folder / "tiny.pt"), "--class-names", str(folder / "names.txt"), "--input-size", "32",
                 "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--precision", "fp32", "--vis-limit", "2"])
    assert code == 0
    data = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert data["classes"] == [*COLOURS, "none"]
    by_name = {Path(r["file"]).name: r for r in data["images"]}
    for k, (box, c) in enumerate(zip(truth, colours)):
        rec = by_name[f"{k:02d}_{c}.png"]
        assert rec["predicted"] == c and set(rec["probs"]) == {*COLOURS, "none"}
        assert rec["proposals"][0]["box"] == pytest.approx(out[k]["boxes"][0].tolist(), abs=0.01)


@pytest.mark.parametrize("side", [64, 224])
def test_torchvision_resnet18_plumbing(tmp_path, side):
    """Random weights, 3 classes: valid boxes labelled with those names, whatever the plan
    (the photograph's pyramid at 64 px input; the whole image at 224), and Grad-CAM on layer4."""
    torch.manual_seed(0)
    from gradloc.models.classifier import torchvision_classifier
    model = torchvision_classifier("resnet18", 3)
    photo = np.asarray(Image.open(SAMPLES / "chelsea_cat.png").convert("RGB"))
    for method in ("gradient", "gradcam"):
        gen = gradloc.ProposalGenerator.from_classifier(model, ["a", "b", "c"], side, gradloc.models.classifier.IMAGENET_MEAN,
                                                        gradloc.models.classifier.IMAGENET_STD, precision="fp32", method=method)
        for res, (h, w) in zip(gen([photo, photo[:40, :50]], classes="all"), [photo.shape[:2], (40, 50)]):
            b = res["boxes"]
            assert len(res["probs"]) == 3 and len(b) and set(res["labels"].tolist()) <= {0, 1, 2}
            assert (b[:, 0] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= h).all()
            assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()


def test_cli_resnet18_state_dict(tmp_path, capsys):
    from gradloc.models.classifier import torchvision_classifier
    torch.manual_seed(0)
    torch.save(torchvision_classifier("resnet18", 3).state_dict(), tmp_path / "r18.pt")
    (tmp_path / "names.txt").write_text("bird\nboat\ncar\n")
    args = ["localize", str(SAMPLES), "-o", str(tmp_path / "out"), "--model", "torchvision:resnet18",
            "--weights", str(tmp_path / "r18.pt"), "--class-names", str(tmp_path / "names.txt"), "--input-size", "64",
            "--vis-limit", "0"]
    assert main(args) == 0
    data = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert data["images"] and all(set(r["probs"]) == {"bird", "boat", "car"} for r in data["images"])
    for r in data["images"]:
        for p in r["proposals"]:
            x0, y0, x1, y1 = p["box"]
            assert p["label"] in ("bird", "boat", "car") and 0 <= x0 < x1 <= r["width"] and 0 <= y0 < y1 <= r["height"]
    # export labels boxes with the model's own names
    assert main(["export", str(tmp_path / "out" / "predictions.json"), "--format", "yolo", "-o", str(tmp_path / "y")]) == 0
    assert (tmp_path / "y" / "classes.txt").read_text().split() == ["bird", "boat", "car"]
    n_boxes = sum(len(r["proposals"]) for r in data["images"])
    assert sum(len(p.read_text().splitlines()) for p in (tmp_path / "y").rglob("*.txt") if p.name != "classes.txt") == n_boxes
    # mistakes are one line each
    assert main(args[:-8] + ["--weights", str(tmp_path / "r18.pt")]) == 2
    assert "--model torchvision:resnet18 needs --class-names FILE, --input-size N" in capsys.readouterr().err
    assert main(args[:5] + ["torchvision:nosuchnet"] + args[6:]) == 2
    assert "torchvision has no classification model 'nosuchnet'" in capsys.readouterr().err
    (tmp_path / "two.txt").write_text("a\nb\n")
    assert main(args[:9] + [str(tmp_path / "two.txt")] + args[10:]) == 2
    assert "does not fit ResNet" in capsys.readouterr().err
    assert main(["localize", str(SAMPLES), "-o", str(tmp_path / "o"), "--input-size", "64"]) == 2
    assert "--input-size describes your own --model" in capsys.readouterr().err


def test_evaluate_scores_a_users_model_on_annotations_of_its_own_classes(tiny, tmp_path):
    """`gradloc evaluate --model ...`: a COCO file whose categories are the model's own names
    (one by an alias of the user's) is mapped onto its classes; CorLoc per class is reported
    by those names and beats the best centred box; Grad-CAM runs on its last feature layer, CAM,
    which needs a linear head 'fc', is left out. Scoring the run's predictions.json gives the
    same CorLoc."""
    folder, _ = tiny
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.RandomState(2)
    images, annotations = [], []
    categories = [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}, {"id": 7, "name": "azure"},
                  {"id": 9, "name": "cat"}]  # azure: the user's alias for blue; cat: not one of the model's
    for k in range(9):
        name = list(COLOURS)[k % 3]
        img, (x0, y0, x1, y1) = scene(rng, 64, rng.randint(18, 30), COLOURS[name])
        Image.fromarray(img).save(photos / f"{k}.png")
        images.append({"id": k, "file_name": f"{k}.png", "width": 64, "height": 64})
        annotations.append({"id": k, "image_id": k, "category_id": {"red": 1, "green": 2, "blue": 7}[name],
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    annotations.append({"id": 99, "image_id": 0, "category_id": 9, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0})
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    (tmp_path / "aliases.json").write_text(json.dumps({"azure": "blue"}))
    model = ["--model", f"{folder / 'tiny_cnn.py'}:tiny_cnn", "--weights", str(folder / "tiny.pt"),
             "--class-names", str(folder / "names.txt"), "--input-size", "32", "--mean", "0.5,0.5,0.5",
             "--std", "0.25,0.25,0.25", "--precision", "fp32"]
    assert main(["evaluate", str(ann), "--images", str(photos), "-o", str(tmp_path / "ev"),
                 "--aliases", str(tmp_path / "aliases.json"), *model, "--feature-layer", "6"]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    results, info = metrics["results"], metrics["info"]
    assert info["pairs"] == 9 and info["unmapped_classes"] == {"cat": 1}
    ours = results["gradloc (gradient)"]["corloc"]
    assert set(ours["per_class@0.5"]) == {"red", "green", "blue"}
    assert ours["0.5"] >= results["best centred box"]["corloc"]["0.5"] + 0.2
    # Grad-CAM on its last feature layer (the last ReLU, named); CAM needs a linear head 'fc' it lacks
    assert set(results["Grad-CAM (final features, CAM box)"]["corloc"]["per_class@0.5"]) == {"red", "green", "blue"}
    assert "CAM (CAM box)" not in results and any("CAM left out" in n for n in info["notes"])
    assert main(["evaluate", str(ann), "--images", str(photos), "-o", str(tmp_path / "ev0"), *model]) == 0
    # unnamed, its last feature map is found by tracing (the last ReLU), and Grad-CAM runs on it
    again = json.loads((tmp_path / "ev0" / "metrics.json").read_text())
    assert again["info"]["settings"]["feature_layer"] == "6"
    assert "Grad-CAM (final features, CAM box)" in again["results"]
    # the run's own predictions.json, scored later, names the same classes
    assert main(["localize", str(photos), "-o", str(tmp_path / "run"), *model, "--classes", "red,green,blue"]) == 0
    assert main(["evaluate", str(ann), "--predictions", str(tmp_path / "run" / "predictions.json"),
                 "-o", str(tmp_path / "ev2"), "--aliases", str(tmp_path / "aliases.json")]) == 0
    again = json.loads((tmp_path / "ev2" / "metrics.json").read_text())["results"]
    assert set(next(iter(again.values()))["corloc"]["per_class@0.5"]) == {"red", "green", "blue"}
    # and its COCO results carry the annotation file's own category ids (blue -> 7, through the alias)
    assert main(["export-coco", str(tmp_path / "run" / "predictions.json"), "--annotations", str(ann),
                 "--aliases", str(tmp_path / "aliases.json"), "-o", str(tmp_path / "dets.json")]) == 0
    dets = json.loads((tmp_path / "dets.json").read_text())
    assert dets and {d["category_id"] for d in dets} <= {1, 2, 7}
    assert {d["category_id"] for d in dets if d["image_id"] in (2, 5, 8)} >= {7}  # the blue squares' images


def test_sensitivity_of_a_users_model(tiny, tmp_path):
    """`gradloc sensitivity --model ...`: the mean |d f_c / d x| per predicted class of the user's
    classifier, on its input grid, counted under its own class names."""
    folder, model = tiny
    rng = np.random.RandomState(3)
    for k in range(6):
        name = list(COLOURS)[k % 3]
        img, _ = scene(rng, 32, 14, COLOURS[name])
        Image.fromarray(img).save(tmp_path / f"{k}_{name}.png")
    assert main(["sensitivity", str(tmp_path), "-o", str(tmp_path / "sens"), "--model", f"{folder / 'tiny_cnn.py'}:tiny_cnn",
                 "--weights", str(folder / "tiny.pt"), "--class-names", str(folder / "names.txt"), "--input-size", "32",
                 "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--workers", "0"]) == 0
    info = json.loads((tmp_path / "sens" / "sensitivity.json").read_text())
    assert info["counts"] == {"red": 2, "green": 2, "blue": 2, "none": 0}  # each square's colour, as trained
    means = np.load(tmp_path / "sens" / "sensitivity.npy")
    assert means.shape == (4, 32, 32) and (means[:3].max((1, 2)) > 0).all() and not means[3].any()
    assert (tmp_path / "sens" / "red.png").is_file() and not (tmp_path / "sens" / "none.png").exists()
