"""metrics.json, report.md and plots for an evaluation: the method beside the baselines."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .metrics import (MISS_KINDS, PRESENCE_THRESHOLDS, SIZE_BUCKETS, presence_curve, recall_and_mbo,  # noqa: E402
                      top1_ious)
from ..data.io import atomic_write_text  # noqa: E402

COLUMNS = [
    ("CorLoc@0.3", lambda m: m["corloc"]["0.3"]),
    ("CorLoc@0.5", lambda m: m["corloc"]["0.5"]),
    ("CorLoc@0.7", lambda m: m["corloc"]["0.7"]),
    ("Top-1 loc", lambda m: m["top1_loc"]),
    ("MaxBoxAccV2", lambda m: m["maxboxacc"] and m["maxboxacc"]["v2"]),
    ("Pointing", lambda m: m["pointing"]),
    ("Recall@1", lambda m: m["proposals"]["recall@1"]),
    ("Recall@5", lambda m: m["proposals"]["recall@5"]),
    ("Recall@10", lambda m: m["proposals"]["recall@10"]),
    ("MBO@1", lambda m: m["proposals"]["mbo@1"]),
    ("AR@1", lambda m: _coco(m, "per_class", "AR1")),
    ("AR@10", lambda m: _coco(m, "per_class", "AR10")),
    ("AR@100", lambda m: _coco(m, "per_class", "AR100")),
    ("AR@100 agnostic", lambda m: _coco(m, "class_agnostic", "AR100")),
    ("AP", lambda m: _coco(m, "per_class", "AP")),
    ("Cls acc", lambda m: m["accuracy"]),
]


def describe_threshold(options) -> str:
    """The threshold stage of :class:`~gradloc.discovery.config.Options` in words, as BENCHMARKS.md prints it."""
    from ..discovery.threshold import DEFAULT_MASS_SHARE
    o = options
    name, value = o.threshold, (o.top_n if o.threshold == "top-n" else o.threshold_value)
    how = {"crop": "crop rescoring", "crop-delete": "crop-minus-deletion rescoring"}.get(o.rescore)
    if how and o.moment_box > 0:
        how += f", +moment box ({o.moment_box:g} std)"
    if how and o.frame_box > 0:
        how += f", +frame box ({o.frame_box:g} of each side, whole images)"
    if how and o.peaks > 0:
        how += f", +regions of the {o.peaks} strongest peaks at {o.peak_fractions} of their value (pyramid)"
    if how and o.fuse > 0:
        how += f", best box fused with its neighbours (T={o.fuse:g})"
    if how and name == "mass":
        return f"mass ladder {o.ladder} (best box of each rung), {how}"
    if name == "mass" and value is None:
        value = DEFAULT_MASS_SHARE
    text = f"top-{value}" if name == "top-n" else (f"{name} {value:g}" if value is not None else name)
    return text + (f", {how}" if how else "")


def _coco(m: dict, kind: str, stat: str):
    return (m.get("coco") or {}).get(kind, {}).get(stat)


def _fmt(v) -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.1f}"


def markdown_table(heads: list[str], rows: list[tuple[str, list[str]]]) -> str:
    """The one Markdown table writer: a ``method`` column, then ``heads`` right-aligned; ``rows``
    are (method, cells). Empty without rows."""
    if not rows:
        return ""
    lines = ["| method | " + " | ".join(heads) + " |", "| --- |" + " ---: |" * len(heads)]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    return "\n".join(lines)


def results_table(results: dict[str, dict]) -> str:
    """One row per method or baseline, values in percent."""
    return markdown_table([c for c, _ in COLUMNS],
                          [(name, [_fmt(f(m)) for _, f in COLUMNS]) for name, m in results.items()])


def size_table(results: dict[str, dict]) -> str:
    """CorLoc@0.5 by the size of the pair's largest box, AR@100 and AP by COCO object size,
    per class and class-agnostic, in percent."""
    counts = next(iter(results.values()))["corloc"].get("n_by_size", {}) if results else {}
    corloc_cols = [(f"CorLoc {s} (n={counts.get(s, 0)})", s) for s in ("small", "medium", "large")]
    cols = [("AR small", "per_class", "AR_small"), ("AR medium", "per_class", "AR_medium"),
            ("AR large", "per_class", "AR_large"), ("agnostic AR small", "class_agnostic", "AR_small"),
            ("agnostic AR medium", "class_agnostic", "AR_medium"), ("agnostic AR large", "class_agnostic", "AR_large"),
            ("AP small", "per_class", "AP_small"), ("AP medium", "per_class", "AP_medium"),
            ("AP large", "per_class", "AP_large")]
    rows = [(name, [_fmt(m["corloc"].get("by_size@0.5", {}).get(s)) for _, s in corloc_cols]
             + [_fmt(_coco(m, k, s)) for _, k, s in cols]) for name, m in results.items()]
    return markdown_table([c for c, _ in corloc_cols] + [c for c, _, _ in cols], rows)


def oracle_table(results: dict[str, dict]) -> str:
    """Per method with candidates: CorLoc@0.5 of the chosen box beside the oracle's (the best
    candidate, before selection) and the share of oracle hits that selection keeps, overall and
    by object size, in percent. Empty when no method carries candidates."""
    heads, rows = [], []
    for s in ("all", "small", "medium", "large"):
        heads += [f"chosen {s}", f"oracle {s}", f"kept {s}"]
    for name, m in results.items():
        if not m.get("oracle"):
            continue
        o, cl = m["oracle"], m["corloc"]
        cells = [_fmt(cl["0.5"]), _fmt(o["oracle"]), _fmt(o["chosen_given_oracle"])]
        for s in ("small", "medium", "large"):
            cells += [_fmt(cl["by_size@0.5"].get(s)), _fmt(o["oracle_by_size"].get(s)),
                      _fmt(o["chosen_given_oracle_by_size"].get(s))]
        rows.append((name, cells))
    return markdown_table(heads, rows)


def misses_table(results: dict[str, dict]) -> str:
    """Per method: how many pairs its top-1 box misses at IoU 0.5 and, in percent of those, how
    (:func:`~gradloc.evaluation.metrics.miss_kind`), overall and per object size."""
    sizes = [name for name, _, _ in SIZE_BUCKETS]
    rows = []
    for name, m in ((n, m["misses"]) for n, m in results.items() if m.get("misses")):
        cells = [str(m["n"])] + [_fmt(m["share"][k]) for k in MISS_KINDS]
        for s in sizes:
            b = m["by_size"][s]
            cells.append(" / ".join(_fmt(b["share"][k]) for k in MISS_KINDS[:3]) + f" ({b['n']})")
        rows.append((name, cells))
    return markdown_table(["misses", *MISS_KINDS] + [f"{s}: too large / part / elsewhere (misses)" for s in sizes], rows)

MISSES_HEADING = ("Why the top-1 box misses (percent of the pairs it misses at IoU 0.5, against the class's box it "
                  "overlaps most: too large holds at least half of it, part lies at least half inside it)")


def presence_table(results: dict[str, dict]) -> str:
    """Per method: presence AP@0.5, best F1 and the score it is at, and precision / recall of
    the claims kept at each minimum score, in percent."""
    named = [(n, m["presence"]) for n, m in results.items() if m.get("presence")]
    # gradloc's claims ranked by the class probability too, where its own scores rank otherwise
    named += [(f"{n}, ranked by the class probability", m["presence_by_prob"]) for n, m in results.items()
              if m.get("kind") == "gradloc" and m.get("presence_by_prob") and m.get("presence")
              and m["presence_by_prob"]["AP"] != m["presence"]["AP"]]
    rows = []
    for name, pr in named:
        at = pr["at_min_score"]
        cells = [_fmt(pr["AP"]), _fmt(pr["best_f1"]),
                 "–" if pr["best_f1_min_score"] is None else f"{pr['best_f1_min_score']:.2f}"]
        cells += [f"{_fmt(at[f'{t:g}']['precision'])}/{_fmt(at[f'{t:g}']['recall'])}" for t in PRESENCE_THRESHOLDS]
        rows.append((name, cells))
    return markdown_table(["AP", "best F1", "at score"] + [f"P/R @{t:g}" for t in PRESENCE_THRESHOLDS], rows)


PRESENCE_HEADING = ("Present or absent (a claim: an (image, class) given a box; right when the class is there "
                    "and the box hits at IoU 0.5; ranked by score over the whole set)")


def plot_presence_curve(ds, preds_by_name: dict, path: Path) -> None:
    """Precision against recall of the presence claims (:func:`~gradloc.evaluation.metrics.presence_curve`)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, preds in preds_by_name.items():
        _, precision, recall, _ = presence_curve(ds, preds)
        ax.plot(recall, precision, label=name)
    ax.set_xlabel("recall (pairs found at IoU 0.5)")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


ORACLE_HEADING = ("Generation and selection (CorLoc@0.5 of the chosen box; oracle: of the best candidate "
                  "before selection; kept: share of oracle hits the chosen box keeps)")


def per_class_table(results: dict[str, dict], delta: str = "0.5") -> str:
    """GT-known CorLoc at ``delta`` per class, in the classifier's order, in percent."""
    classes = list(dict.fromkeys(c for m in results.values() for c in m["corloc"][f"per_class@{delta}"]))
    return markdown_table(classes, [(name, [_fmt(m["corloc"][f"per_class@{delta}"].get(c)) for c in classes])
                                    for name, m in results.items()])


def _line_plot(xs, series: dict, xlabel: str, ylabel: str, path: Path, logx: bool = False) -> None:
    """One line per method ``series`` {name: values at ``xs``}, saved to ``path``."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in series.items():
        ax.plot(xs, ys, label=name, marker=".")
    if logx:
        ax.set_xscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_corloc_curve(ds, preds_by_name: dict, path: Path) -> None:
    deltas = np.linspace(0.05, 0.95, 19)
    series = {}
    for name, preds in preds_by_name.items():
        ious, _, _ = top1_ious(ds, preds)
        series[name] = [(ious >= d).mean() * 100 for d in deltas]
    _line_plot(deltas, series, "IoU threshold δ", "GT-known CorLoc (%)", path)


RECALL_KS = (1, 2, 3, 5, 10)


def plot_recall_curve(ds, preds_by_name: dict, path: Path) -> None:
    """Recall of ground-truth boxes at IoU 0.5 by the number of proposals kept per class."""
    series = {}
    for name, preds in preds_by_name.items():
        r = recall_and_mbo(ds, preds, ks=RECALL_KS)
        series[name] = [100 * (r.get(f"recall@{k}") or 0) for k in RECALL_KS]
    _line_plot(list(RECALL_KS), series, "proposals per (image, class)", "recall of GT boxes at IoU 0.5 (%)",
               path, logx=True)


def plot_iou_histogram(ds, preds_by_name: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, preds in preds_by_name.items():
        ious, _, _ = top1_ious(ds, preds)
        ax.hist(ious, bins=20, range=(0, 1), histtype="step", label=name, linewidth=1.5)
    ax.set_xlabel("IoU of the top-1 box")
    ax.set_ylabel("(image, class) pairs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_class(results: dict[str, dict], path: Path) -> None:
    classes = list(dict.fromkeys(c for m in results.values() for c in m["corloc"]["per_class@0.5"]))
    x = np.arange(len(classes))
    width = 0.8 / max(1, len(results))
    fig, ax = plt.subplots(figsize=(max(6, len(classes) * 0.9), 4))
    for k, (name, m) in enumerate(results.items()):
        pc = m["corloc"]["per_class@0.5"]
        ax.bar(x + k * width, [100 * pc.get(c, 0) for c in classes], width, label=name)
    ax.set_xticks(x + width * (len(results) - 1) / 2, classes, rotation=30)
    ax.set_ylabel("CorLoc@0.5 (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_examples(ds, preds: list, images_dir: Path, path: Path, n: int = 8) -> None:
    """Best and worst (image, class) pairs by top-1 IoU: ground truth green, top-1 red."""
    from ..data.preprocess import ImageError, open_image

    ious, idx, cls = top1_ious(ds, preds)
    if not len(ious):
        return
    order = np.argsort(-ious, kind="stable")
    picks = [("best", j) for j in order[:n]] + [("worst", j) for j in order[::-1][:n]]
    cols = n
    fig, axes = plt.subplots(2, cols, figsize=(cols * 1.8, 4.2))
    for ax, (kind, j) in zip(axes.ravel(), picks):
        im, c = ds.images[idx[j]], cls[j]
        ax.axis("off")
        try:
            ax.imshow(np.asarray(open_image(Path(images_dir) / im.file)))
        except ImageError:
            continue
        for b in im.boxes_of(c).tolist():
            ax.add_patch(plt.Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, color="lime", lw=1.5))
        top = preds[idx[j]].boxes.get(c)
        if top is not None and len(top):
            b = top[0].tolist()
            ax.add_patch(plt.Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, color="red", lw=1.5))
        ax.set_title(f"{kind} {ds.class_names[c]} {ious[j]:.2f}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, evaluation) -> None:
    """Write an :class:`~gradloc.evaluation.evaluate.Evaluation` as metrics.json, report.md, the plots and
    the self-contained report.html (:mod:`gradloc.evaluation.html_report`) into ``out``."""
    e = evaluation
    title, results, ds, preds_by_name, images_dir, method_name, info = (
        e.title, e.results, e.ds, e.preds_by_name, e.images_dir, e.method_name, e.info)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps({"info": info, "results": results}, indent=1))
    plots = []
    if preds_by_name:
        plot_corloc_curve(ds, preds_by_name, out / "corloc_vs_iou.png")
        plot_iou_histogram(ds, preds_by_name, out / "iou_histogram.png")
        plot_recall_curve(ds, preds_by_name, out / "recall_curve.png")
        plot_presence_curve(ds, preds_by_name, out / "presence_pr.png")
        plots += ["corloc_vs_iou.png", "iou_histogram.png", "recall_curve.png", "presence_pr.png"]
    plot_per_class(results, out / "per_class.png")
    plots.append("per_class.png")
    if images_dir is not None and method_name in preds_by_name:
        plot_examples(ds, preds_by_name[method_name], images_dir, out / "examples.png")
        plots.append("examples.png")
    lines = [f"# {title}", ""]
    lines += [f"- {k}: {v}" for k, v in info.items() if not isinstance(v, (list, dict))]
    lines += ["", "All values in percent. Units: (image, class) pairs for CorLoc, MaxBoxAccV2 and "
              "pointing; ground-truth boxes for recall, MBO and AR; images for top-1 loc and accuracy. "
              "AR@k and AP: COCO's, IoU 0.5:0.95, per class (\"agnostic\": every box against every "
              "box of its image), computed by pycocotools from the results files in `coco/`; "
              + ("boxes were asked for the image's ground-truth classes only. " if info.get("request", "gt") == "gt"
                 else f"boxes were asked for each image's {info['request']} classes (ground truth unknown). ") +
              "Definitions: `gradloc/evaluation/evaluate.py`.", ""]
    sections = report_sections(results)
    for heading, table in sections.items():
        lines += ([f"## {heading}", ""] if heading != "Metrics" else []) + [table, ""]
    lines += [f"![{p}]({p})" for p in plots]
    for key in ("skipped", "annotation_problems"):
        items = info.get(key) or []
        if items:
            lines += ["", f"## {key.replace('_', ' ')} ({len(items)})", ""]
            lines += [f"- {s['file']}: {s['reason']}" for s in items[:50]]
            if len(items) > 50:
                lines.append(f"- ... and {len(items) - 50} more (metrics.json has them all)")
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    from .html_report import write_html_report
    write_html_report(out, evaluation, sections, [p for p in plots if p != "examples.png"])


def report_sections(results: dict[str, dict]) -> dict[str, str]:
    """The report's tables under their headings, in order, for report.md and report.html alike
    (tables with nothing to show left out)."""
    tables = {"Metrics": results_table(results),
              "By object size (small < 32², medium < 96², large; CorLoc by the pair's largest box; COCO AR@100, AP)":
                  size_table(results),
              "GT-known CorLoc@0.5 per class": per_class_table(results),
              ORACLE_HEADING: oracle_table(results), MISSES_HEADING: misses_table(results),
              PRESENCE_HEADING: presence_table(results)}
    return {heading: table for heading, table in tables.items() if table}


def replace_marked_block(path: Path, begin: str, end: str, text: str, heading: str) -> None:
    """Put ``text`` (which starts with ``begin`` and ends with ``end``) into the Markdown file,
    replacing the block between the markers, or appending it under ``heading``."""
    import re
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    if begin in old and end in old:
        new = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: text, old, flags=re.S)
    else:
        new = old.rstrip() + f"\n\n{heading}\n\n{text}\n"
    atomic_write_text(path, new)
