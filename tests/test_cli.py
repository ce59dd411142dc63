"""The command line on the bundled samples, on a folder of bad inputs, and killed mid-run."""
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gradloc
from gradloc.cli import main
from gradloc.models.wrn import CIFAR10_CLASSES

from .conftest import SAMPLES


def run_cli(*args):
    return main([str(a) for a in args])


def test_localize_samples_writes_valid_json_and_panels(tmp_path, random_weights_file, capsys):
    out = tmp_path / "out"
    rc = run_cli("localize", SAMPLES, "-o", out, "--weights", random_weights_file, "-v")
    assert rc == 0
    data = json.loads((out / "predictions.json").read_text())
    n = len(list(SAMPLES.rglob("*.png")))
    assert len(data["images"]) == n and data["skipped"] == []
    for rec in data["images"]:
        assert set(rec) >= {"file", "width", "height", "probs", "proposals"}
        assert Path(rec["file"]).is_file()
        assert set(rec["probs"]) == set(CIFAR10_CLASSES)
        assert sum(rec["probs"].values()) == pytest.approx(1, abs=1e-3)
        scores = [p["score"] for p in rec["proposals"]]
        assert scores == sorted(scores, reverse=True) and len(scores) >= 1
        for p in rec["proposals"]:
            x0, y0, x1, y1 = p["box"]
            assert 0 <= x0 < x1 <= rec["width"] and 0 <= y0 < y1 <= rec["height"]
            assert p["label"] in CIFAR10_CLASSES
    panels = sorted((out / "vis").glob("*.png"))
    assert len(panels) == n
    assert Image.open(panels[0]).size[0] >= 4 * 150
    err = capsys.readouterr()
    assert "composite_cat_dog" in err.out  # -v prints the class distribution


def test_classes_flag_applies_to_every_image(tmp_path, random_weights_file):
    out = tmp_path / "o"
    assert run_cli("localize", SAMPLES / "composite_cat_dog.png", "-o", out, "--classes", "cat,dog",
                   "--weights", random_weights_file, "--vis-limit", "0") == 0
    rec = json.loads((out / "predictions.json").read_text())["images"][0]
    assert {p["label"] for p in rec["proposals"]} <= {"cat", "dog"}
    assert not (out / "vis").exists()


def make_bad_corpus(d: Path) -> dict:
    """Every kind of messy input; returns {name: expected outcome ('ok' or a reason part)}."""
    d.mkdir()
    rgb = np.random.RandomState(0).randint(0, 255, (40, 60, 3)).astype(np.uint8)
    good = io.BytesIO()
    Image.fromarray(rgb).save(good, "JPEG")
    (d / "zero.jpg").write_bytes(b"")
    (d / "truncated.jpg").write_bytes(good.getvalue()[:300])
    Image.fromarray(rgb).save(d / "png_named.jpg", "PNG")
    (d / "text.png").write_text("not an image")
    Image.fromarray(rgb[..., 0]).save(d / "grey.png")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(d / "rgba.png")
    Image.fromarray(rgb).convert("P").save(d / "palette.png")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(d / "deep16.png")
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(rgb).save(d / "rotated.jpg", exif=exif)
    Image.new("RGB", (1, 1), (255, 0, 0)).save(d / "one_pixel.png")
    Image.new("RGB", (3000, 2000)).save(d / "huge.png")
    Image.new("RGB", (2000, 2)).save(d / "wide_strip.png")
    Image.new("RGB", (3, 900)).save(d / "tall_strip.png")
    Image.fromarray(rgb).save(d / "unicode ñame 猫.png")
    (d / "empty_folder").mkdir()
    (d / "sub").mkdir()
    Image.fromarray(rgb).save(d / "sub" / "nested.jpg")
    os.symlink("..", d / "sub" / "loop")
    locked = d / "locked.png"
    Image.fromarray(rgb).save(locked)
    locked.chmod(0)
    expected = {
        "zero.jpg": "empty", "truncated.jpg": "corrupt", "text.png": "not an image",
        "huge.png": "too large", "png_named.jpg": "ok", "grey.png": "ok", "rgba.png": "ok",
        "palette.png": "ok", "deep16.png": "ok", "cmyk.jpg": "ok", "rotated.jpg": "ok",
        "one_pixel.png": "ok", "wide_strip.png": "ok", "tall_strip.png": "ok",
        "unicode ñame 猫.png": "ok", "nested.jpg": "ok",
        # root can read a chmod-0 file; anyone else gets a clean skip
        "locked.png": "ok" if os.geteuid() == 0 else "permission",
    }
    return expected


def test_bad_inputs_are_skipped_with_reasons(tmp_path, random_weights_file, capsys):
    expected = make_bad_corpus(tmp_path / "messy")
    out = tmp_path / "out"
    rc = run_cli("localize", tmp_path / "messy", "-o", out, "--weights", random_weights_file,
                 "--max-pixels", "5000000", "--workers", "0")
    assert rc == 0
    data = json.loads((out / "predictions.json").read_text())
    done = {Path(r["file"]).name: r for r in data["images"]}
    skipped = {Path(s["file"]).name: s["reason"] for s in data["skipped"]}
    for name, outcome in expected.items():
        if outcome == "ok":
            assert name in done, f"{name} should be processed, skipped: {skipped.get(name)}"
        else:
            assert outcome in skipped[name], (name, skipped.get(name))
    assert done["rotated.jpg"]["width"] == 40 and done["rotated.jpg"]["height"] == 60
    assert len(done) + len(skipped) == len(expected)  # the symlink loop added nothing
    err = capsys.readouterr().err
    assert "Traceback" not in err and "skipped" in err


def test_nothing_to_do_exits_nonzero(tmp_path, random_weights_file, capsys):
    (tmp_path / "empty").mkdir()
    assert run_cli("localize", tmp_path / "empty", "-o", tmp_path / "o", "--weights", random_weights_file) == 1
    assert run_cli("localize", tmp_path / "missing", "-o", tmp_path / "o2", "--weights", random_weights_file) == 1
    assert "file not found" in capsys.readouterr().err


def test_bad_weights_and_bad_class_are_clean_errors(tmp_path, capsys):
    bad = tmp_path / "w.pt"
    bad.write_bytes(b"junk")
    assert run_cli("localize", SAMPLES, "-o", tmp_path / "o", "--weights", bad) == 2
    assert run_cli("localize", SAMPLES, "-o", tmp_path / "o", "--weights", tmp_path / "none.pt") == 2
    err = capsys.readouterr().err
    assert "cannot read weights" in err and "not found" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        run_cli("localize", SAMPLES, "-o", tmp_path / "o", "--method", "magic")
    assert e.value.code == 2


def test_killed_run_resumes_without_losing_or_redoing(tmp_path, random_weights_file):
    src = tmp_path / "many"
    src.mkdir()
    rng = np.random.RandomState(0)
    for i in range(400):
        Image.fromarray(rng.randint(0, 255, (32, 32, 3)).astype(np.uint8)).save(src / f"{i:04d}.png")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "gradloc.cli", "localize", str(src), "-o", str(out), "--weights",
           str(random_weights_file), "--batch-size", "4", "--workers", "0", "--vis-limit", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    jsonl = out / "predictions.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if jsonl.is_file() and jsonl.read_text().count("\n") >= 20:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = [json.loads(x) for x in jsonl.read_text().splitlines() if x.strip()]
    assert 20 <= len(before) < 400, "the run should have been killed part-way"
    assert not (out / "predictions.json").exists()  # written only at the end
    rc = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert rc.returncode == 0, rc.stderr
    data = json.loads((out / "predictions.json").read_text())
    files = [r["file"] for r in data["images"]]
    assert len(files) == len(set(files)) == 400
    by_file = {r["file"]: r for r in data["images"]}
    for rec in before:  # finished results are kept as they were
        assert by_file[rec["file"]] == rec
    assert f"{len(before)} from a previous run" in rc.stderr
    # Resuming with other settings would mix results: refused with a reason.
    other = subprocess.run(cmd + ["--resume", "--top-n", "50"], capture_output=True, text=True)
    assert other.returncode == 2 and "settings differ" in other.stderr and "Traceback" not in other.stderr


@pytest.mark.parametrize("argv, message", [
    (["--classes=,"], "names no class"),
    (["--classes", "topx"], "unknown class request"),
    (["--top-k", "-1"], "top_k must be an integer >= 1"),
    (["--box-padding", "-0.2"], "box_padding must be a number >= 0"),
    (["--batch-size", "0"], "batch_size must be an integer >= 1"),
])
def test_out_of_range_options_are_one_line_errors(tmp_path, random_weights_file, capsys, argv, message):
    code = main(["localize", str(SAMPLES / "cifar10" / "cat.png"), "-o", str(tmp_path / "o"),
                 "--weights", str(random_weights_file), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_api_refuses_empty_class_lists_and_bad_batch_sizes(random_wrn):
    from gradloc import ProposalGenerator
    with pytest.raises(ValueError, match="batch_size"):
        ProposalGenerator(random_wrn, device="cpu", batch_size=0)
    with pytest.raises(ValueError, match="no class named"):
        ProposalGenerator(random_wrn, device="cpu")(torch.zeros(3, 32, 32, dtype=torch.uint8), classes=[[]])


def test_file_names_that_are_not_utf8_are_kept_losslessly(tmp_path, random_weights_file):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "good.png")
    raw = os.fsencode(str(folder)) + b"/caf\xe9-\xff.png"  # Latin-1 bytes: not valid UTF-8
    with open(raw, "wb") as f:
        Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(f, format="PNG")
    out = tmp_path / "out"
    assert main(["localize", str(folder), "-o", str(out), "--weights", str(random_weights_file), "--vis-limit", "5"]) == 0
    data = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    names = sorted(os.fsencode(r["file"]) for r in data["images"])
    assert raw in names and len(names) == 2  # the name reads back to the same bytes


def test_resume_drops_a_line_cut_inside_a_character_and_refuses_other_classes(tmp_path, random_weights_file):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / name)
    out = tmp_path / "out"
    common = ["localize", str(folder), "-o", str(out), "--weights", str(random_weights_file), "--vis-limit", "0"]
    assert main(common) == 0
    jsonl = out / "predictions.jsonl"
    lines = jsonl.read_bytes().splitlines(keepends=True)
    cut = lines[1].replace(b'"file"', '"fil\u00e9"'.encode())[:8]  # ends in the middle of the 2-byte é
    jsonl.write_bytes(lines[0] + cut)
    assert main(common + ["--resume"]) == 0
    assert len(json.loads((out / "predictions.json").read_text())["images"]) == 3
    assert main(common + ["--resume", "--classes", "cat"]) == 2
    (out / "run.json").write_text("[1, 2]")
    assert main(common + ["--resume"]) == 2


def test_resume_with_the_folder_spelled_another_way_redoes_nothing(tmp_path, random_weights_file, monkeypatch, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(folder / name)
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    common = ["-o", str(out), "--weights", str(random_weights_file), "--vis-limit", "0"]
    assert main(["localize", "in"] + common) == 0  # relative
    before = json.loads((out / "predictions.json").read_text())["images"]
    capsys.readouterr()
    assert main(["localize", str(folder)] + common + ["--resume"]) == 0  # absolute: the same images
    assert "nothing to do: every image of the run" in capsys.readouterr().err
    assert json.loads((out / "predictions.json").read_text())["images"] == before


def test_corrupt_run_state_names_the_file(tmp_path, random_weights_file, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_bytes(b'{"settings": {"meth')
    code = main(["localize", str(SAMPLES / "cifar10" / "cat.png"), "-o", str(out), "--weights",
                 str(random_weights_file), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "run.json is corrupt" in err and "Traceback" not in err


def test_engine_ray_without_ray_is_a_one_line_error(tmp_path, random_weights_file, capsys, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    code = main(["localize", str(SAMPLES / "cifar10" / "cat.png"), "-o", str(tmp_path / "o"),
                 "--weights", str(random_weights_file), "--engine", "ray"])
    err = capsys.readouterr().err
    assert code == 2 and 'pip install "gradloc[ray]"' in err and "Traceback" not in err


def test_min_score_answers_absent(tmp_path):
    """--min-score 0.5 keeps no box under 0.5, and fewer boxes than without it (shipped weights)."""
    runs = {}
    for name, extra in (("all", []), ("kept", ["--min-score", "0.5"])):
        assert main(["localize", str(SAMPLES / "cifar10"), "-o", str(tmp_path / name), "--classes", "all",
                     "--vis-limit", "0", "--precision", "fp32"] + extra) == 0
        runs[name] = [p for r in json.loads((tmp_path / name / "predictions.json").read_text())["images"]
                      for p in r["proposals"]]
    assert runs["kept"] and all(p["score"] >= 0.5 for p in runs["kept"]) and len(runs["kept"]) < len(runs["all"])
    assert {json.dumps(p) for p in runs["kept"]} <= {json.dumps(p) for p in runs["all"]}


def test_api_resume_sees_changed_settings(tmp_path, random_weights_file):
    """localize() records the generator's effective settings itself, so an API caller's resume
    with other options is refused as the CLI's is."""
    from gradloc.localize import localize
    gen = gradloc.ProposalGenerator.pretrained(weights=random_weights_file, precision="fp32")
    localize(gen, [str(SAMPLES / "cifar10" / "cat.png")], tmp_path / "o", vis_limit=0)
    run = json.loads((tmp_path / "o" / "run.json").read_text())["settings"]
    assert run["top_n"] == 100 and run["precision"] == "fp32"
    localize(gen, [str(SAMPLES / "cifar10" / "cat.png")], tmp_path / "o", vis_limit=0, resume=True)
    with pytest.raises(ValueError, match="settings differ.*top_n: 100 -> 50"):
        localize(gen.with_options(top_n=50), [str(SAMPLES / "cifar10" / "cat.png")], tmp_path / "o", resume=True)


def test_options_that_do_nothing_are_said_so(tmp_path, random_weights_file, capsys):
    assert main(["localize", str(SAMPLES / "cifar10" / "cat.png"), "-o", str(tmp_path / "o"), "--weights",
                 str(random_weights_file), "--vis-limit", "0", "--rescore", "off", "--peaks", "2"]) == 0
    assert "gradloc: note: --peaks 2 does nothing: --rescore off ranks by the map alone" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="--samples 4 does nothing with --method gradient"):
        gradloc.ProposalGenerator.pretrained(weights=random_weights_file, samples=4)
