#!/usr/bin/env python
"""Sweep saliency methods x post-processing on the dev and synthetic benchmarks.

Each method's maps are computed once per benchmark (the expensive part, timed: ms/image);
every post-processing variant then reruns only the cheap half of the pipeline on the cached
maps. Scores: GT-known CorLoc@0.5 (the issue's bar), MaxBoxAccV2 and the pointing game,
beside the best centred box and Grad-CAM. The table goes between ``<!-- sweep:begin -->``
and ``<!-- sweep:end -->`` in BENCHMARKS.md.

    python scripts/sweep.py --dev-n 2000 --synthetic-n 500 --write BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gradloc.report import replace_marked_block  # noqa: E402
from gradloc import ProposalGenerator  # noqa: E402
from gradloc.annotations import load_annotations  # noqa: E402
from gradloc.baselines import CENTRED_AREAS, baseline_centred  # noqa: E402
from gradloc.metrics import corloc, max_box_acc_v2, pointing_game  # noqa: E402
from gradloc.report import describe_threshold  # noqa: E402
from gradloc.results import result_prediction  # noqa: E402
from gradloc.runner import run_files  # noqa: E402
from gradloc.model import default_weights_path, sha256_of, wide_resnet  # noqa: E402
from gradloc.config import Options  # noqa: E402

BEGIN, END = "<!-- sweep:begin -->", "<!-- sweep:end -->"

METHODS = {
    "gradient": {},
    "gradient (l2)": {"method": "gradient", "reduce": "l2"},
    "gradient (logits)": {"method": "gradient", "model_output": "logits"},
    "gradient-positive": {"method": "gradient-positive"},
    "grad-x-input": {"method": "grad-x-input"},
    "smoothgrad": {"method": "smoothgrad", "samples": 16},
    "smoothgrad-sq": {"method": "smoothgrad-sq", "samples": 16},
    "vargrad": {"method": "vargrad", "samples": 16},
    "integrated-gradients": {"method": "integrated-gradients", "steps": 16},
    "layer block1": {"method": "layer", "layer": "block1"},
    "layer block2": {"method": "layer", "layer": "block2"},
    "gradcam": {"method": "gradcam"},
    "occlusion": {"method": "occlusion"},
}
# Stage 1: the full post-processing grid on the reference method (plain gradient).
THRESHOLDS = (("top-n", 100), ("top-n", 250), ("mass", 0.4), ("mass", 0.5), ("mass", 0.6),
              ("fraction", 0.2), ("otsu", None))
POST = {"smooth_sigma": (0.0, 1.0), "kernel": (3, 7), "union_box": (False, True)}
# Stage 1b: crop rescoring (one box per rung of a mass ladder, ranked by its crop's class probability).
LADDERS = ("0.4,0.5,0.6,0.7", "0.3,0.5,0.7", "0.4,0.5,0.6", "0.5,0.6,0.7")
# Stage 1c: how the best box is picked on the default ladder (σ=1, close 3, +union): the rescoring
# score, the moment-box candidate (std), and the fusion temperature (0: the best box as it is).
# Plain crop rescoring on that ladder is among stage 1b's rows.
SELECTION = (("crop-delete", 0.0, 0.0), ("crop-delete", 0.0, 0.1), ("crop-delete", 0.0, 0.2),
             ("crop-delete", 1.5, 0.0), ("crop-delete", 1.5, 0.1), ("crop-delete", 1.5, 0.2),
             ("crop-delete", 1.5, 1.0))
SHORTLIST = 4  # stage 2: the best stage-1 settings, tried on every other method


def post_grid():
    keys = list(POST)
    for (name, value), values in itertools.product(THRESHOLDS, itertools.product(*POST.values())):
        post = {"threshold": name, "rescore": "off", **dict(zip(keys, values))}
        post["top_n" if name == "top-n" else "threshold_value"] = value
        yield post
    for ladder, sigma, union in itertools.product(LADDERS, (0.0, 1.0), (False, True)):
        yield {"threshold": "mass", "rescore": "crop", "ladder": ladder, "smooth_sigma": sigma, "kernel": 3,
               "union_box": union, "moment_box": 0.0, "fuse": 0.0}
    for rescore, moment, fuse in SELECTION:
        yield {"threshold": "mass", "rescore": rescore, "ladder": LADDERS[0], "smooth_sigma": 1.0, "kernel": 3,
               "union_box": True, "moment_box": moment, "fuse": fuse}


def margin(row: dict, best: dict) -> float:
    """Smaller CorLoc margin over the strongest baseline (centred box or Grad-CAM) of the two benchmarks."""
    return min(row[b] - best[b] for b in best)


def cached_maps(gen, ds, images_dir: Path, workers: int):
    """Run the saliency half once over a benchmark: per image (its maps ``[R, 32, 32]``, their
    classes ``[R]``, its probabilities ``[10]``, size, index, working image); the working image
    is what crop rescoring cuts proposals from."""
    files = [images_dir / im.file for im in ds.images]

    def saliency(x, sizes, specs, work):
        maps, row_image, row_class, probs = gen.net.saliency_rows(x, [("list", s) for s in specs])
        return [(maps[row_image == j], row_class[row_image == j], probs[j], sizes[j], work[j])
                for j in range(len(sizes))]

    cache, n = [], 0
    t0 = time.perf_counter()
    for done, _ in run_files(gen, files, lambda i: ds.images[i].classes(), workers, step=saliency,
                             keep_work=True, desc="maps"):
        cache += [(i, *out) for i, _, _, out in done]
        n += len(done)
    return cache, 1000 * (time.perf_counter() - t0) / max(n, 1)


class MemoCropScores:
    """``Rescorer.crop_scores`` memoised across post-processing settings of one sweep:
    ladders share rungs and most settings share boxes, so most crops repeat. ``asked`` counts the
    crops requested (what a stand-alone run forwards); only unseen ones are computed."""

    def __init__(self, gen):
        self.compute = gen.rescorer.crop_scores
        self.memo: dict = {}
        self.asked = 0

    def __call__(self, images, boxes, classes) -> list[torch.Tensor]:
        # the working images stay alive in the map cache for the whole sweep, so id() is a stable key
        keys = [[(id(img), int(c), *b) for b in bx.tolist()] for img, bx, c in zip(images, boxes, classes)]
        self.asked += sum(map(len, keys))
        todo = []
        for img, bx, c, ks in zip(images, boxes, classes, keys):
            new = {k: j for j, k in enumerate(ks) if k not in self.memo}  # also drops repeats within a call
            if new:
                todo.append((img, bx[list(new.values())], c, list(new)))
        if todo:
            imgs, bxs, cls, new_keys = zip(*todo)
            for ks, scores in zip(new_keys, self.compute(list(imgs), list(bxs), list(cls))):
                self.memo.update(zip(ks, scores.tolist()))
        return [torch.tensor([self.memo[k] for k in ks], dtype=torch.float32) for ks in keys]


def score_post(gen, ds, cache, post: dict, memo=None, chunk: int = 128) -> dict:
    """The post-processing ``post`` (options) on cached maps, ``chunk`` images at a time."""
    g = gen.with_options(**post)
    if memo is not None:
        g.rescorer.crop_scores = memo
    t0 = time.perf_counter()
    preds = [None] * len(ds.images)
    for s in range(0, len(cache), chunk):
        part = cache[s:s + chunk]
        maps = torch.cat([m for _, m, _, _, _, _ in part])
        row_image = torch.cat([torch.full((len(m),), j) for j, (_, m, _, _, _, _) in enumerate(part)])
        row_class = torch.cat([c for _, _, c, _, _, _ in part])
        probs = torch.stack([p for _, _, _, p, _, _ in part])
        results = g.proposals_from_maps(maps, row_image, row_class, probs, [sz for *_, sz, _ in part],
                                        [w for *_, w in part])
        for (i, *_), res in zip(part, results):
            preds[i] = result_prediction(res)
    ms = 1000 * (time.perf_counter() - t0) / max(len(ds.images), 1)
    return {"corloc": corloc(ds, preds)["0.5"], "preds": preds, "ms": ms}


def describe(post: dict) -> str:
    if not post:
        return "CAM recipe (20% of max, largest component)"
    d = Options(**post)
    return f"σ={d.smooth_sigma:g}, {describe_threshold(d)}, {d.morph} {d.kernel}" + (", +union" if d.union_box else "")


def weights_label(weights: str) -> str:
    """File name and short sha256 of the weights the sweep used."""
    path = default_weights_path() if weights == "default" else Path(weights)
    return f"{path.name}` (sha256 `{sha256_of(path)[:16]}...`"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "gradloc-bench")
    p.add_argument("--weights", default="default")
    p.add_argument("--dev-n", type=int, default=2000, help="random dev images (seeded), 0 for all")
    p.add_argument("--synthetic-n", type=int, default=500)
    p.add_argument("--methods", default=",".join(m for m in METHODS if m != "gradcam"),
                   help="the first is the reference method of stage 1")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--top", type=int, default=25, help="rows of the table (best dev CorLoc first)")
    p.add_argument("--write", type=Path, default=None)
    args = p.parse_args()
    dev = args.cache / "tinyimagenet-cifar8-dev"
    synth = args.cache / f"synthetic-{args.synthetic_n}"
    if not (dev / "annotations.json").is_file():
        if not (args.shared / "tinyimagenet-cifar8-dev.tar.gz").is_file():
            print(f"the dev benchmark is not in {args.shared}", file=sys.stderr)
            return 1
        import tarfile
        with tarfile.open(args.shared / "tinyimagenet-cifar8-dev.tar.gz") as tar:
            tar.extractall(args.cache, filter="data")
    if not (synth / "annotations.json").is_file():
        from gradloc.synthetic import make_synthetic
        make_synthetic(args.shared / "cifar10-jpeg.tar.gz", synth, n=args.synthetic_n, seed=0)
    benches = {}
    ds = load_annotations(dev / "annotations.json")
    if args.dev_n:
        ds.images = random.Random(0).sample(ds.images, min(args.dev_n, len(ds.images)))
    benches["dev"] = (ds, dev / "images")
    benches["synthetic"] = (load_annotations(synth / "annotations.json"), synth / "images")
    model = wide_resnet(weights=args.weights)
    names = args.methods.split(",")

    def evaluate(name: str, posts: list[dict]) -> list[dict]:
        gen = ProposalGenerator(model, device="cpu", batch_size=args.batch_size,
                                **{"method": "gradient", **METHODS[name]})
        caches = {b: cached_maps(gen, d, img, args.workers) for b, (d, img) in benches.items()}
        memo = MemoCropScores(gen)
        out = []
        for post in posts:
            row = {"method": name, "post": describe(post), "setting": post, "ms": caches["dev"][1]}
            for b, (d, _) in benches.items():
                asked = memo.asked
                r = score_post(gen, d, caches[b][0], post, memo)
                row[b] = r["corloc"]
                if b == "dev":
                    row["post_ms"] = r["ms"]
                    row["crops"] = (memo.asked - asked) / len(d.images)
                    row["pointing"] = pointing_game(d, r["preds"])
                    row["maxbox"] = (max_box_acc_v2(d, r["preds"]) or {}).get("v2")
            out.append(row)
            print(f"{name:22s} {row['post']:40s} dev {100 * row['dev']:.1f} synth "
                  f"{100 * row['synthetic']:.1f} ({row['ms']:.1f} ms/img)", file=sys.stderr, flush=True)
        return out

    cam = evaluate("gradcam", [{}])[0]
    centred = {b: max(corloc(d, baseline_centred(d, a))["0.5"] for a in CENTRED_AREAS)
               for b, (d, _) in benches.items()}
    best = {b: max(centred[b], cam[b]) for b in benches}
    rows = evaluate(names[0], list(post_grid()))
    rows.sort(key=lambda r: -margin(r, best))
    shortlist = [r["setting"] for r in rows[:SHORTLIST]]
    for name in names[1:]:
        if name != "gradcam":
            rows += evaluate(name, shortlist)
    rows.sort(key=lambda r: -margin(r, best))
    fmt = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = [BEGIN, "", f"Weights: `{weights_label(args.weights)}`. "
             f"Dev: {len(benches['dev'][0].images)} random dev images "
             f"(seed 0); synthetic: {len(benches['synthetic'][0].images)} canvases (128 px). CorLoc@0.5 of the "
             f"baselines: best centred box dev {fmt(centred['dev'])}, synthetic {fmt(centred['synthetic'])}; "
             f"Grad-CAM (CAM recipe) dev {fmt(cam['dev'])}, synthetic {fmt(cam['synthetic'])}.",
             "", f"Stage 1 tries {len(list(post_grid()))} post-processing settings on `{names[0]}`; stage 2 "
             f"tries the best {SHORTLIST} of them on every other method. Rows are sorted by the *margin*: "
             "the smaller, over the two benchmarks, of CorLoc@0.5 minus the strongest baseline's (positive "
             "means both baselines are beaten on both). ms/image: the saliency maps, then the post-processing "
             "(boxes, and crop rescoring's forward pass), per dev image on this CPU. Crop probabilities are "
             "memoised across the settings of one method (ladders share rungs), so a crop-rescoring row's "
             "post-processing time understates a stand-alone run, which forwards every one of its crops: "
             "crops/image counts them (0 without rescoring). "
             "Regenerate: `python scripts/sweep.py --write BENCHMARKS.md`.",
             "", "| method | post-processing | margin | dev CorLoc@0.5 | synthetic CorLoc@0.5 | dev MaxBoxAccV2 "
             "| dev pointing | ms/image (maps + post) | crops/image |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows[:args.top]:
        lines.append(f"| {r['method']} | {r['post']} | {fmt(margin(r, best))} | {fmt(r['dev'])} | "
                     f"{fmt(r['synthetic'])} | {fmt(r['maxbox'])} | {fmt(r['pointing'])} | "
                     f"{r['ms']:.1f} + {r['post_ms']:.1f} | {r.get('crops', 0):.1f} |")
    best_per_method = {}
    for r in rows:
        best_per_method.setdefault(r["method"], r)
    lines += ["", "Best setting per method:", "", "| method | post-processing | margin | dev | synthetic | ms/image |",
              "| --- | --- | ---: | ---: | ---: | ---: |"]
    for m, r in best_per_method.items():
        lines.append(f"| {m} | {r['post']} | {fmt(margin(r, best))} | {fmt(r['dev'])} | {fmt(r['synthetic'])} "
                     f"| {r['ms']:.1f} |")
    lines += ["", END]
    text = "\n".join(lines)
    print(text)
    if args.write:
        replace_marked_block(args.write, BEGIN, END, text, "## Method and post-processing sweep")
    return 0


if __name__ == "__main__":
    sys.exit(main())
