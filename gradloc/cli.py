"""Command line: ``gradloc localize | evaluate | calibrate | export | export-coco | sensitivity | make-synthetic``. Argument parsing only."""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from . import __version__, commands
from .data.preprocess import ImageError
from .models.runtime import DEFAULT_MAX_PIXELS, DEVICES
from .models.wrn import CIFAR10_CLASSES, PRECISIONS, WeightsError


def rgb_triple(text: str) -> tuple[float, float, float]:
    """``0.485,0.456,0.406`` -> three floats (argparse type of --mean and --std)."""
    try:
        v = tuple(float(x) for x in text.split(","))
    except ValueError:
        v = ()
    if len(v) != 3:
        raise argparse.ArgumentTypeError(f"three comma-separated numbers, one per RGB channel; got {text!r}")
    return v


def add_pipeline_options(p: argparse.ArgumentParser) -> None:
    """Model, device and every :class:`gradloc.Options` field as a flag."""
    from .discovery.config import Options

    g = p.add_argument_group("pipeline")
    g.add_argument("--settings", default=None, metavar="FILE",
                   help="start from the options of a settings file (gradloc calibrate's, or the settings recorded in "
                        "a predictions.json or run.json); flags given here override it")
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
    m.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="the network's passes: auto (default: bf16 where the device has it natively - CUDA, "
                        "AVX-512-BF16/AMX CPUs - else, on the CPU, int8 for the shipped weights and fp32 for other "
                        "weights), fp32 (identical results on every machine), bf16, int8 (the shipped weights' "
                        "forward passes in int8 on the CPU; passes that need input gradients stay fp32)")
    m.add_argument("--amp", action="store_true", help="the same as --precision bf16")
    m.add_argument("--workers", type=int, default=None,
                   help="data-loader processes decoding images beside the compute (0: none; default: 1, "
                        "or 0 on machines of 2 cores or fewer, where one would take a core from the network)")
    m.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="refuse larger images (decompression-bomb guard)")


def add_model_options(m) -> None:
    """The classifier's flags: the shipped WRN (--weights, --depth, --width) or the user's --model
    with its description, and the device."""
    m.add_argument("--model", default=None, metavar="torchvision:NAME[:WEIGHTS]|timm:NAME|hf:DIR|MODULE:CALLABLE",
                   help="your own classifier instead of the shipped WRN: a torchvision.models or timm classifier by "
                        "name, a local transformers image-classifier folder, or CALLABLE(num_classes=...) from a "
                        "module or .py file; needs --weights, --class-names and --input-size, except what the source "
                        "knows (a torchvision weights enum such as resnet18:IMAGENET1K_V1: class names and input; "
                        "timm: input size, mean, std; hf:DIR: its weights, id2label and image processor config); "
                        "nothing is downloaded")
    m.add_argument("--class-names", default=None, help="with --model: a text file of the model's class names, one a line")
    m.add_argument("--input-size", type=int, default=None, help="with --model: the side (px) it was trained at")
    m.add_argument("--mean", type=rgb_triple, default=None,
                   help="with --model: input mean per RGB channel, e.g. 0.485,0.456,0.406 (default: the source's (timm, hf), else ImageNet's)")
    m.add_argument("--std", type=rgb_triple, default=None,
                   help="with --model: input std per RGB channel (default: as --mean)")
    m.add_argument("--feature-layer", default=None,
                   help="with --model: its last feature layer, for gradcam, cam and the pyramid (default: found for "
                        "common torchvision families)")
    m.add_argument("--activation", default=None, choices=("softmax", "sigmoid"),
                   help="with --model: how its logits become class probabilities, for the maps, rescoring and "
                        "presence: softmax (one class per image) or sigmoid (multi-label; a binary model with one "
                        "logit and one class name). Default: what the model is (a transformers folder's problem "
                        "type; one class name: sigmoid; else softmax)")
    m.add_argument("--weights", default="default",
                   help="state-dict file, .pt or .safetensors (default: the shipped WRN-16-4 weights)")
    m.add_argument("--depth", type=int, default=16)
    m.add_argument("--width", type=int, default=4)
    m.add_argument("--device", default="auto", choices=DEVICES)


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
    loc.set_defaults(func=commands.localize)

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
    ev.set_defaults(func=commands.evaluate)

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
    ex.set_defaults(func=commands.export_coco)

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
    xp.set_defaults(func=commands.export)

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
    se.set_defaults(func=commands.sensitivity)

    ca = sub.add_parser("calibrate", help="choose settings on a few boxed images of your own data",
                        description="Splits the annotated images in two (--share, --seed), chooses the settings "
                                    "that matter (threshold and ladder, consensus, the pyramid's sizes, rescoring; "
                                    "one at a time from the flags' values) on one part by CorLoc@0.5 and --min-score "
                                    "by the best F1 of top-3 claims, and reports CorLoc with a bootstrap 95% interval "
                                    "on the other part beside the given settings and the best centred box. Writes a "
                                    "settings file that localize and evaluate read with --settings.")
    ca.add_argument("annotations", help="COCO .json file, VOC folder, or one VOC .xml (10-50 images are typical)")
    ca.add_argument("--images", default=None, help="folder the annotations' file names are relative to")
    ca.add_argument("-o", "--output", required=True, help="settings file to write (JSON)")
    ca.add_argument("--aliases", default=None, help="alias table, as for evaluate")
    ca.add_argument("--share", type=float, default=0.5, help="share of the images the settings are chosen on (default 0.5)")
    ca.add_argument("--seed", type=int, default=0, help="the split's seed (default 0)")
    add_pipeline_options(ca)
    ca.set_defaults(func=commands.calibrate)

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
    sy.set_defaults(func=commands.make_synthetic)

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--settings", default=None)
    given = pre.parse_known_args(argv)[0].settings
    if given is not None:  # a settings file's options become the defaults the flags override
        from .evaluation.calibrate import read_settings
        try:
            options = read_settings(given)
        except (ValueError, OSError) as exc:
            print(f"gradloc: error: --settings: {error_text(exc)}", file=sys.stderr)
            return 2
        for p in (loc, ev, ca):
            p.set_defaults(**options)
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
    except Exception as exc:  # raised while running (a user's model on a later batch): one line, work kept
        kept = " finished results are kept (rerun with --resume)." if args.command == "localize" else ""
        print(f"gradloc: error: {type(exc).__name__} while running: {exc}.{kept}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
