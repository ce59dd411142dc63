"""The commands behind ``gradloc localize | evaluate | export | export-coco | sensitivity |
make-synthetic``: each takes the parsed arguments (:mod:`gradloc.cli`), builds what it needs once
(the runtime, the generator) and calls the packages. Returns the exit status."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

MODEL_DESCRIPTION = ("class_names", "input_size", "mean", "std", "feature_layer", "activation")


def build_runtime(args: argparse.Namespace, precision: str | None = None):
    """The classifier the flags name (the shipped WRN, or ``--model`` and its description) in
    the :class:`~gradloc.models.runtime.Runtime` they ask for, built once."""
    from .models.classifier import CIFAR10, load_user_classifier
    from .models.runtime import ClassifierError, Runtime
    from .models.wrn import wide_resnet
    if args.model is None:
        given = [f for f in MODEL_DESCRIPTION if getattr(args, f) is not None]
        if given:
            raise ValueError(f"--{given[0].replace('_', '-')} describes your own --model; the shipped WRN needs none")
        model, spec = wide_resnet(args.depth, args.width, weights=args.weights), CIFAR10
    else:
        model, spec = load_user_classifier(args.model, args.weights, args.class_names, args.input_size,
                                           args.mean, args.std, args.feature_layer, args.activation)
    precision = precision or ("bf16" if getattr(args, "amp", False) else args.precision)
    try:
        return Runtime.build(model, spec, args.device, precision, args.batch_size, args.max_pixels)
    except ClassifierError as exc:  # the classifier's own failures name it
        raise ClassifierError(f"--model {args.model}: {exc}" if args.model else str(exc)) from None


def build_generator(args: argparse.Namespace):
    """The :class:`~gradloc.discovery.pipeline.ProposalGenerator` of the flags: their runtime and
    every option."""
    from .discovery.config import Options
    from .discovery.pipeline import ProposalGenerator
    return ProposalGenerator(build_runtime(args), **{f.name: getattr(args, f.name) for f in fields(Options)})


def model_settings(args: argparse.Namespace) -> dict:
    """What a run records of the classifier's flags."""
    return {"weights": str(args.weights), **({"model": args.model} if args.model else {})}


def localize(args: argparse.Namespace) -> int:
    from .data.annotations import load_aliases
    from .localize import localize as run
    from .models.classes import parse_class_spec
    classes = None
    if args.classes is not None:
        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
        if not classes:
            raise ValueError(f"--classes {args.classes!r} names no class")
        classes = classes[0] if len(classes) == 1 else classes
    if classes is not None and args.classes_from is not None:
        raise ValueError("give --classes (every image) or --classes-from (each image's own), not both")
    ray_options = None
    if args.engine == "ray":
        from .engines.ray_actors import RayOptions
        ray_options = RayOptions(address=args.ray_address, actors=args.actors, cpus=args.cpus_per_actor,
                                 gpus=args.gpus_per_actor, threads=args.threads)
    elif args.threads:
        import torch
        torch.set_num_threads(args.threads)
    aliases = load_aliases(args.aliases)
    gen = build_generator(args)
    if classes is not None:
        parse_class_spec(classes, gen.spec.classes)  # a bad request fails here, before any work
    summary = run(gen, args.paths, Path(args.output), classes=classes, resume=args.resume,
                  classes_from=args.classes_from, aliases=aliases, workers=args.workers, vis_limit=args.vis_limit,
                  verbose=args.verbose, engine=args.engine, ray_options=ray_options, settings=model_settings(args))
    return 0 if summary["images"] > 0 else 1


def evaluate(args: argparse.Namespace) -> int:
    from .data.io import OutputLock
    from .evaluation.evaluate import run_evaluation
    from .evaluation.report import results_table, write_report

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    images = args.images
    if images is None and Path(args.annotations, "JPEGImages").is_dir():
        images = str(Path(args.annotations, "JPEGImages"))  # the VOC layout
    gen = None
    if args.predictions is None:
        if images is None:
            raise ValueError("give --images DIR (run the pipeline) or --predictions FILE (score a run)")
        gen = build_generator(args)  # annotations are mapped onto its classes (--aliases: by a table of yours)
    with OutputLock(Path(args.output)):  # one writer per output folder
        evaluation = run_evaluation(args.annotations, Path(args.output), images_dir=images, gen=gen,
                                    predictions_json=args.predictions, aliases=args.aliases, workers=args.workers,
                                    baselines=not args.no_baselines, gradcam=not args.no_gradcam,
                                    selective_search=args.selective_search, limit=args.limit,
                                    sample_seed=args.sample_seed, exclude=read_exclude(args.exclude),
                                    request=args.request)
        write_report(Path(args.output), evaluation)
    print(results_table(evaluation.results))
    print(f"report: {Path(args.output) / 'report.md'}", file=sys.stderr)
    return 0


def calibrate(args: argparse.Namespace) -> int:
    from .data.annotations import load_aliases, load_annotations
    from .evaluation.calibrate import calibrate as choose, summary, write_settings

    if not 0 < args.share < 1:
        raise ValueError(f"--share is the share of the images chosen on, in (0, 1); got {args.share}")
    images = args.images
    if images is None and Path(args.annotations, "JPEGImages").is_dir():
        images = str(Path(args.annotations, "JPEGImages"))  # the VOC layout
    if images is None:
        raise ValueError("give --images DIR, the folder the annotations' file names are relative to")
    gen = build_generator(args)
    ds = load_annotations(args.annotations, load_aliases(args.aliases, gen.spec.classes), gen.spec.classes)
    ds.images = [im for im in ds.images if im.classes()]  # images with a pair to score
    result = choose(gen, ds, images, args.share, args.seed, args.workers)
    write_settings(result, args.output)
    print(summary(result))
    print(f"settings: {args.output} (gradloc localize --settings {args.output})", file=sys.stderr)
    return 0


def read_exclude(path: str | None) -> set[str] | None:
    """File names to leave out, one per line (blank lines and # comments ignored)."""
    if path is None:
        return None
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return {ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")}


def export_coco(args: argparse.Namespace) -> int:
    from .data.io import atomic_write_text
    from .discovery.results import read_predictions
    from .export import coco_results_or_dataset

    records, _, classes = read_predictions(args.predictions, with_classes=True)
    document, what = coco_results_or_dataset(records, classes, args.annotations, args.aliases, args.relative_to)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.output), json.dumps(document))
    print(f"wrote {what} to {args.output}", file=sys.stderr)
    return 0


def export(args: argparse.Namespace) -> int:
    from .discovery.results import read_predictions
    from .export import export as write, select

    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    records, _, classes = read_predictions(args.predictions, with_classes=True)
    kept = select(records, args.min_score, args.top_k, classes)
    images, boxes = write(kept, args.format, Path(args.output), args.relative_to, classes)
    print(f"wrote {boxes} boxes on {images} images as {args.format} to {args.output}"
          + (f" ({len(records) - images} skipped images left out)" if len(records) > images else ""), file=sys.stderr)
    return 0


def make_synthetic(args: argparse.Namespace) -> int:
    from .data.synthetic import make_synthetic as make
    path = make(args.cifar, args.output, n=args.n, canvas=(args.size, args.size), max_objects=args.max_objects,
                scale=(args.min_scale, args.max_scale), seed=args.seed, distractors=args.distractors)
    print(f"wrote {args.n} images and {path}", file=sys.stderr)
    return 0


def sensitivity(args: argparse.Namespace) -> int:
    from .sensitivity import class_sensitivity, save

    runtime = build_runtime(args, precision="fp32")  # gradients of the class output, measured in fp32
    result = class_sensitivity(runtime.model, args.paths, cls=args.cls, output=args.model_output,
                               batch_size=runtime.batch_size, workers=args.workers, device=str(runtime.device),
                               max_pixels=runtime.max_pixels, spec=runtime.spec)
    for s in result.skipped:
        print(f"skipped {s['file']}: {s['reason']}", file=sys.stderr)
    save(result, Path(args.output), {**model_settings(args), "class": args.cls, "output": args.model_output})
    counts = ", ".join(f"{c} {int(n)}" for c, n in zip(result.names, result.counts) if n)
    print(f"gradloc: {int(result.counts.sum())} images ({counts or 'none'}), {len(result.skipped)} skipped; "
          f"maps in {args.output}/", file=sys.stderr)
    return 0 if result.counts.sum() else 1
