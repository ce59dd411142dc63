"""Command line: ``gradloc localize | evaluate | export | export-coco | sensitivity | make-synthetic``. Argument parsing only."""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from . import __version__
from .models.wrn import CIFAR10_CLASSES, WeightsError
from .data.preprocess import DEFAULT_MAX_PIXELS, ImageError

def add_pipeline_options(p: argparse.ArgumentParser) -> None:
    """Model, device and every :class:`gradloc.Options` field as a flag."""
    from .discovery.config import Options

    g = p.add_argument_group("pipeline")
    for f in fields(Options):
        flag = "--" + f.name.replace("_", "-")
        choices, help = f.metadata["choices"], f.metadata["help"]
        if f.type in ("bool | None", "bool"):
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help)
        else:
            kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
            g.add_argument(flag, type=kind, default=f.default, choices=choices, help=help)
    m = p.add_argument_group("model")
    add_model_options(m)
    m.add_argument("--batch-size", type=int, default=64)
    m.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="the network's passes: auto (default: bf16 where the device has it natively - CUDA, "
                        "AVX-512-BF16/AMX CPUs - else fp32), fp32 (identical results on every machine), bf16")
    m.add_argument("--amp", action="store_true", help="the same as --precision bf16")
    m.add_argument("--workers", type=int, default=None,
                   help="data-loader processes decoding images beside the compute (0: none; default: 1, "
                        "or 0 on machines of 2 cores or fewer, where one would take a core from the network)")
    m.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="refuse larger images (decompression-bomb guard)")


def add_model_options(m) -> None:
    """The classifier's flags: the shipped WRN (--weights, --depth, --width) or the user's --model
    with its description, and the device."""
    m.add_argument("--model", default=None, metavar="torchvision:NAME|MODULE:CALLABLE",
                   help="your own classifier instead of the shipped WRN: a torchvision.models classifier by name, or "
                        "CALLABLE(num_classes=...) from a module or .py file; needs --weights, --class-names, "
                        "--input-size (nothing is downloaded)")
    m.add_argument("--class-names", default=None, help="with --model: a text file of the model's class names, one a line")
    m.add_argument("--input-size", type=int, default=None, help="with --model: the side (px) it was trained at")
    m.add_argument("--mean", default=None, help="with --model: input mean per RGB channel, e.g. 0.485,0.456,0.406 "
                                                "(default: ImageNet's)")
    m.add_argument("--std", default=None, help="with --model: input std per RGB channel (default: ImageNet's)")
    m.add_argument("--feature-layer", default=None,
                   help="with --model: its last feature layer, for gradcam, cam and the pyramid (default: found for "
                        "common torchvision families)")
    m.add_argument("--weights", default="default",
                   help="state-dict file (default: the shipped WRN-16-4 weights)")
    m.add_argument("--depth", type=int, default=16)
    m.add_argument("--width", type=int, default=4)
    m.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def options_from_args(args: argparse.Namespace) -> dict:
    from .discovery.config import Options
    return {f.name: getattr(args, f.name) for f in fields(Options)}


def build_generator(args: argparse.Namespace):
    from .discovery.pipeline import ProposalGenerator
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise SystemExit("gradloc: error: --device cuda but no CUDA device is available")
    common = dict(device=args.device, batch_size=args.batch_size, max_pixels=args.max_pixels,
                  precision="bf16" if args.amp else args.precision, **options_from_args(args))
    if args.model is None:
        given = [f for f in ("class_names", "input_size", "mean", "std", "feature_layer") if getattr(args, f) is not None]
        if given:
            raise ValueError(f"--{given[0].replace('_', '-')} describes your own --model; the shipped WRN needs none")
        return ProposalGenerator.pretrained(weights=args.weights, depth=args.depth, width=args.width, **common)
    model, spec = user_classifier(args)
    return ProposalGenerator(model, spec=spec, **common)


def user_classifier(args: argparse.Namespace):
    """``--model`` and its description -> the model (weights loaded) and its
    :class:`~gradloc.models.classifier.ClassifierSpec`."""
    from .models.classifier import (IMAGENET_MEAN, IMAGENET_STD, ClassifierSpec, load_callable, read_class_names,
                             torchvision_classifier)
    from .models.wrn import load_weights
    if args.class_names is None or args.input_size is None or args.weights == "default":
        raise ValueError("--model needs --weights FILE (its state dict), --class-names FILE and --input-size N")
    names = read_class_names(args.class_names)
    kind, _, name = args.model.partition(":")
    model = torchvision_classifier(name, len(names)) if kind == "torchvision" else load_callable(args.model, len(names))
    load_weights(model, args.weights)

    def triple(text, default, flag):
        if text is None:
            return default
        try:
            v = tuple(float(x) for x in text.split(","))
        except ValueError:
            v = ()
        if len(v) != 3:
            raise ValueError(f"{flag} must be three comma-separated numbers, got {text!r}")
        return v
    return model, ClassifierSpec(tuple(names), args.input_size, triple(args.mean, IMAGENET_MEAN, "--mean"),
                                 triple(args.std, IMAGENET_STD, "--std"), args.feature_layer)


def cmd_localize(args: argparse.Namespace) -> int:
    from .localize import localize
    from .models.classes import parse_class_spec
    classes = None
    if args.classes is not None:
        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
        if not classes:
            raise ValueError(f"--classes {args.classes!r} names no class")
        classes = classes[0] if len(classes) == 1 else classes
    ray_options = None
    if args.engine == "ray":
        from .engines.ray_actors import RayOptions
        ray_options = RayOptions(address=args.ray_address, actors=args.actors, cpus=args.cpus_per_actor,
                                 gpus=args.gpus_per_actor, threads=args.threads)
    elif args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if classes is not None and args.classes_from is not None:
        raise ValueError("give --classes (every image) or --classes-from (each image's own), not both")
    from .data.annotations import load_aliases
    aliases = load_aliases(args.aliases)
    gen = build_generator(args)
    if classes is not None:
        parse_class_spec(classes, gen.spec.classes)  # a bad request fails here, before any work
    summary = localize(gen, args.paths, Path(args.output), classes=classes, resume=args.resume,
                       classes_from=args.classes_from, aliases=aliases,
                       workers=args.workers, vis_limit=args.vis_limit, verbose=args.verbose,
                       engine=args.engine, ray_options=ray_options,
                       settings={"weights": str(args.weights), **({"model": args.model} if args.model else {})})
    return 0 if summary["images"] > 0 else 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation.evaluate import run_evaluation
    from .evaluation.report import results_table, write_report

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.images is None and Path(args.annotations, "JPEGImages").is_dir():
        args.images = str(Path(args.annotations, "JPEGImages"))  # the VOC layout
    gen = None
    if args.predictions is None:
        if args.images is None:
            raise ValueError("give --images DIR (run the pipeline) or --predictions FILE (score a run)")
        gen = build_generator(args)  # annotations are mapped onto its classes (--aliases: by a table of yours)
    evaluation = run_evaluation(args.annotations, Path(args.output), images_dir=args.images, gen=gen,
                                predictions_json=args.predictions, aliases=args.aliases, workers=args.workers,
                                baselines=not args.no_baselines, gradcam=not args.no_gradcam,
                                selective_search=args.selective_search, limit=args.limit,
                                sample_seed=args.sample_seed, exclude=read_exclude(args.exclude),
                                request=args.request)
    write_report(Path(args.output), evaluation)
    print(results_table(evaluation.results))
    print(f"report: {Path(args.output) / 'report.md'}", file=sys.stderr)
    return 0


def read_exclude(path: str | None) -> set[str] | None:
    """File names to leave out, one per line (blank lines and # comments ignored)."""
    if path is None:
        return None
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return {ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")}


def cmd_export_coco(args: argparse.Namespace) -> int:
    import json

    from .evaluation import coco
    from .data.io import atomic_write_text

    from .discovery.results import read_predictions

    records, _, classes = read_predictions(args.predictions, with_classes=True)
    if args.annotations:
        from .data.annotations import load_aliases, load_annotations
        # the annotations map onto the run's own classes (its classifier's names)
        ds = load_annotations(args.annotations, load_aliases(args.aliases, classes), classes)
        dets, unmatched, missing = coco.results_from_predictions(records, ds)
        text = json.dumps(dets)
        for f in unmatched:
            print(f"gradloc: {f}: no annotated image of this name; its proposals are not in the results",
                  file=sys.stderr)
        for f in missing:
            print(f"gradloc: {f}: annotated, but no prediction for it", file=sys.stderr)
        what = f"{len(dets)} results for {len(ds.images) - len(missing)} annotated images"
    else:
        from .export import coco_dataset, relative_names, select
        kept = select(records, classes=classes)
        names = [r["file"] for r in kept] if args.relative_to is None else \
            relative_names([r["file"] for r in kept], args.relative_to)
        dataset = coco_dataset(kept, names, classes)
        text = json.dumps(dataset)
        what = f"a COCO dataset of {len(dataset['images'])} images and {len(dataset['annotations'])} scored boxes"
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.output), text)
    print(f"wrote {what} to {args.output}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export, select
    from .discovery.results import read_predictions

    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    records, _, classes = read_predictions(args.predictions, with_classes=True)
    kept = select(records, args.min_score, args.top_k, classes)
    images, boxes = export(kept, args.format, Path(args.output), args.relative_to, classes)
    print(f"wrote {boxes} boxes on {images} images as {args.format} to {args.output}"
          + (f" ({len(records) - images} skipped images left out)" if len(records) > images else ""), file=sys.stderr)
    return 0


def cmd_make_synthetic(args: argparse.Namespace) -> int:
    from .data.synthetic import make_synthetic
    path = make_synthetic(args.cifar, args.output, n=args.n, canvas=(args.size, args.size),
                          max_objects=args.max_objects, scale=(args.min_scale, args.max_scale),
                          seed=args.seed, distractors=args.distractors)
    print(f"wrote {args.n} images and {path}", file=sys.stderr)
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from .models.classifier import CIFAR10
    from .models.wrn import wide_resnet
    from .sensitivity import class_sensitivity, save

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = ("cuda" if __import__("torch").cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.model is None:
        model, spec = wide_resnet(args.depth, args.width, weights=args.weights), CIFAR10
    else:
        model, spec = user_classifier(args)
    result = class_sensitivity(model, args.paths, cls=args.cls, output=args.model_output, batch_size=args.batch_size,
                               workers=args.workers, device=device, max_pixels=args.max_pixels, spec=spec)
    for s in result.skipped:
        print(f"skipped {s['file']}: {s['reason']}", file=sys.stderr)
    save(result, Path(args.output), {"weights": str(args.weights), "class": args.cls, "output": args.model_output,
                                     **({"model": args.model} if args.model else {})})
    counts = ", ".join(f"{c} {int(n)}" for c, n in zip(result.names, result.counts) if n)
    print(f"gradloc: {int(result.counts.sum())} images ({counts or 'none'}), {len(result.skipped)} skipped; "
          f"maps in {args.output}/", file=sys.stderr)
    return 0 if result.counts.sum() else 1


def error_text(exc: Exception) -> str:
    """The one line said for an error: an operating-system error as its reason and path (not
    Python's ``[Errno 17] File exists: '...'``), saying so where a file stands where a folder
    is needed; any other error as its message."""
    if not isinstance(exc, OSError) or not exc.strerror or exc.filename is None:
        return str(exc)
    text = f"{exc.strerror}: {exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        text += " (a file stands where a folder is needed)"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gradloc", description="Object discovery from classifier gradients.")
    parser.add_argument("--version", action="version", version=f"gradloc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    loc = sub.add_parser("localize", help="proposals for images and folders (recursive)",
                         description="Write OUT/predictions.json, OUT/predictions.jsonl and OUT/vis/ panels.")
    loc.add_argument("paths", nargs="+", help="image files and folders")
    loc.add_argument("-o", "--output", required=True, help="output folder")
    loc.add_argument("--classes", default=None,
                     help="classes to localise in every image: names or indices, comma-separated, "
                          "or 'all' or 'top3' (default: each image's predicted class). "
                          f"Classes: {', '.join(CIFAR10_CLASSES)}")
    loc.add_argument("--classes-from", default=None, metavar="folders|FILE.csv|FILE.json",
                     help="each image's own classes: its parent folder's name (folders), the rows of a CSV with the "
                          "header file,class, or a COCO file's image-level classes; names go through the alias "
                          "table (boat: ship, car: automobile); images without a label are skipped, saying why")
    loc.add_argument("--aliases", default=None,
                     help='with --classes-from: JSON file {"name": "cifar class" or null} extending the alias table')
    loc.add_argument("--resume", action="store_true",
                     help="continue a killed run in OUT, skipping images already finished")
    loc.add_argument("--vis-limit", type=int, default=200,
                     help="write panels for at most this many images (0: none)")
    loc.add_argument("-v", "--verbose", action="store_true",
                     help="print each image's class-probability distribution")
    eng = loc.add_argument_group("engine")
    eng.add_argument("--engine", default="local", choices=("local", "ray"),
                     help="local (default): this process; ray: a pool of Ray Data actors (pip install \"gradloc[ray]\"), "
                          "the same output bytes")
    eng.add_argument("--ray-address", default="local",
                     help="with --engine ray: local (start a one-machine cluster), auto (the running one), or "
                          "HOST:PORT; RAY_ADDRESS is honoured")
    eng.add_argument("--actors", type=int, default=2, help="with --engine ray: actors in the pool")
    eng.add_argument("--cpus-per-actor", type=float, default=1.0)
    eng.add_argument("--gpus-per-actor", type=float, default=0.0)
    eng.add_argument("--threads", type=int, default=None,
                     help="torch threads (per actor with --engine ray; default: torch's, or --cpus-per-actor)")
    add_pipeline_options(loc)
    loc.set_defaults(func=cmd_localize)

    ev = sub.add_parser("evaluate", help="score proposals and baselines on annotated images",
                        description="Annotations: COCO JSON, or a Pascal VOC folder (Annotations/*.xml). "
                                    "Writes OUT/metrics.json, OUT/report.md and plots.")
    ev.add_argument("annotations", help="COCO .json file, VOC folder, or one VOC .xml")
    ev.add_argument("--images", default=None, help="folder the annotations' file names are relative to")
    ev.add_argument("--predictions", default=None,
                    help="score this predictions.json from `gradloc localize` instead of running the model")
    ev.add_argument("-o", "--output", default="gradloc-eval", help="report folder")
    ev.add_argument("--aliases", default=None,
                    help='JSON file {"category name": "cifar class" or null} extending the default alias table')
    ev.add_argument("--limit", type=int, default=None, help="score only the first N annotated images")
    ev.add_argument("--sample-seed", type=int, default=None,
                    help="with --limit: score N images drawn at random with this seed instead of the first N")
    ev.add_argument("--exclude", default=None,
                    help="text file of image file names to leave out, one per line (e.g. the photographs "
                         "a model was trained on: photos_trained.txt beside its checkpoints)")
    ev.add_argument("--request", default="gt", choices=("gt", "predicted", "top3", "all"),
                    help="classes asked of each image: its ground-truth classes (gt, default: CorLoc's setting), "
                         "or as without labels its predicted class, top 3 or all ten, where AP and the "
                         "precision-recall curve say whether the scores tell present from absent (the box "
                         "baselines, which name no class, are then left out)")
    ev.add_argument("--no-baselines", action="store_true", help="skip the box baselines")
    ev.add_argument("--no-gradcam", action="store_true",
                    help="skip the same-network Grad-CAM and CAM baselines")
    ev.add_argument("--selective-search", action="store_true",
                    help="also score OpenCV's selective search (fast mode, 100 boxes): class-agnostic proposals, "
                         "an anchor for recall that needs no classifier (about 0.1-0.5 s per image)")
    add_pipeline_options(ev)
    ev.set_defaults(func=cmd_evaluate)

    ex = sub.add_parser("export-coco", help="a predictions.json as a COCO results file or a COCO dataset",
                        description="With --annotations: a COCO results file ([{image_id, category_id, bbox, "
                                    "score}]) with the annotations' image and category ids, for pycocotools or "
                                    "faster-coco-eval. Without: a COCO dataset whose annotations are the scored "
                                    "proposals, which FiftyOne imports as COCODetectionDataset.")
    ex.add_argument("predictions", help="predictions.json written by gradloc localize")
    ex.add_argument("-o", "--output", required=True, help="JSON file to write")
    ex.add_argument("--annotations", default=None, help="COCO .json, VOC folder or .xml the images belong to")
    ex.add_argument("--aliases", default=None, help="alias table, as for evaluate")
    ex.add_argument("--relative-to", default=None,
                    help="without --annotations: write file names relative to this folder (FiftyOne's data_path)")
    ex.set_defaults(func=cmd_export_coco)

    xp = sub.add_parser("export", help="a predictions.json as COCO, Pascal VOC or YOLO labels (pseudo-labels)",
                        description="Writes OUT/annotations.json (coco), OUT/<image path>.xml (voc: 1-based inclusive "
                                    "corners) or OUT/<image path>.txt and OUT/classes.txt (yolo: class cx cy w h, "
                                    "normalised), each image at its path relative to --relative-to.")
    xp.add_argument("predictions", help="predictions.json written by gradloc localize")
    xp.add_argument("--format", required=True, choices=("coco", "voc", "yolo"))
    xp.add_argument("-o", "--output", required=True, help="output folder")
    xp.add_argument("--min-score", type=float, default=None, help="leave out boxes scoring under this")
    xp.add_argument("--top-k", type=int, default=None, help="at most this many boxes per class and image, best first")
    xp.add_argument("--relative-to", default=None,
                    help="the folder image paths are made relative to (default: the images' common folder)")
    xp.set_defaults(func=cmd_export)

    se = sub.add_parser("sensitivity", help="mean |d f_c / d x| per class over a folder (describes the model)",
                        description="For each image's predicted class (or --class for all), the mean over the "
                                    "folder of |d f_c / d x| on the model's input grid (32x32 for the shipped WRN; "
                                    "--model for yours). Writes OUT/sensitivity.npy [C, S, S], "
                                    "OUT/<class>.npy and .png, OUT/sensitivity.png and "
                                    "OUT/sensitivity.json (counts).")
    se.add_argument("paths", nargs="+", help="image files and folders")
    se.add_argument("-o", "--output", required=True, help="output folder")
    se.add_argument("--class", dest="cls", default=None, help="one class for every image (default: each one's predicted class)")
    se.add_argument("--model-output", default="probs", choices=("probs", "logits", "log_probs"),
                    help="output the class mask multiplies (default: probs)")
    add_model_options(se)
    se.add_argument("--batch-size", type=int, default=64)
    se.add_argument("--workers", type=int, default=None,
                    help="data-loader processes decoding images (0: none; default: 1, or 0 on 2 cores or fewer)")
    se.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images")
    se.set_defaults(func=cmd_sensitivity)

    sy = sub.add_parser("make-synthetic", help="paste CIFAR-10 test images onto textured canvases (COCO JSON)")
    sy.add_argument("--cifar", required=True, help="CIFAR-10 JPEG folder or its .tar.gz (test split is used)")
    sy.add_argument("-o", "--output", required=True)
    sy.add_argument("-n", type=int, default=1000, help="number of canvases")
    sy.add_argument("--size", type=int, default=128, help="canvas side in pixels")
    sy.add_argument("--max-objects", type=int, default=3)
    sy.add_argument("--min-scale", type=int, default=32, help="smallest pasted object side")
    sy.add_argument("--max-scale", type=int, default=80, help="largest pasted object side")
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--distractors", type=int, default=0,
                    help="block-shuffled CIFAR patches per canvas (clutter without an object, not annotated)")
    sy.set_defaults(func=cmd_make_synthetic)

    args = parser.parse_args(argv)
    import warnings
    try:
        with warnings.catch_warnings():  # options that do nothing are said so, in one line each
            warnings.showwarning = lambda message, *_: print(f"gradloc: note: {message}", file=sys.stderr)
            return args.func(args)
    except (WeightsError, ImageError, ValueError, FileNotFoundError, OSError) as exc:
        print(f"gradloc: error: {error_text(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gradloc: interrupted; finished results are kept (rerun with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
