"""gradloc calibrate: settings chosen on boxed images of one's own data, reported on held-out ones,
and read back by --settings."""
import json

import numpy as np
import pytest
from PIL import Image

from gradloc.cli import main
from gradloc.evaluation.calibrate import bootstrap_interval, read_settings

from .test_activation import MODEL_FILE, colour_model

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def boxed_images(folder, n=16, seed=0) -> dict:
    """``n`` 96x128 grey images, each with one coloured square of 24-40 px, and their COCO file."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for k in range(n):
        name = list(COLOURS)[k % 3]
        img = np.full((96, 128, 3), 110, np.uint8)
        side = int(rng.integers(24, 41))
        x, y = int(rng.integers(0, 128 - side)), int(rng.integers(0, 96 - side))
        img[y:y + side, x:x + side] = COLOURS[name]
        Image.fromarray(img).save(folder / f"{k:02d}.png")
        images.append({"id": k + 1, "file_name": f"{k:02d}.png", "width": 128, "height": 96})
        annotations.append({"id": k + 1, "image_id": k + 1, "category_id": list(COLOURS).index(name) + 1,
                            "bbox": [x, y, side, side], "area": side * side, "iscrowd": 0})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": c} for i, c in enumerate(COLOURS)]}
    (folder / "annotations.json").write_text(json.dumps(coco))
    return coco


def model_flags(folder) -> list[str]:
    (folder / "colour_net.py").write_text(MODEL_FILE)
    import torch
    torch.save(colour_model(3).state_dict(), folder / "colour.pt")
    (folder / "names.txt").write_text("red\ngreen\nblue\n")
    return ["--model", f"{folder / 'colour_net.py'}:build", "--weights", str(folder / "colour.pt"),
            "--class-names", str(folder / "names.txt"), "--input-size", "32", "--mean", "0,0,0", "--std", "1,1,1",
            "--feature-layer", "relu", "--precision", "fp32"]


def test_calibration_beats_a_bad_default_on_held_out_images_and_its_settings_are_read_back(tmp_path, capsys):
    boxed_images(tmp_path)
    flags = model_flags(tmp_path)
    settings = tmp_path / "settings.json"
    # a deliberately bad start: the 1,000 strongest of 1,024 pixels box nearly the whole image
    bad = ["--threshold", "top-n", "--top-n", "1000", "--rescore", "off"]
    assert main(["calibrate", str(tmp_path / "annotations.json"), "--images", str(tmp_path), "-o", str(settings),
                 "--workers", "0", *bad, *flags]) == 0
    result = json.loads(settings.read_text())
    held = result["calibration"]["held_out"]
    assert result["calibration"]["images"] == {"choose": 8, "held_out": 8}
    assert held["calibrated"]["corloc"] >= held["given"]["corloc"] + 0.5, held
    for s in held.values():
        assert s["low"] <= s["corloc"] <= s["high"] and s["pairs"] == 8
    assert result["options"]["threshold"] == "mass" and "min_score" in result["options"]
    assert "held-out" in capsys.readouterr().out
    # localize reads the file; a flag given beside it wins
    assert read_settings(settings)["threshold"] == "mass"
    for extra, want in (([], "mass"), (["--threshold", "top-n"], "top-n")):
        out = tmp_path / f"out-{want}"
        assert main(["localize", str(tmp_path / "00.png"), "-o", str(out), "--settings", str(settings), "--vis-limit",
                     "0", *extra, *flags]) == 0
        recorded = json.loads((out / "run.json").read_text())["settings"]
        assert recorded["threshold"] == want and recorded["min_score"] == pytest.approx(result["options"]["min_score"])
    # a run's own record is a settings file too
    assert read_settings(tmp_path / "out-mass" / "run.json")["threshold"] == "mass"


def test_a_file_that_is_not_settings_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    for text, says in (("[1, 2]", "not a settings file"), ('{"format": "gradloc-settings", "options": {"top_n": -3}}',
                                                          "top_n must be")):
        bad.write_text(text)
        assert main(["localize", str(tmp_path), "-o", str(tmp_path / "o"), "--settings", str(bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err


def test_bootstrap_interval_holds_the_mean_and_narrows_with_more_pairs():
    few = np.array([1.0, 0.0] * 10)
    many = np.array([1.0, 0.0] * 500)
    lo, hi = bootstrap_interval(few)
    lo2, hi2 = bootstrap_interval(many)
    assert lo < 0.5 < hi and lo2 < 0.5 < hi2 and hi2 - lo2 < (hi - lo) / 3


def test_only_a_gain_beyond_chance_moves_the_settings():
    from gradloc.evaluation.calibrate import confident_gain
    old = np.zeros(20)
    one, six = old.copy(), old.copy()
    one[0] = 1       # one more pair of 20: noise
    six[:6] = 1      # six more, none lost
    assert not confident_gain(one, old) and confident_gain(six, old)
    lost = old.copy()
    lost[6:11] = 1   # six won where five others are lost
    assert not confident_gain(six, lost)
