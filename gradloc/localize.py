"""Run a ProposalGenerator over files and folders, streaming results to an output folder."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .engines.ray_actors import engine_runner
from .data.labels import read_labels
from .data.io import OutputLock, ResultStream, atomic_write_text, dumps_record, find_images, write_predictions_json
from .models.wrn import CIFAR10_CLASSES
from .data.preprocess import open_image
from .discovery.results import Prediction
from .viz import panel, save_panel

FORMAT_VERSION = 1
VIS_MAX_SIDE = 640


def format_probs(probs: dict) -> str:
    ranked = sorted(probs.items(), key=lambda kv: -kv[1])
    return "  ".join(f"{c} {p:.3f}" for c, p in ranked)


def _write_panel(vis_dir: Path, index: int, path: Path, x32: torch.Tensor, result: dict, classes) -> str:
    """A panel for one image (the original re-read and shrunk for drawing); its file name."""
    im = Image.fromarray(np.asarray(open_image(path)))
    w, h = im.size
    scale = min(1.0, VIS_MAX_SIDE / max(w, h))
    if scale < 1:
        im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    shown = dict(result, boxes=result["boxes"] * scale)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in path.stem)[:60]
    name = f"{index:06d}_{safe}.png"
    save_panel(vis_dir / name, panel(np.asarray(im), x32, shown, classes=classes))
    return name


def write_contact_sheet(out: Path, vis_dir: Path, files: dict[str, str]) -> Path:
    """``out/index.html``: every panel in ``vis_dir`` (linked, not embedded: a folder of photos
    would make one huge file), captioned by its image's path (``files``: panel name -> path)."""
    import html

    def caption(name: str) -> str:  # a path that is not UTF-8 is shown with replacement characters
        return html.escape(name.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
    figures = [f'<figure><a href="vis/{html.escape(p.name)}"><img src="vis/{html.escape(p.name)}" loading="lazy" '
               f'alt="{caption(files.get(p.name, p.name))}"></a><figcaption>{caption(files.get(p.name, p.name))}'
               "</figcaption></figure>" for p in sorted(vis_dir.glob("*.png"))]
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>gradloc panels</title><style>"
            "body{font-family:system-ui,sans-serif;margin:16px} .sheet{display:flex;flex-wrap:wrap;gap:10px}"
            "figure{margin:0;font-size:12px;max-width:440px;overflow-wrap:anywhere} img{width:440px;border:1px solid #bbb}"
            f"</style></head><body><h1>gradloc panels ({len(figures)})</h1>"
            "<p>Boxes on each image (best first), the 32x32 input, the saliency map and the kept pixels. "
            "Results: <code>predictions.json</code>.</p><div class=\"sheet\">" + "\n".join(figures) + "</div></body></html>\n")
    path = out / "index.html"
    atomic_write_text(path, page)
    return path


def localize(gen, paths: list[str], out: Path, classes=None, resume: bool = False,
             workers: int | None = None, vis_limit: int = 200, verbose: bool = False,
             settings: dict | None = None, engine: str = "local", ray_options=None,
             classes_from: str | Path | None = None, aliases: dict[str, str] | None = None) -> dict:
    """Localise objects in every image under ``paths``; write results into ``out``.

    ``classes``: one class request for every image; or ``classes_from``: each image's own
    classes from a label source (:func:`gradloc.data.labels.read_labels`: ``"folders"``, a
    ``file,class`` CSV or a COCO file; ``aliases`` maps its names to classes), images without
    a label skipped with the reason.

    ``engine``: ``local`` (this process, ``workers`` decoding processes) or ``ray``
    (:mod:`gradloc.engines.ray_actors`, with ``ray_options``); both write the same bytes.
    Returns a summary: counts of images done, skipped, resumed, and seconds.
    """
    with OutputLock(out):  # one writer per output folder
        return write_run(gen, paths, out, classes, resume, workers, vis_limit, verbose, settings, engine, ray_options,
                         classes_from, aliases)


def write_run(gen, paths, out: Path, classes, resume, workers, vis_limit, verbose, settings, engine, ray_options,
              classes_from, aliases) -> dict:
    """:func:`localize`'s run, with the output folder's lock held."""
    t0 = time.time()
    if classes is not None and classes_from is not None:
        raise ValueError("give classes for every image or classes_from a label source, not both")
    files, walk_skips = find_images(paths)
    labels = read_labels(classes_from, files, paths, aliases, gen.spec.classes) if classes_from is not None else None
    requested = classes if labels is None else {"from": labels.source, "sha256": labels.fingerprint()}
    out.mkdir(parents=True, exist_ok=True)
    # what ran, for API callers too (a resumed run must run the same), plus the caller's own notes
    settings = {**gen.settings(), **(settings or {})}
    run_file = out / "run.json"
    if resume and run_file.is_file():
        try:
            state = json.loads(run_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot resume in {out}: {run_file} is corrupt ({exc}); "
                             "use another output folder or delete it to start over") from None
        before = state.get("settings") if isinstance(state, dict) else None
        if not isinstance(before, dict):
            raise ValueError(f"cannot resume in {out}: {run_file} does not hold a gradloc run's settings; "
                             "use another output folder or delete it to start over")
        if state.get("classes") != requested:
            raise ValueError(f"cannot resume in {out}: the earlier run localised classes {state.get('classes')!r}, "
                             f"this one asks for {requested!r}; use another output folder or the same classes")
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if changed:
            raise ValueError(f"cannot resume in {out}: settings differ from the earlier run "
                             f"({', '.join(f'{k}: {before.get(k)!r} -> {settings.get(k)!r}' for k in changed)}); "
                             "use another output folder or the same options")
    atomic_write_text(run_file, dumps_record({"settings": settings, "classes": requested}))
    stream = ResultStream(out / "predictions.jsonl", resume=resume)
    already = len(stream.done)
    if labels is not None:
        for problem in labels.problems:
            print(f"gradloc: labels: {problem}", file=sys.stderr)
        walk_skips = walk_skips + [{"file": str(f), "reason": labels.reason(f)} for f in files if labels.of(f) is None]
        files = [f for f in files if labels.of(f) is not None]
    new_skips = [s for s in walk_skips if not stream.has(s["file"])]
    for s in new_skips:
        print(f"skipped {s['file']}: {s['reason']}", file=sys.stderr)
    stream.write([{"file": s["file"], "skipped": s["reason"]} for s in new_skips])
    todo = [f for f in files if not stream.has(str(f))]
    if resume and not todo and not new_skips and (out / "predictions.json").is_file():
        stream.close()
        print(f"gradloc: nothing to do: every image of the run in {out} is finished ({out / 'predictions.json'})",
              file=sys.stderr)
        return {"images": already, "skipped": 0, "resumed": already, "new": 0, "seconds": round(time.time() - t0, 2),
                "label_problems": 0}
    if not files and not walk_skips:
        print("gradloc: no image files found under the given paths", file=sys.stderr)
    n_ok = n_skip = 0
    vis_dir = out / "vis"
    panels: dict[str, str] = {}
    with stream:
        per_image = (lambda i: classes) if labels is None else (lambda i: labels.of(todo[i]))
        for done, failed in engine_runner(engine, ray_options)(gen, todo, per_image, workers, desc="localize"):
            records = []
            for i, x32, size, res in done:
                rec = Prediction.from_result(res).to_record(str(todo[i]), size, gen.spec.classes)
                records.append(rec)
                if verbose:
                    tqdm.write(f"{todo[i]}: {format_probs(rec['probs'])}")
                if already + n_ok + len(records) <= vis_limit:
                    try:
                        panels[_write_panel(vis_dir, already + n_ok + len(records) - 1, todo[i], x32, res,
                                                 gen.spec.classes)] = \
                            rec["file"]
                    except Exception as exc:  # a panel is a nicety; never lose the result
                        tqdm.write(f"warning: no panel for {todo[i]}: {exc}", file=sys.stderr)
            for i, reason in failed:
                records.append({"file": str(todo[i]), "skipped": reason})
                tqdm.write(f"skipped {todo[i]}: {reason}", file=sys.stderr)
            stream.write(records)
            n_ok += len(done)
            n_skip += len(failed)
    header = {"format": "gradloc-predictions", "version": FORMAT_VERSION,
              "classes": list(gen.spec.classes), "settings": settings}
    n_images, n_skipped = write_predictions_json(out / "predictions.jsonl", out / "predictions.json", header)
    if vis_dir.is_dir():
        write_contact_sheet(out, vis_dir, panels)
    secs = time.time() - t0
    summary = {"images": n_images, "skipped": n_skipped, "resumed": already,
               "new": n_ok, "seconds": round(secs, 2), "label_problems": len(labels.problems) if labels else 0}
    rate = f", {n_ok / secs:.1f} img/s" if n_ok and secs > 0 else ""
    problems = f", {len(labels.problems)} label problems (listed above)" if labels and labels.problems else ""
    print(f"gradloc: {n_images} images localised ({already} from a previous run), "
          f"{n_skipped} skipped{problems}, in {secs:.1f} s{rate}; results in {out / 'predictions.json'}",
          file=sys.stderr)
    return summary
