#!/usr/bin/env python
"""Regenerate the localisation tables of BENCHMARKS.md in one run.

Benchmarks:
- real photographs (``coco-real-dev.tar.gz``: 95 COCO photographs, ~640x480, 121 (image, class)
  pairs, small objects among clutter), with selective search as a class-agnostic anchor;
- the real dev benchmark (``tinyimagenet-cifar8-dev.tar.gz``: 12,000 Tiny ImageNet photographs,
  64x64, one human box each, 8 CIFAR-10 classes);
- the synthetic multi-object benchmark: ``gradloc make-synthetic`` with seed 0, 128x128
  textured canvases holding 1-3 CIFAR-10 *test* images of different classes (32-80 px).

Each is scored with `gradloc.evaluation.evaluate.run_evaluation` (the method, Grad-CAM and CAM as published on
the same network, and the box baselines, by the same code), and the tables are written between the markers
``<!-- localisation:begin -->`` and ``<!-- localisation:end -->`` of BENCHMARKS.md.

    python scripts/run_benchmarks.py --shared ../shared/data --write BENCHMARKS.md
    python scripts/run_benchmarks.py --dev-limit 500 --synthetic-n 200      # a quick look
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tarfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gradloc.evaluation.report import replace_marked_block  # noqa: E402
from gradloc import ProposalGenerator  # noqa: E402
from gradloc.evaluation.evaluate import run_evaluation as _run_evaluation  # noqa: E402
from gradloc.discovery.multiscale import resolve_scales  # noqa: E402
from gradloc.models.wrn import default_weights_path, extent_judge_path, sha256_of  # noqa: E402
from gradloc.evaluation.report import describe_threshold, per_class_table, results_table, size_table, write_report  # noqa: E402
from gradloc.data.synthetic import make_synthetic  # noqa: E402

BEGIN, END = "<!-- localisation:begin -->", "<!-- localisation:end -->"
SECTIONS = ("real", "dev", "synthetic", "large")


def markers(name: str) -> tuple[str, str]:
    return f"<!-- localisation-{name}:begin -->", f"<!-- localisation-{name}:end -->"


def run_evaluation(annotations, out, **kw) -> dict:
    """Evaluate, write the report into ``out``, return the metrics per method."""
    evaluation = _run_evaluation(annotations, out, **kw)
    write_report(out, evaluation)
    return evaluation.results


def extract(shared: Path, cache: Path, name: str) -> Path:
    root = cache / name
    if not (root / "annotations.json").is_file():
        with tarfile.open(shared / f"{name}.tar.gz") as tar:
            tar.extractall(cache, filter="data")
    return root


def extract_dev(shared: Path, cache: Path) -> Path:
    return extract(shared, cache, "tinyimagenet-cifar8-dev")


def judge_held_out(dev: Path, cache: Path) -> Path:
    """The dev set's annotations without the photographs the shipped extent judge was trained on
    (``weights/wrn16-4_extent_judge.trained.txt``): the half it has not seen."""
    trained = {ln.strip() for ln in extent_judge_path().with_suffix(".trained.txt").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    data = json.loads((dev / "annotations.json").read_text())
    data["images"] = [im for im in data["images"] if Path(im["file_name"]).name not in trained]
    kept = {im["id"] for im in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in kept]
    out = cache / "tinyimagenet-cifar8-dev-judge-held-out.json"
    out.write_text(json.dumps(data))
    return out


def section(title: str, note: str, results: dict, seconds: dict, n_images: int) -> str:
    cost = ", ".join(f"{k}: {1000 * v / n_images:.1f} ms/image" for k, v in seconds.items())
    return "\n".join([f"### {title}", "", note, "", results_table(results), "",
                      f"Wall time on this machine (2 CPU cores), end to end incl. decoding: {cost}.", "",
                      "By object size (small < 32², medium < 96² px): CorLoc@0.5 by the pair's largest box; COCO AR@100 and AP (pycocotools):", "",
                      size_table(results), "",
                      "GT-known CorLoc@0.5 per class:", "", per_class_table(results), ""])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "gradloc-bench")
    p.add_argument("--weights", default="default")
    p.add_argument("--dev-limit", type=int, default=None,
                   help="N random dev images (seed 0) instead of all: the file is sorted by class")
    p.add_argument("--synthetic-n", type=int, default=1000)
    p.add_argument("--large-n", type=int, default=200, help="large canvases for the multi-scale table (0: skip)")
    p.add_argument("--dev-multiscale-n", type=int, default=0,
                   help="random dev images scored with multi-scale forced on, beside one window (0: skip)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--write", type=Path, default=None, help="BENCHMARKS.md to update")
    p.add_argument("--method", default="gradient")
    p.add_argument("--only", default=",".join(SECTIONS), help="sections to run: dev,synthetic,large")
    args, extra = p.parse_known_args()
    options = {}
    for item in extra:  # --opt=value pairs go to the pipeline, e.g. --top_n=100
        k, _, v = item.lstrip("-").partition("=")
        options[k.replace("-", "_")] = type_guess(v)
    args.cache.mkdir(parents=True, exist_ok=True)
    if not args.shared.is_dir():
        print(f"{args.shared} not found: the benchmarks need ../shared/data", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    gen = ProposalGenerator.pretrained(weights=args.weights, device="cpu", batch_size=args.batch_size,
                                       method=args.method, **options)
    weights = default_weights_path() if args.weights == "default" else Path(args.weights)
    header = "\n".join([
        BEGIN, "",
        f"Weights: `{weights.name}` (sha256 `{sha256_of(weights)[:16]}...`). Settings: method "
        f"`{gen.options.method}`, σ={gen.options.smooth_sigma:g}, {describe_threshold(gen.options)}, "
        f"{gen.options.morph} {gen.options.kernel}x"
        f"{gen.options.kernel}{', +union box' if gen.options.union_box else ''}"
        f"{', class contrast (several classes per image: contrasted maps, no union box)' if gen.options.class_contrast else ''}"
        ", component score "
        f"{gen.options.component_score}, NMS "
        f"{gen.options.nms_iou}, output {gen.options.model_output}, "
        f"{'mirror-averaged maps, ' if gen.options.flip else ''}boxes judged by the {gen.judge}"
        f"{' judge (wrn16-4_extent_judge.pt)' if gen.judge == 'extent' else ''}, precision {gen.precision}. "
        f"Machine: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}. Regenerate: "
        f"`python scripts/run_benchmarks.py --write BENCHMARKS.md` (`--only large` for one section).", "", END])
    blocks = {}
    only = set(args.only.split(","))

    if "real" in only:
        real = extract(args.shared, args.cache, "coco-real-dev")
        t0 = time.time()
        res = run_evaluation(real / "annotations.json", args.cache / "report-real", images_dir=real / "images",
                             gen=gen, workers=args.workers, selective_search=True,
                             method_label="gradloc (defaults: input-size pyramid)")
        times = {"defaults + Grad-CAM + CAM + selective search + baselines": time.time() - t0}
        t0 = time.time()  # the defaults alone, for their cost per photograph
        run_evaluation(real / "annotations.json", args.cache / "report-real-alone", images_dir=real / "images",
                       gen=gen, workers=args.workers, gradcam=False, baselines=False)
        times["gradloc defaults alone"] = time.time() - t0
        for label, changes in (("gradloc pyramid without peak regions, sizes to 128 "
                                "(--peaks 0 --input-sizes 48,64,96,128)", {"peaks": 0, "input_sizes": "48,64,96,128"}),
                               ("gradloc one window (--scales off)", {"scales": "off"}),
                               ("gradloc multi-scale windows (--scales 1,2,3)", {"scales": "1,2,3"})):
            t0 = time.time()
            res.update(run_evaluation(real / "annotations.json", args.cache / f"report-real-{changes.get('scales', 'nopeaks')}",
                                      images_dir=real / "images", gen=gen.with_options(**changes),
                                      workers=args.workers, gradcam=False, baselines=False, method_label=label))
            times[label] = time.time() - t0
        blocks["real"] = section(
            "Real photographs: coco-real-dev (95 COCO photographs, ~640x480, 121 (image, class) pairs)",
            "Objects anywhere in the frame, often small (median box ~0.5% of the image), several per image, "
            "among people and clutter. One pair is 0.8 points. Selective search is class-agnostic: the same "
            "100 boxes for every class of an image, an anchor for recall. The other gradloc rows are the "
            "earlier plans for large images, kept as options.",
            res, times, 95)

    if "dev" in only:
        dev = extract_dev(args.shared, args.cache)
        # the extent judge was trained on half of these photographs: only the other half is scored
        held_out = gen.judge == "extent"
        ann = judge_held_out(dev, args.cache) if held_out else dev / "annotations.json"
        t0 = time.time()
        res = run_evaluation(ann, args.cache / "report-dev", images_dir=dev / "images",
                             gen=gen, workers=args.workers, limit=args.dev_limit,
                             sample_seed=0 if args.dev_limit else None)
        n_dev = args.dev_limit or len(json.loads(ann.read_text())["images"])
        blocks["dev"] = section(
            f"Real dev benchmark: Tiny ImageNet → CIFAR-10 ({n_dev}{' random' if args.dev_limit else ''} "
            f"photographs{', the half the extent judge was not trained on' if held_out else ''}, 64x64, human boxes)",
            "Boxes cover ~58% of the image on average, so centred and whole-image boxes are strong here.",
            res, {"method + Grad-CAM + CAM + baselines": time.time() - t0}, n_dev)

    if "synthetic" in only:
        synth = args.cache / f"synthetic-{args.synthetic_n}"
        if not (synth / "annotations.json").is_file():
            make_synthetic(args.shared / "cifar10-jpeg.tar.gz", synth, n=args.synthetic_n, seed=0)
        t0 = time.time()
        res = run_evaluation(synth / "annotations.json", args.cache / "report-synthetic",
                             images_dir=synth / "images", gen=gen, workers=args.workers)
        blocks["synthetic"] = section(
            f"Synthetic multi-object benchmark ({args.synthetic_n} canvases, 128x128, 1-3 CIFAR-10 test "
            "images of different classes, 32-80 px, seed 0)",
            "Each (image, class) pair asks for one object among up to three: what the class mask is for.",
            res, {"method + Grad-CAM + CAM + baselines": time.time() - t0}, args.synthetic_n)

    if "large" in only and args.large_n:
        large = args.cache / f"synthetic-large-{args.large_n}"
        if not (large / "annotations.json").is_file():
            make_synthetic(args.shared / "cifar10-jpeg.tar.gz", large, n=args.large_n, canvas=(384, 384),
                           scale=(24, 96), max_objects=3, distractors=3, seed=1)
        ann, imgs = large / "annotations.json", large / "images"
        single = gen.with_options(scales="off")
        t0 = time.time()
        res = run_evaluation(ann, args.cache / "report-large-single", images_dir=imgs, gen=single,
                             workers=args.workers, method_label="gradloc single window")
        t_single = time.time() - t0
        t0 = time.time()
        pyramid = run_evaluation(ann, args.cache / "report-large-pyramid", images_dir=imgs, gen=gen, gradcam=False,
                                 workers=args.workers, baselines=False, method_label="gradloc defaults (input-size pyramid)")
        t_pyramid = time.time() - t0
        t0 = time.time()
        windows = ",".join(map(str, resolve_scales("1,2,3,4", (384, 384))))
        multi = run_evaluation(ann, args.cache / "report-large-multi", images_dir=imgs,
                               gen=gen.with_options(scales=windows), gradcam=False, workers=args.workers,
                               baselines=False, method_label=f"gradloc multi-scale windows (--scales {windows})")
        t_multi = time.time() - t0
        dev_check = ""
        if args.dev_multiscale_n:
            # Dev images (64x64) stay single-window under "auto"; forcing windows on shows what they would do.
            dev = extract_dev(args.shared, args.cache)
            n = args.dev_multiscale_n
            forced = gen.with_options(scales="1,2")
            t0 = time.time()
            one = run_evaluation(dev / "annotations.json", args.cache / "report-dev-single", images_dir=dev / "images",
                                 gen=gen, workers=args.workers, limit=n, sample_seed=0, gradcam=False,
                                 baselines=False, method_label="gradloc single window (auto)")
            t_one = time.time() - t0
            t0 = time.time()
            two = run_evaluation(dev / "annotations.json", args.cache / "report-dev-forced", images_dir=dev / "images",
                                 gen=forced, workers=args.workers, limit=n, sample_seed=0, gradcam=False,
                                 baselines=False, method_label="gradloc multi-scale forced (scales 1,2)")
            t_two = time.time() - t0
            dev_check = "\n".join([
                "", f"Real dev benchmark, {n} random images (seed 0): `auto` keeps these 64x64 photographs in one "
                "window, so the default is unchanged there; forcing windows on (`--scales 1,2`) gives:", "",
                results_table({**one, **two}), "",
                f"Wall time: one window {1000 * t_one / n:.1f} ms/image, forced multi-scale "
                f"{1000 * t_two / n:.1f} ms/image.", ""])
        blocks["large"] = section(
            f"Large canvases, small objects ({args.large_n} canvases, 384x384, 1-3 CIFAR-10 test images "
            "of 24-96 px plus 3 block-shuffled distractor patches, seed 1)",
            f"Defaults: the input-size pyramid (32x32 view + longer sides {gen.options.input_sizes}). Multi-scale "
            f"windows: scales {windows} at half-window strides, every window scored by one forward pass, "
            f"gradients for the best {gen.options.windows} windows per (image, class). Grad-CAM and CAM are the "
            "published methods: one map of the whole image.",
            {**pyramid, **multi, **res}, {"single window (+ Grad-CAM, CAM and the baselines)": t_single,
                                          "pyramid": t_pyramid, "multi-scale windows": t_multi},
            args.large_n) + dev_check

    print(header)
    for name, text in blocks.items():
        print(text)
    if args.write:
        replace_marked_block(args.write, BEGIN, END, header, "## Localisation")
        for name, text in blocks.items():
            b, e = markers(name)
            replace_marked_block(args.write, b, e, f"{b}\n{text}\n{e}", "")
    return 0


def type_guess(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(v.lower(), v)


if __name__ == "__main__":
    sys.exit(main())
