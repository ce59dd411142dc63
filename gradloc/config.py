"""The user's options, validated once, and the per-stage settings derived from them once.

:class:`Options` is every knob of the pipeline (the CLI exposes each as ``--name-with-dashes``);
it is frozen: a generator with other options is made by ``gen.with_options(...)``. The stages
read what is derived from it when the generator is built: the saliency method's arguments
(:meth:`Options.method_kwargs`) and the post-processing recipe (:class:`BoxRecipe`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from .proposals import COMPONENT_SCORES
from .rescoring import RESCORES
from .saliency import METHODS
from .threshold import THRESHOLDS

CAM_METHODS = ("gradcam", "cam")  # boxed by the CAM paper's recipe


@dataclass(frozen=True)
class BoxRecipe:
    """The post-processing applied to every map: smoothing, threshold(s), morphology,
    components, candidates, rescoring, ranking. ``values``: the threshold values boxes are made
    at (a ladder gives several; the best box of each)."""

    smooth_sigma: float
    threshold: str
    values: tuple
    morph: str
    kernel: int
    component_score: str
    union_box: bool
    box_padding: float
    nms_iou: float
    top_k: int
    rescore: str
    moment_box: float
    frame_box: float
    peaks: int
    peak_fractions: tuple
    fuse: float
    consensus: float
    class_contrast: bool
    min_score: float | None


def option(default, help: str, choices: tuple | None = None):
    """One declaration per option: its default, the help the CLI shows (``%(default)s`` is
    filled in) and its allowed values, which validation, the CLI flags and the API share."""
    return field(default=default, metadata={"help": help, "choices": tuple(choices) if choices else None})


@dataclass(frozen=True)
class Options:
    """Every knob of the pipeline, each declared once by :func:`option`."""

    method: str = option("gradient", "saliency method (default: gradient)", choices=METHODS)
    model_output: str = option("probs", "model output the class mask multiplies (default: probs)",
                               choices=('probs', 'logits', 'log_probs'))
    reduce: str = option("max", "channel reduction of the gradient (default: max of |g|)",
                         choices=('max', 'l2', 'sum'))
    positive: bool | None = option(None, "positive evidence only: keep the positive part of the gradient")
    layer: str | None = option(None, "intermediate block for --method layer (default block2) or gradcam (block3)")
    samples: int = option(16, "noisy samples for smoothgrad / smoothgrad-sq / vargrad")
    noise: float = option(0.15, "noise level for the smoothgrad family, fraction of the input range")
    steps: int = option(16, "integration steps for integrated-gradients")
    smooth_sigma: float = option(1.0, "Gaussian smoothing of the saliency map, in 32x32-grid pixels (default 1; 0: "
                                 "off)")
    threshold: str = option("mass", "how pixels are kept (default: mass, 0.5 of the total saliency)",
                            choices=THRESHOLDS)
    top_n: int = option(100, "pixels kept by the top-n threshold, of 32x32 (default: 100)")
    threshold_value: float | None = option(None, "value for --threshold mass (share of total saliency), fraction "
                                           "(of max) or percentile")
    morph: str = option("close", "morphological operation on the mask (default: close)",
                        choices=('close', 'open', 'dilate', 'erode', 'none'))
    kernel: int = option(3, "morphology kernel size in grid pixels (default: 3)")
    component_score: str = option("mass", "component score: mass, area, mean, or contrast (box saliency share minus "
                                  "box area share)", choices=COMPONENT_SCORES)
    union_box: bool = option(True, "also propose the box around all kept pixels (default on; --no-union-box)")
    box_padding: float = option(0.0, "grow each box by this fraction of its size per side")
    nms_iou: float = option(0.5, "IoU of torchvision NMS between proposals of one class map")
    top_k: int | None = option(5, "proposals kept per class map (default: 5)")
    min_score: float | None = option(None, "drop proposals scoring under this, so that a class can be answered "
                                     "absent (default: keep all)")
    rescore: str = option("crop-delete", "crop: rank boxes by the class probability of their own crop (one extra "
                          "forward pass); crop-delete: that minus the class probability of the image with the box "
                          "blanked (two passes); with --threshold mass, one box per --ladder rung; off: by "
                          "component score (default: %(default)s)", choices=RESCORES)
    ladder: str = option("0.4,0.5,0.6,0.7", "mass shares tried when rescoring, comma-separated (default: "
                         "%(default)s)")
    moment_box: float = option(1.5, "with rescoring: also propose the box of the saliency map's centroid +- this "
                               "many standard deviations per axis (default: %(default)s; 0: off)")
    frame_box: float = option(0.9, "with rescoring, on whole small images: also propose the centred box of this "
                              "share of each side, the hypothesis that the object fills the picture, scored by the "
                              "whole image's probability minus a blank image's (default: %(default)s; 0: off)")
    peaks: int = option(3, "with rescoring, on the input-size pyramid: also propose the regions around each map's N "
                        "strongest local maxima (default: %(default)s; 0: off)")
    peak_fractions: str = option("0.6,0.4,0.2", "the regions of a peak: where the map is at least each of these "
                                 "shares of the peak's value (default: %(default)s)")
    merge_iou: float = option(0.85, "with rescoring: a candidate box overlapping an earlier candidate of the same "
                              "(image, class) with at least this IoU takes that one's score instead of being scored "
                              "(default: %(default)s; above 1: every candidate scored)")
    fuse: float = option(0.2, "with rescoring: the best box becomes the score-weighted mean of the boxes "
                         "overlapping it (IoU >= 0.3), weights softmax(score / T); this sets T (default: "
                         "%(default)s; 0: off)")
    consensus: float = option(0.5, "with rescoring, on the input-size pyramid: a row whose 32x32 view gives its "
                              "class more than this probability (the object is large) picks the box its candidates "
                              "agree on most (IoU with the score-weighted candidates), fused at temperature 0.5 "
                              "(default: %(default)s; above 1: off)")
    class_contrast: bool = option(True, "with several classes named for one image (not top-k): each class's map "
                                  "minus the strongest other map of that image (shares of each map's total), and no "
                                  "union box (default on; --no-class-contrast)")
    flip: bool = option(True, "average each whole image's 32x32 map with its mirror image's (test-time "
                        "augmentation; default on; --no-flip)")
    scales: str = option("auto", "large images: auto (shorter side >= 160 px: the input-size pyramid), off (the "
                         "32x32 view only), or multi-scale windows, e.g. 1,2,3")
    input_sizes: str = option("48,64,96,128,192,256", "the pyramid's inputs beside the 32x32 view: the whole image "
                              "with its longer side at each size (px), aspect kept")
    max_windows: int = option(128, "multi-scale: at most this many windows scored per image (finest scales dropped "
                              "first)")
    windows: int = option(8, "multi-scale: windows per (image, class) that get gradients, best-supported first "
                          "(default: 8)")

    def __post_init__(self) -> None:
        for f in fields(self):
            allowed = f.metadata["choices"]
            if allowed and getattr(self, f.name) not in allowed:
                raise ValueError(f"unknown {f.name} {getattr(self, f.name)!r}; choose from {', '.join(allowed)}")
        for name, low in (("top_k", 1), ("top_n", 1), ("kernel", 1), ("samples", 1), ("steps", 1),
                          ("max_windows", 1), ("windows", 1), ("peaks", 0)):
            v = getattr(self, name)
            if v is None and name == "top_k":  # keep every proposal
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        for name in ("box_padding", "smooth_sigma", "noise"):
            if not getattr(self, name) >= 0:  # also refuses NaN
                raise ValueError(f"{name} must be a number >= 0, got {getattr(self, name)!r}")
        if not 0 < self.nms_iou <= 1:
            raise ValueError(f"nms_iou must be in (0, 1], got {self.nms_iou!r}")
        if not self.moment_box >= 0:
            raise ValueError(f"moment_box must be a number of standard deviations >= 0 (0: off), got {self.moment_box!r}")
        if not self.merge_iou > 0:
            raise ValueError(f"merge_iou must be an IoU > 0 (above 1: every candidate scored), got {self.merge_iou!r}")
        if not 0 <= self.frame_box <= 1:
            raise ValueError(f"frame_box must be a share of the image's side in [0, 1] (0: off), got {self.frame_box!r}")
        if not self.consensus >= 0:
            raise ValueError(f"consensus must be a probability >= 0 (above 1: off), got {self.consensus!r}")
        if self.min_score is not None and not (isinstance(self.min_score, (int, float)) and self.min_score == self.min_score):
            raise ValueError(f"min_score must be a number (None: keep every proposal), got {self.min_score!r}")
        if not self.fuse >= 0:
            raise ValueError(f"fuse must be a temperature >= 0 (0: off), got {self.fuse!r}")
        for name in ("ladder", "peak_fractions"):  # number lists normalised once, so settings compare as text
            if isinstance(getattr(self, name), (list, tuple)):
                object.__setattr__(self, name, ",".join(f"{float(v):g}" for v in getattr(self, name)))
        try:
            rungs = self.ladder_shares()
        except ValueError:
            raise ValueError(f"ladder must be numbers like 0.4,0.5,0.6; got {self.ladder!r}") from None
        if not all(0 < v <= 1 for v in rungs):
            raise ValueError(f"ladder values are shares of the map's mass in (0, 1]; got {self.ladder!r}")
        try:
            fracs = self.peak_shares()
        except ValueError:
            raise ValueError(f"peak_fractions must be numbers like 0.6,0.4,0.2; got {self.peak_fractions!r}") from None
        if not fracs or not all(0 < v < 1 for v in fracs):
            raise ValueError(f"peak_fractions are shares of a peak's value in (0, 1); got {self.peak_fractions!r}")
        if isinstance(self.scales, (list, tuple)):
            object.__setattr__(self, "scales", ",".join(str(int(v)) for v in self.scales))
        if self.scales not in ("auto", "off"):
            try:
                vals = [int(v) for v in str(self.scales).split(",") if v.strip()]
            except ValueError:
                raise ValueError(f"scales must be auto, off or integers like 1,2,3; got {self.scales!r}") from None
            if not vals or min(vals) < 1:
                raise ValueError(f"scales must be integers >= 1, got {self.scales!r}")
        if isinstance(self.input_sizes, (list, tuple)):
            object.__setattr__(self, "input_sizes", ",".join(str(int(v)) for v in self.input_sizes))
        try:
            sizes = self.pyramid_sizes()
        except ValueError:
            raise ValueError(f"input_sizes must be integers like 48,64,96,128; got {self.input_sizes!r}") from None
        if not all(33 <= v <= 1024 for v in sizes):
            raise ValueError(f"input_sizes are longer sides in pixels from 33 to 1024 (the 32x32 view is "
                             f"always used); got {self.input_sizes!r}")

    def pyramid_sizes(self) -> tuple[int, ...]:
        """The pyramid's input sizes beyond the 32x32 view, sorted, each once."""
        return tuple(sorted({int(v) for v in str(self.input_sizes).split(",") if v.strip()}))

    def method_kwargs(self) -> dict:
        """The saliency method's constructor arguments."""
        kw: dict = {"output": self.model_output}
        if self.method not in CAM_METHODS:
            kw["reduce"] = self.reduce
        if self.positive is not None:
            kw["positive"] = self.positive
        if self.method in ("smoothgrad", "smoothgrad-sq", "vargrad"):
            kw.update(samples=self.samples, noise=self.noise)
        if self.method == "integrated-gradients":
            kw["steps"] = self.steps
        if self.method in ("layer", "grad-x-activation", *CAM_METHODS) and self.layer:
            kw["layer"] = self.layer
        if self.method in CAM_METHODS and self.model_output == "probs":
            kw["output"] = "logits"  # Grad-CAM is defined on the class score
        return kw

    def box_recipe(self) -> BoxRecipe:
        """The post-processing actually applied. Grad-CAM and CAM are boxed by the CAM paper's
        recipe (raw map, 20% of the maximum unless a threshold is given, 3x3, largest component);
        without rescoring there is no moment box, frame box, peak region or fusion (all need rescored
        boxes)."""
        d = {k: getattr(self, k) for k in ("smooth_sigma", "threshold", "morph", "kernel", "component_score",
                                           "union_box", "box_padding", "nms_iou", "top_k", "rescore",
                                           "moment_box", "frame_box", "peaks", "fuse", "consensus",
                                           "class_contrast", "min_score")}
        d["peak_fractions"] = tuple(self.peak_shares())
        value = self.top_n if self.threshold == "top-n" else self.threshold_value
        if self.method in CAM_METHODS:
            d.update(smooth_sigma=0.0, kernel=3, component_score="area", union_box=False, top_k=1,
                     rescore="off", fuse=0.0, moment_box=0.0, frame_box=0.0, peaks=0,
                     consensus=2.0, class_contrast=False)
            if self.threshold in ("top-n", "mass") and self.threshold_value is None:
                d["threshold"], value = "fraction", 0.2
        elif self.rescore == "off":
            d.update(fuse=0.0, moment_box=0.0, frame_box=0.0, peaks=0, consensus=2.0)
        ladder = d["rescore"] != "off" and d["threshold"] == "mass" and self.ladder_shares()
        return BoxRecipe(values=tuple(self.ladder_shares()) if ladder else (value,), **d)

    def inert(self) -> list[str]:
        """The options given another value than their default that this combination does not
        use, each as a sentence saying why (the generator warns with them: never silently)."""
        default, recipe, used = Options(), self.box_recipe(), self.method_kwargs()
        why = (f"--method {self.method} is boxed by the CAM paper's recipe" if self.method in CAM_METHODS
               else "--rescore off ranks by the map alone")
        notes = [f"--{n.replace('_', '-')} {getattr(self, n)!r} does nothing: {why}"
                 for n in ("smooth_sigma", "kernel", "component_score", "union_box", "top_k", "rescore", "moment_box",
                           "frame_box", "peaks", "fuse", "consensus", "class_contrast")
                 if getattr(self, n) != getattr(default, n) and getattr(recipe, n) != getattr(self, n)]
        if self.rescore == "off" or self.method in CAM_METHODS:
            notes += [f"--{n.replace('_', '-')} {getattr(self, n)!r} does nothing: {why}" for n in ("ladder", "merge_iou")
                      if getattr(self, n) != getattr(default, n)]
        notes += [f"--{n} {getattr(self, n)!r} does nothing with --method {self.method}"
                  for n in ("samples", "noise", "steps", "layer") if getattr(self, n) != getattr(default, n) and n not in used]
        return notes

    def threshold_values(self) -> list[float | None]:
        """The threshold values boxes are made at (see :class:`BoxRecipe`)."""
        return list(self.box_recipe().values)

    def peak_shares(self) -> list[float]:
        """The peak regions' shares of their peak's value, parsed from ``"0.6,0.4,..."``."""
        return _numbers(self.peak_fractions)

    def ladder_shares(self) -> list[float]:
        """The ladder's mass shares, parsed from ``"0.4,0.5,..."``."""
        return _numbers(self.ladder)


def _numbers(text) -> list[float]:
    """``"0.4,0.5,..."`` -> ``[0.4, 0.5, ...]`` (ValueError on anything else)."""
    return [float(v) for v in str(text).split(",") if v.strip()]
