"""One self-contained HTML page per evaluation: tables, curves and a contact sheet, images embedded.

``report.html`` opens offline in any browser and can be mailed as one file: every plot and
example is a base64 ``data:`` URI, there is no script and no external resource. It shows what
``report.md`` says (the metrics table with the baselines, by object size, per class) plus the
CorLoc-vs-IoU and recall curves and, per class, the best and worst examples with the ground
truth (green) and the method's proposals (red, the top-1 thick) drawn.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

import cv2
import numpy as np

from ..data.io import atomic_write_text
from .metrics import top1_ious

EXAMPLES_PER_CLASS = 3   # best and worst pairs shown per class
THUMB_SIDE = 220         # contact-sheet thumbnails, longer side in pixels

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
table { border-collapse: collapse; margin: 8px 0 20px; font-size: 13px; display: block; overflow-x: auto; max-width: 100%; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr:nth-child(even) { background: #f4f6f8; }
img.plot { max-width: 640px; margin: 4px 12px 12px 0; border: 1px solid #ddd; }
.sheet { display: flex; flex-wrap: wrap; gap: 8px; margin-bottom: 16px; }
figure { margin: 0; font-size: 12px; text-align: center; }
figure img { display: block; border: 1px solid #bbb; }
figcaption.best { color: #1a7f37; } figcaption.worst { color: #b42318; }
"""


def data_uri(path_or_png: Path | bytes, mime: str = "image/png") -> str:
    """A file (or encoded image bytes) as a ``data:`` URI."""
    raw = path_or_png if isinstance(path_or_png, bytes) else Path(path_or_png).read_bytes()
    return f"data:{mime};base64," + base64.b64encode(raw).decode("ascii")


def markdown_table_to_html(text: str) -> str:
    """The pipe tables of :mod:`gradloc.evaluation.report` (header, rule, rows) -> an HTML table."""
    rows = [r.strip().strip("|").split("|") for r in text.strip().splitlines()]
    head, body = rows[0], rows[2:]
    out = ["<table><thead><tr>" + "".join(f"<th>{html.escape(c.strip())}</th>" for c in head) + "</tr></thead><tbody>"]
    out += ["<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>" for r in body]
    return "\n".join(out + ["</tbody></table>"])


def example_thumbnail(rgb: np.ndarray, truth: np.ndarray, proposals: np.ndarray) -> bytes:
    """An image with its ground truth (green) and proposals (red, top-1 thick) as JPEG bytes,
    shrunk to :data:`THUMB_SIDE`."""
    f = THUMB_SIDE / max(rgb.shape[:2])
    img = cv2.resize(np.ascontiguousarray(rgb), (max(1, round(rgb.shape[1] * f)), max(1, round(rgb.shape[0] * f))),
                     interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_NEAREST)
    img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    for boxes, colour, widths in ((truth, (60, 200, 60), (2,)), (proposals, (40, 40, 230), (3, 1))):
        for k, b in enumerate(np.asarray(boxes, np.float64).reshape(-1, 4) * f):
            x0, y0, x1, y1 = (int(round(v)) for v in b)
            cv2.rectangle(img, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), colour, widths[min(k, len(widths) - 1)])
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return buf.tobytes() if ok else b""


def contact_sheet(ds, preds: list, images_dir: Path, per_class: int = EXAMPLES_PER_CLASS) -> str:
    """Per class, the ``per_class`` best and worst (image, class) pairs by top-1 IoU, as HTML."""
    from ..data.preprocess import ImageError, open_image

    ious, idx, cls = top1_ious(ds, preds)
    parts = []
    for c in sorted(set(cls.tolist())):
        mine = np.flatnonzero(cls == c)
        order = mine[np.argsort(-ious[mine], kind="stable")]
        picks = [("best", j) for j in order[:per_class]]
        picks += [("worst", j) for j in order[::-1][:per_class] if j not in order[:per_class]]
        figures = []
        for kind, j in picks:
            im = ds.images[idx[j]]
            try:
                rgb = np.asarray(open_image(Path(images_dir) / im.file))
            except ImageError as exc:
                figures.append(f"<figure><figcaption>{html.escape(im.file)}: {html.escape(str(exc))}</figcaption></figure>")
                continue
            boxes = preds[idx[j]].boxes.get(c)
            thumb = example_thumbnail(rgb, im.boxes_of(c).numpy(), np.zeros((0, 4)) if boxes is None else boxes[:3].numpy())
            figures.append(f'<figure><img src="{data_uri(thumb, "image/jpeg")}" alt="{html.escape(im.file)}">'
                           f'<figcaption class="{kind}">{kind}: IoU {ious[j]:.2f}<br>{html.escape(Path(im.file).name[:32])}'
                           "</figcaption></figure>")
        parts.append(f"<h3>{html.escape(ds.class_names[c])} ({len(mine)} pairs)</h3><div class=\"sheet\">{''.join(figures)}</div>")
    return "\n".join(parts)


def write_html_report(out: Path, evaluation, tables: dict[str, str], plots: list[str]) -> Path:
    """``out/report.html`` for an :class:`~gradloc.evaluation.evaluate.Evaluation`: ``tables`` {heading:
    Markdown pipe table}, the PNG ``plots`` written in ``out`` (embedded) and the contact sheet
    of the evaluated method."""
    e = evaluation
    body = [f"<h1>{html.escape(e.title)}</h1>", "<ul>"]
    body += [f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in e.info.items()
             if not isinstance(v, (list, dict))]
    body.append("</ul><p>All values in percent; definitions in <code>report.md</code> and the README.</p>")
    for heading, table in tables.items():
        body += [f"<h2>{html.escape(heading)}</h2>", markdown_table_to_html(table)]
    body.append("<h2>Curves</h2>")
    body += [f'<img class="plot" src="{data_uri(out / p)}" alt="{p}">' for p in plots if (out / p).is_file()]
    if e.images_dir is not None and e.method_name in e.preds_by_name:
        body += [f"<h2>Examples: {html.escape(e.method_name)}</h2>",
                 "<p>Ground truth green, proposals red (top-1 thick); best and worst pairs by top-1 IoU.</p>",
                 contact_sheet(e.ds, e.preds_by_name[e.method_name], e.images_dir)]
    for key in ("skipped", "annotation_problems"):
        items = e.info.get(key) or []
        if items:
            body.append(f"<h2>{key.replace('_', ' ')} ({len(items)})</h2><ul>")
            body += [f"<li>{html.escape(str(s['file']))}: {html.escape(str(s['reason']))}</li>" for s in items[:200]]
            body.append("</ul>")
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(e.title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
    path = out / "report.html"
    atomic_write_text(path, page)
    return path
