"""report.html (self-contained, rendered by a real headless browser where one is installed),
the localize contact sheet, and readable panels."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gradloc.cli import main
from gradloc.evaluation.html_report import markdown_table_to_html

from .test_evaluate import two_image_set

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "headless_shell")


def browser() -> str | None:
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


def screenshot(page: Path, png: Path) -> np.ndarray:
    exe = browser()
    if exe is None:
        pytest.skip("no Chromium installed (apt install chromium)")
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,1600", f"--screenshot={png}", page.resolve().as_uri()],
                   check=True, timeout=120, capture_output=True)
    return np.asarray(Image.open(png).convert("RGB"))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, random_weights_file):
    tmp = tmp_path_factory.mktemp("html")
    images, ann = two_image_set(tmp)
    out = tmp / "ev"
    assert main(["evaluate", str(ann), "--images", str(images), "-o", str(out),
                 "--weights", str(random_weights_file), "--workers", "0"]) == 0
    return out


def test_report_html_is_one_self_contained_file(evaluated):
    page = (evaluated / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/") for s in sources)  # nothing to fetch
    assert "<script" not in page and "http://" not in page and "https://" not in page
    metrics = json.loads((evaluated / "metrics.json").read_text())
    for name in metrics["results"]:  # every method and baseline has its row
        assert f"<td>{name}</td>" in page
    assert "CorLoc small" in page and "Examples: gradloc (gradient)" in page
    assert page.count('class="best"') >= 1 and len(sources) >= 5  # 4 plots + thumbnails


def test_report_html_renders_in_a_headless_browser(evaluated, tmp_path):
    shot = screenshot(evaluated / "report.html", tmp_path / "shot.png")
    assert shot.shape[0] > 100 and shot.std() > 10  # not blank: text, tables and plots drawn
    assert (shot.reshape(-1, 3) < 100).all(1).mean() > 0.005  # dark pixels: text was rendered


def test_markdown_tables_become_html_tables():
    text = "| method | CorLoc |\n| --- | ---: |\n| a <b> | 1.0 |\n| c | – |"
    page = markdown_table_to_html(text)
    assert page.count("<tr>") == 3 and "<th>CorLoc</th>" in page and "a &lt;b&gt;" in page


def test_localize_writes_a_contact_sheet_and_legible_panels(tmp_path, random_weights_file):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 255, (480, 640, 3)).astype(np.uint8)).save(folder / "big.jpg")
    Image.fromarray(rng.randint(0, 255, (32, 32, 3)).astype(np.uint8)).save(folder / "small & <odd>.png")
    out = tmp_path / "out"
    assert main(["localize", str(folder), "-o", str(out), "--weights", str(random_weights_file)]) == 0
    panels = sorted((out / "vis").glob("*.png"))
    assert len(panels) == 2
    for p in panels:
        w, h = Image.open(p).size
        assert w >= 800 and h >= 480  # the image is shown large, whatever its own size
    page = (out / "index.html").read_text(encoding="utf-8")
    assert all(f'src="vis/{p.name}"' in page for p in panels)
    assert "small &amp; &lt;odd&gt;.png" in page
    shot = screenshot(out / "index.html", tmp_path / "sheet.png")
    assert shot.std() > 10
