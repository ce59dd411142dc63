"""The judge of boxes (``judge``): which network's class probabilities rescore the candidates."""
import tarfile

import pytest
import torch

from gradloc import ProposalGenerator
from gradloc.cli import main
from gradloc.data.annotations import load_annotations
from gradloc.data.preprocess import to_rgb_tensor
from gradloc.models.wrn import WideResNet, extent_judge_path, wide_resnet

from .conftest import SAMPLES, shared_file
from .test_multiscale import RedDetector

CAT = SAMPLES / "chelsea_cat.png"
BOXES = [[0, 0, 120, 90], [100, 20, 300, 200], [10, 10, 440, 290]]


def test_auto_is_the_extent_judge_for_a_cifar_wrn_and_the_classifier_for_any_other_model(random_wrn):
    assert extent_judge_path().is_file()
    assert ProposalGenerator(random_wrn, device="cpu").judge == "extent"
    assert ProposalGenerator(RedDetector(), device="cpu").judge == "classifier"
    # a WRN of other classes or another normalisation is not the judge's to score
    other = ProposalGenerator.from_classifier(random_wrn, [f"c{i}" for i in range(10)], 32, (0.5,) * 3, (0.25,) * 3,
                                              device="cpu")
    assert other.judge == "classifier"
    # without rescoring nothing judges boxes: the option is inert and said so
    assert ProposalGenerator(random_wrn, device="cpu", rescore="off").judge == "classifier"
    with pytest.warns(UserWarning, match="--judge 'extent' does nothing"):
        ProposalGenerator(random_wrn, device="cpu", rescore="off", judge="extent")


def test_a_judge_file_scores_boxes_as_that_network_would_as_the_classifier(random_wrn, tmp_path):
    """Oracle: a judge file rescores (and ``score_boxes`` answers) exactly as a generator whose
    classifier is that network, judging its own boxes, does."""
    torch.manual_seed(3)
    judge = WideResNet(16, 4).eval()
    path = tmp_path / "judge.pt"
    torch.save(judge.state_dict(), path)
    with_file = ProposalGenerator(random_wrn, device="cpu", precision="fp32", judge=str(path))
    as_classifier = ProposalGenerator(wide_resnet(weights=path), device="cpu", precision="fp32", judge="classifier")
    assert with_file.judge == str(path) and with_file.settings()["judge"] == str(path)
    for cls in ("cat", 5):
        torch.testing.assert_close(with_file.score_boxes(CAT, BOXES, cls), as_classifier.score_boxes(CAT, BOXES, cls))
    # the classifier's own judge gives other scores: the judge is not ignored
    own = ProposalGenerator(random_wrn, device="cpu", precision="fp32", judge="classifier")
    assert not torch.allclose(own.score_boxes(CAT, BOXES, "cat"), with_file.score_boxes(CAT, BOXES, "cat"))


def test_the_extent_judge_prefers_the_whole_object_to_a_looser_box_more_often_than_the_classifier(tmp_path):
    """Oracle: VOC 2007 ground truth. Over the first 150 photographs of voc07-cifar-dev (never
    trained on), the extent judge scores each pair's largest box above the box 1.5x its side
    (clipped) in more pairs than the classifier judging itself does (BENCHMARKS.md has the
    whole set)."""
    with tarfile.open(shared_file("voc07-cifar-dev.tar.gz")) as tar:
        tar.extractall(tmp_path, filter="data")
    root = next(p for p in tmp_path.iterdir() if p.is_dir())
    ds = load_annotations(root / "annotations.json")
    extent = ProposalGenerator.pretrained(device="cpu")
    own = extent.with_options(judge="classifier")
    wins = {"extent": 0, "classifier": 0}
    for im in ds.images[:150]:
        rgb = to_rgb_tensor(root / "images" / im.file)
        h, w = rgb.shape[-2:]
        for c in im.classes():
            gt = im.boxes_of(c)
            box = gt[((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])).argmax()].float()
            centre, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) * 0.75
            loose = torch.cat([centre - half, centre + half]).clamp_min(0).minimum(torch.tensor([w, h, w, h]))
            for name, gen in (("extent", extent), ("classifier", own)):
                whole, looser = gen.score_boxes(rgb, torch.stack([box, loose]), c)
                wins[name] += bool(whole > looser)
    assert wins["extent"] > wins["classifier"], wins


def test_a_judge_that_cannot_judge_the_model_or_does_not_load_is_one_line(tmp_path, capsys, random_weights_file):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a state dict")
    for judge, says in ((str(bad), "cannot read weights file"), (str(tmp_path / "missing.pt"), "not found")):
        code = main(["localize", str(CAT), "-o", str(tmp_path / "out"), "--weights", str(random_weights_file),
                     "--judge", judge, "--vis-limit", "0"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and says in err[0], err
    model = tmp_path / "three.py"
    model.write_text("import torch\n"
                     "def build(num_classes):\n"
                     "    return torch.nn.Sequential(torch.nn.Conv2d(3, num_classes, 3), torch.nn.AdaptiveAvgPool2d(1),"
                     " torch.nn.Flatten())\n")
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\n")
    weights = tmp_path / "three.pt"
    import importlib.util
    spec = importlib.util.spec_from_file_location("three", model)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.save(mod.build(3).state_dict(), weights)
    code = main(["localize", str(CAT), "-o", str(tmp_path / "out3"), "--model", f"{model}:build", "--weights",
                 str(weights), "--class-names", str(names), "--input-size", "32", "--judge", "extent",
                 "--vis-limit", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot judge this classifier's classes" in err[0], err
    assert not (tmp_path / "out3" / "predictions.json").exists()
