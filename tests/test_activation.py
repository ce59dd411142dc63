"""Multi-label and binary classifiers: ``activation`` sigmoid (``--activation``) in the maps, the
probabilities, rescoring and presence."""
import json

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.ops import box_iou

from gradloc import ProposalGenerator
from gradloc.attribution.saliency import make_method
from gradloc.cli import main

MODEL_FILE = '''
import torch
from torch import nn


class ColourLogits(nn.Module):
    """Logit k: how much of the image is colour k (red, green, blue), from 1x1 features."""

    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(3, num_classes)

    def forward(self, x):
        return self.head(self.relu(self.conv(x)).mean((2, 3)))


def build(num_classes):
    return ColourLogits(num_classes)
'''


def colour_model(num_classes: int = 3) -> nn.Module:
    """Feature k is the excess of colour k over the other two; logit k = 48 * its mean - 2, so an
    image a twelfth red gives red a logit of about 2 whatever else it holds."""
    namespace: dict = {}
    exec(MODEL_FILE, namespace)
    model = namespace["build"](num_classes)
    with torch.no_grad():
        model.conv.weight[:] = (torch.eye(3) * 2 - 1).view(3, 3, 1, 1)
        model.conv.bias.zero_()
        model.head.weight[:] = torch.eye(3)[:num_classes] * 48
        model.head.bias.fill_(-2.0)
    return model.eval()


def two_squares() -> tuple[np.ndarray, dict]:
    img = np.full((240, 320, 3), 0, np.uint8)
    img[40:120, 30:110] = (255, 0, 0)
    img[120:200, 200:280] = (0, 255, 0)
    return img, {"red": [30.0, 40.0, 110.0, 120.0], "green": [200.0, 120.0, 280.0, 200.0]}


def test_a_multi_label_model_gets_sigmoid_probabilities_and_a_box_per_class():
    img, truth = two_squares()
    model = colour_model()
    gen = ProposalGenerator.from_classifier(model, ["red", "green", "blue"], 32, (0, 0, 0), (1, 1, 1),
                                            feature_layer="relu", activation="sigmoid", precision="fp32")
    res = gen(img, classes=[["red", "green"]])[0]
    # the oracle: the model's own logits on the 32x32 view, through the sigmoid
    with torch.no_grad():
        view = torch.nn.functional.interpolate(torch.tensor(img).permute(2, 0, 1)[None].float() / 255, size=(32, 32),
                                               mode="bilinear", antialias=True, align_corners=False)
        want = model(view).sigmoid()[0]
    torch.testing.assert_close(res["probs"], want, atol=0.02, rtol=0)
    assert res["probs"][0] > 0.5 and res["probs"][1] > 0.5  # both there: impossible under a softmax
    for name, k in (("red", 0), ("green", 1)):
        box = res["boxes"][res["labels"] == k][:1]
        assert box_iou(box, torch.tensor([truth[name]])).item() > 0.5, (name, box)
    # the same model read as softmax gives probabilities that sum to one
    soft = ProposalGenerator.from_classifier(model, ["red", "green", "blue"], 32, (0, 0, 0), (1, 1, 1),
                                             feature_layer="relu", precision="fp32")(img)[0]
    assert abs(float(soft["probs"].sum()) - 1) < 1e-5


def test_sigmoid_maps_are_the_gradient_of_the_class_sigmoid():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    x = torch.randn(2, 3, 16, 16)
    maps, _ = make_method("gradient", model, "sigmoid")(x, torch.tensor([1, 2]))
    xx = x.clone().requires_grad_(True)
    out = model(xx).sigmoid()
    (g,) = torch.autograd.grad(out[0, 1] + out[1, 2], xx)
    torch.testing.assert_close(maps, g.abs().amax(1))


def test_a_binary_model_with_one_logit_runs_from_the_command_line(tmp_path, capsys):
    (tmp_path / "colour_net.py").write_text(MODEL_FILE)
    torch.save(colour_model(1).state_dict(), tmp_path / "red.pt")
    (tmp_path / "names.txt").write_text("red\n")
    img, truth = two_squares()
    Image.fromarray(img).save(tmp_path / "in.png")
    out = tmp_path / "out"
    code = main(["localize", str(tmp_path / "in.png"), "-o", str(out), "--model", f"{tmp_path / 'colour_net.py'}:build",
                 "--weights", str(tmp_path / "red.pt"), "--class-names", str(tmp_path / "names.txt"),
                 "--input-size", "32", "--mean", "0,0,0", "--std", "1,1,1", "--feature-layer", "relu",
                 "--precision", "fp32", "--vis-limit", "0"])
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "predictions.json").read_text())
    settings = json.loads((out / "run.json").read_text())["settings"]
    assert data["classes"] == ["red"] and settings["activation"] == "sigmoid"  # one name: sigmoid by default
    rec = data["images"][0]
    assert set(rec["probs"]) == {"red"} and 0.5 < rec["probs"]["red"] < 1
    assert box_iou(torch.tensor([rec["proposals"][0]["box"]]), torch.tensor([truth["red"]])).item() > 0.5
    # one name read as softmax cannot be a classifier: one line, exit 2
    capsys.readouterr()
    assert main(["localize", str(tmp_path / "in.png"), "-o", str(tmp_path / "o2"), "--model",
                 f"{tmp_path / 'colour_net.py'}:build", "--weights", str(tmp_path / "red.pt"), "--class-names",
                 str(tmp_path / "names.txt"), "--input-size", "32", "--activation", "softmax", "--vis-limit", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sigmoid" in err[0], err
