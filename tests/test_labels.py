"""--classes-from: image-level labels in (folders, a file,class CSV, a COCO file), each image
localised for exactly its own classes; mismatches said one line each."""
import json

import numpy as np
import pytest
from PIL import Image

from gradloc.cli import main


@pytest.fixture
def tree(tmp_path):
    """photos/bird/{0,1}.png, photos/boat/2.png, photos/misc/3.png (a folder naming no class)."""
    rng = np.random.RandomState(0)
    files = {}
    for n, folder in enumerate(["bird", "bird", "boat", "misc"]):
        path = tmp_path / "photos" / folder / f"{n}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.randint(0, 255, (40, 56, 3)).astype(np.uint8)).save(path)
        files[f"{folder}/{n}.png"] = path
    return tmp_path, files


def run(tmp_path, weights, source, name, *extra):
    out = tmp_path / name
    code = main(["localize", str(tmp_path / "photos"), "-o", str(out), "--weights", str(weights),
                 "--vis-limit", "0", "--classes-from", str(source), *extra])
    return code, json.loads((out / "predictions.json").read_text()) if code == 0 else None


def labelled(data):
    return {r["file"].split("photos/")[1]: sorted({p["label"] for p in r["proposals"]}) for r in data["images"]}


def test_folders_csv_and_coco_label_each_image_with_its_own_class(tree, random_weights_file, capsys):
    tmp_path, files = tree
    code, by_folder = run(tmp_path, random_weights_file, "folders", "f")
    assert code == 0
    err = capsys.readouterr().err
    assert "folder 'misc' names no class of the model" in err and "1 label problems" in err
    assert labelled(by_folder) == {"bird/0.png": ["bird"], "bird/1.png": ["bird"], "boat/2.png": ["ship"]}
    skipped = by_folder["skipped"]
    assert len(skipped) == 1 and "'misc' names no class of the model" in skipped[0]["reason"]

    csv = tmp_path / "labels.csv"  # relative to the CSV's folder, to the folder given, and absolute
    csv.write_text(f"file,class\nphotos/bird/0.png,bird\nbird/1.png,bird\n{files['boat/2.png']},boat\n"
                   "photos/gone.png,cat\nphotos/misc/3.png,unicorn\n")
    code, by_csv = run(tmp_path, random_weights_file, csv, "c")
    err = capsys.readouterr().err
    assert code == 0 and "labels.csv:5: photos/gone.png is not among the images given" in err
    assert "labels.csv:6: class 'unicorn' is none of the model's" in err and "2 label problems" in err
    # the same labels give the same proposals, whichever source they came from
    assert [r["proposals"] for r in by_csv["images"]] == [r["proposals"] for r in by_folder["images"]]

    coco = tmp_path / "labels.json"
    coco.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "photos/bird/0.png"}, {"id": 2, "file_name": "photos/misc/3.png"}],
        "annotations": [{"image_id": 1, "category_id": 7}, {"image_id": 2, "category_id": 7},
                        {"image_id": 2, "category_id": 3}],
        "categories": [{"id": 7, "name": "bird"}, {"id": 3, "name": "car"}]}))
    code, by_coco = run(tmp_path, random_weights_file, coco, "j")
    assert code == 0 and labelled(by_coco) == {"bird/0.png": ["bird"], "misc/3.png": ["automobile", "bird"]}
    assert len(by_coco["skipped"]) == 2  # bird/1 and boat/2 are not in the file


def test_label_sources_that_cannot_be_read_are_one_line_errors(tree, random_weights_file, capsys):
    tmp_path, _ = tree
    bad = tmp_path / "bad.csv"
    bad.write_text("image,label\na.png,cat\n")
    assert run(tmp_path, random_weights_file, bad, "o")[0] == 2
    assert "the first row must be the header file,class" in capsys.readouterr().err
    assert run(tmp_path, random_weights_file, tmp_path / "none.csv", "o")[0] == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["localize", str(tmp_path / "photos"), "-o", str(tmp_path / "o"), "--weights", str(random_weights_file),
                 "--classes", "cat", "--classes-from", "folders"]) == 2
    assert "not both" in capsys.readouterr().err


def test_resume_refuses_changed_labels(tree, random_weights_file, capsys):
    tmp_path, _ = tree
    csv = tmp_path / "labels.csv"
    csv.write_text("file,class\nphotos/bird/0.png,bird\n")
    assert run(tmp_path, random_weights_file, csv, "r")[0] == 0
    assert run(tmp_path, random_weights_file, csv, "r", "--resume")[0] == 0
    csv.write_text("file,class\nphotos/bird/0.png,cat\n")
    assert run(tmp_path, random_weights_file, csv, "r", "--resume")[0] == 2
    assert "cannot resume" in capsys.readouterr().err
