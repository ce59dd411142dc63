"""The user's options: one declaration each, in four immutable per-stage configs.

Each option is declared once, by :func:`option` in the config of the stage that reads it:

- :class:`SaliencyConfig`: the class-masked gradient (:mod:`~gradloc.attribution.saliency`, :mod:`~gradloc.models.network`);
- :class:`ProposalConfig`: maps to candidate boxes (:mod:`~gradloc.discovery.proposals`, :mod:`~gradloc.discovery.candidates`);
- :class:`RankingConfig`: rescoring, ranking, fusion and the minimum score (:mod:`~gradloc.discovery.rescoring`);
- :class:`PlanConfig`: which views of a large image get maps (:mod:`~gradloc.discovery.windows`).

Each config validates its own fields. :class:`Options` is their fields side by side, flat, as the
API keywords (``ProposalGenerator(top_n=50)``) and the CLI flags (``--top-n 50``) name them; the
flags, their help and choices, validation and the recorded settings all read these declarations.
:meth:`Options.effective` gives what runs (:class:`PipelineConfig`): the four configs with the
settings a combination does not use switched off (Grad-CAM and CAM keep the CAM paper's recipe;
without rescoring nothing ranks moment, frame or peak boxes), and :meth:`Options.inert` says which
of the user's values that turned off.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from .proposals import COMPONENT_SCORES
from .rescoring import RESCORES
from ..attribution.saliency import METHODS
from .threshold import THRESHOLDS

CAM_METHODS = ("gradcam", "cam")  # boxed by the CAM paper's recipe


def option(default, help: str, choices: tuple | None = None):
    """One declaration per option: its default, the help the CLI shows (``%(default)s`` is
    filled in) and its allowed values, which validation, the CLI flags and the API share."""
    return field(default=default, metadata={"help": help, "choices": tuple(choices) if choices else None})


def _check_choices(config) -> None:
    for f in fields(config):
        allowed = f.metadata["choices"]
        if allowed and getattr(config, f.name) not in allowed:
            raise ValueError(f"unknown {f.name} {getattr(config, f.name)!r}; choose from {', '.join(allowed)}")


def _check_ints(config, lows: dict, optional: tuple = ()) -> None:
    for name, low in lows.items():
        v = getattr(config, name)
        if v is None and name in optional:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")


def _number_list(config, name: str, example: str, cast=float) -> list:
    """A list option normalised to text once (so settings compare as text) and parsed."""
    value = getattr(config, name)
    if isinstance(value, (list, tuple)):
        value = ",".join(f"{cast(v):g}" if cast is float else str(cast(v)) for v in value)
        object.__setattr__(config, name, value)
    try:
        return [cast(v) for v in str(value).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name} must be numbers like {example}; got {value!r}") from None


@dataclass(frozen=True)
class SaliencyConfig:
    """The saliency method and its arguments."""

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
    flip: bool = option(True, "average each whole image's 32x32 map with its mirror image's (test-time "
                        "augmentation; default on; --no-flip)")

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_ints(self, {"samples": 1, "steps": 1})
        if not self.noise >= 0:  # also refuses NaN
            raise ValueError(f"noise must be a number >= 0, got {self.noise!r}")

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


@dataclass(frozen=True)
class ProposalConfig:
    """Smoothing, threshold(s), morphology, components and the extra candidate boxes."""

    smooth_sigma: float = option(1.0, "Gaussian smoothing of the saliency map, in 32x32-grid pixels (default 1; 0: "
                                 "off)")
    threshold: str = option("mass", "how pixels are kept (default: mass, 0.5 of the total saliency)",
                            choices=THRESHOLDS)
    top_n: int = option(100, "pixels kept by the top-n threshold, of 32x32 (default: 100)")
    threshold_value: float | None = option(None, "value for --threshold mass (share of total saliency), fraction "
                                           "(of max) or percentile")
    ladder: str = option("0.4,0.5,0.6,0.7", "mass shares tried when rescoring, comma-separated, one box per rung (default: "
                         "%(default)s; empty: one threshold)")
    morph: str = option("close", "morphological operation on the mask (default: close)",
                        choices=('close', 'open', 'dilate', 'erode', 'none'))
    kernel: int = option(3, "morphology kernel size in grid pixels (default: 3)")
    component_score: str = option("mass", "component score: mass, area, mean, or contrast (box saliency share minus "
                                  "box area share)", choices=COMPONENT_SCORES)
    union_box: bool = option(True, "also propose the box around all kept pixels (default on; --no-union-box)")
    box_padding: float = option(0.0, "grow each box by this fraction of its size per side")
    moment_box: float = option(1.5, "with rescoring: also propose the box of the saliency map's centroid +- this "
                               "many standard deviations per axis (default: %(default)s; 0: off)")
    frame_box: float = option(0.9, "with rescoring, on whole small images: also propose the centred box of this "
                              "share of each side, the hypothesis that the object fills the picture, scored by the "
                              "whole image's probability minus a blank image's (default: %(default)s; 0: off)")
    peaks: int = option(3, "with rescoring, on the input-size pyramid: also propose the regions around each map's N "
                        "strongest local maxima (default: %(default)s; 0: off)")
    peak_fractions: str = option("0.6,0.4,0.2", "the regions of a peak: where the map is at least each of these "
                                 "shares of the peak's value (default: %(default)s)")
    class_contrast: bool = option(True, "with several classes named for one image (not top-k): each class's map "
                                  "minus the strongest other map of that image (shares of each map's total), and no "
                                  "union box (default on; --no-class-contrast)")

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_ints(self, {"top_n": 1, "kernel": 1, "peaks": 0})
        for name in ("box_padding", "smooth_sigma"):
            if not getattr(self, name) >= 0:  # also refuses NaN
                raise ValueError(f"{name} must be a number >= 0, got {getattr(self, name)!r}")
        if not self.moment_box >= 0:
            raise ValueError(f"moment_box must be a number of standard deviations >= 0 (0: off), got {self.moment_box!r}")
        if not 0 <= self.frame_box <= 1:
            raise ValueError(f"frame_box must be a share of the image's side in [0, 1] (0: off), got {self.frame_box!r}")
        if not all(0 < v <= 1 for v in _number_list(self, "ladder", "0.4,0.5,0.6")):
            raise ValueError(f"ladder values are shares of the map's mass in (0, 1]; got {self.ladder!r}")
        fracs = _number_list(self, "peak_fractions", "0.6,0.4,0.2")
        if not fracs or not all(0 < v < 1 for v in fracs):
            raise ValueError(f"peak_fractions are shares of a peak's value in (0, 1); got {self.peak_fractions!r}")

    def ladder_shares(self) -> list[float]:
        """The ladder's mass shares (empty: one threshold)."""
        return _number_list(self, "ladder", "0.4,0.5,0.6")

    def peak_shares(self) -> list[float]:
        """The peak regions' shares of their peak's value."""
        return _number_list(self, "peak_fractions", "0.6,0.4,0.2")

    def values(self) -> tuple:
        """The threshold values boxes are made at: the ladder's rungs (the best box of each), or
        the one value of the threshold (None: the method's default)."""
        return tuple(self.ladder_shares()) or ((self.top_n if self.threshold == "top-n" else self.threshold_value),)


@dataclass(frozen=True)
class RankingConfig:
    """Rescoring by the classifier, ranking, fusion and the minimum score."""

    rescore: str = option("crop-delete", "crop: rank boxes by the class probability of their own crop (one extra "
                          "forward pass); crop-delete: that minus the class probability of the image with the box "
                          "blanked (two passes); with --threshold mass, one box per --ladder rung; off: by "
                          "component score (default: %(default)s)", choices=RESCORES)
    judge: str = option("auto", "with rescoring: the network whose class probabilities score the candidate boxes. "
                        "extent: the shipped extent judge, a WRN-16-4 trained to rank a photograph's whole object "
                        "above the object with its surroundings and above a part (weights/MODEL_CARD.md); "
                        "classifier: the classifier itself; or a WRN-16-4 weights file; auto: extent for gradloc's "
                        "CIFAR-10 WRN, the classifier for any other model (default: %(default)s)")
    blanked_views: str = option("bounded", "with --rescore crop-delete: which boxes get their blanked view. bounded: in "
                                "rows ranked by their best score (not by --consensus), only the boxes that can still "
                                "be best (a box scores at most its crop's probability), the others taken to blank "
                                "nothing; all: every scored box (default: %(default)s)", choices=("bounded", "all"))
    merge_iou: float = option(0.85, "with rescoring: a candidate box overlapping an earlier candidate of the same "
                              "(image, class) with at least this IoU takes that one's score instead of being scored "
                              "(default: %(default)s; above 1: every candidate scored)")
    nms_iou: float = option(0.5, "IoU of torchvision NMS between proposals of one class map")
    top_k: int | None = option(5, "proposals kept per class map (default: 5)")
    fuse: float = option(0.2, "with rescoring: the best box becomes the score-weighted mean of the boxes "
                         "overlapping it (IoU >= 0.3), weights softmax(score / T); this sets T (default: "
                         "%(default)s; 0: off)")
    consensus: str = option("view", "with rescoring, on the input-size pyramid: rows whose object is large pick the "
                            "box their candidates agree on most (IoU with the score-weighted candidates), fused at "
                            "temperature 0.5. view: the object is large where the photograph's 32x32 view gives its "
                            "class more than 0.5; scale: where the classifier recognises the class better in the "
                            "coarse inputs (32-64 px) than the fine ones (128-256 px), which suits photographs of one "
                            "large object and loses on small objects in clutter (BENCHMARKS.md); off (default: "
                            "%(default)s)", choices=("view", "scale", "off"))
    min_score: float | None = option(None, "drop proposals scoring under this, so that a class can be answered "
                                     "absent (default: keep all)")

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_ints(self, {"top_k": 1}, optional=("top_k",))  # None: keep every proposal
        if not 0 < self.nms_iou <= 1:
            raise ValueError(f"nms_iou must be in (0, 1], got {self.nms_iou!r}")
        if not self.merge_iou > 0:
            raise ValueError(f"merge_iou must be an IoU > 0 (above 1: every candidate scored), got {self.merge_iou!r}")
        if self.min_score is not None and not (isinstance(self.min_score, (int, float)) and self.min_score == self.min_score):
            raise ValueError(f"min_score must be a number (None: keep every proposal), got {self.min_score!r}")
        if not self.fuse >= 0:
            raise ValueError(f"fuse must be a temperature >= 0 (0: off), got {self.fuse!r}")


@dataclass(frozen=True)
class PlanConfig:
    """The views of a large image that get saliency maps."""

    scales: str = option("auto", "large images: auto (shorter side >= 160 px: the input-size pyramid), off (the "
                         "32x32 view only), or multi-scale windows, e.g. 1,2,3")
    input_sizes: str = option("48,64,96,128,192,256", "the pyramid's inputs beside the 32x32 view: the whole image "
                              "with its longer side at each size (px), aspect kept")
    fine_inputs: str = option("unrecognised", "the pyramid's inputs over 4x the model's side (192 and 256 px for a "
                              "32 px model): for every row (all), or only for rows whose 32x32 view gives the class at "
                              "most 0.5 (unrecognised: an object the 32x32 view recognises is over four times the "
                              "network's scale there, and its candidates are parts) (default: %(default)s)",
                              choices=("unrecognised", "all"))
    max_windows: int = option(128, "multi-scale: at most this many windows scored per image (finest scales dropped "
                              "first)")
    windows: int = option(8, "multi-scale: windows per (image, class) that get gradients, best-supported first "
                          "(default: 8)")

    def __post_init__(self) -> None:
        _check_ints(self, {"max_windows": 1, "windows": 1})
        if isinstance(self.scales, (list, tuple)):
            object.__setattr__(self, "scales", ",".join(str(int(v)) for v in self.scales))
        if self.scales not in ("auto", "off"):
            try:
                vals = [int(v) for v in str(self.scales).split(",") if v.strip()]
            except ValueError:
                raise ValueError(f"scales must be auto, off or integers like 1,2,3; got {self.scales!r}") from None
            if not vals or min(vals) < 1:
                raise ValueError(f"scales must be integers >= 1, got {self.scales!r}")
        if not all(33 <= v <= 1024 for v in _number_list(self, "input_sizes", "48,64,96,128", int)):
            raise ValueError(f"input_sizes are longer sides in pixels from 33 to 1024 (the 32x32 view is "
                             f"always used); got {self.input_sizes!r}")

    def pyramid_sizes(self) -> tuple[int, ...]:
        """The pyramid's input sizes beyond the 32x32 view, sorted, each once."""
        return tuple(sorted(set(_number_list(self, "input_sizes", "48,64,96,128", int))))


STAGES = (SaliencyConfig, ProposalConfig, RankingConfig, PlanConfig)


@dataclass(frozen=True)
class PipelineConfig:
    """What runs: one config per stage (:meth:`Options.effective`)."""

    saliency: SaliencyConfig
    proposals: ProposalConfig
    ranking: RankingConfig
    plan: PlanConfig

    def flat(self) -> dict:
        """Every setting by its option's name: what run.json, predictions.json and evaluation
        info record, and what ``--resume`` compares."""
        return {k: v for stage in (self.saliency, self.proposals, self.ranking, self.plan)
                for k, v in asdict(stage).items()}


def _flat_options(cls):
    """Make ``cls`` the frozen dataclass of every stage's fields, in stage order, each field
    taken from its one declaration."""
    cls.__annotations__ = {f.name: f.type for stage in STAGES for f in fields(stage)}
    for stage in STAGES:
        for f in fields(stage):
            setattr(cls, f.name, field(default=f.default, metadata=f.metadata))
    return dataclass(frozen=True)(cls)


@_flat_options
class Options:
    """Every option of the pipeline, flat (the API keywords and CLI flags), each declared once in
    its stage's config. Frozen: a generator with other options is ``gen.with_options(...)``."""

    def __post_init__(self) -> None:
        for stage in STAGES:  # each stage validates its fields; normalised values (lists as text) come back
            made = self.stage(stage)
            for f in fields(stage):
                object.__setattr__(self, f.name, getattr(made, f.name))

    def stage(self, config: type):
        """This stage's config (one of :data:`STAGES`) as given."""
        return config(**{f.name: getattr(self, f.name) for f in fields(config)})

    def effective(self) -> PipelineConfig:
        """The configs that run. Grad-CAM and CAM are boxed by the CAM paper's recipe (raw map,
        20% of the maximum unless a threshold is given, 3x3, the largest component); without
        rescoring there is no moment box, frame box, peak region, fusion, consensus, ladder or
        judge (each needs rescored boxes); the ladder is of mass shares, so other thresholds make one
        box set; a method's own arguments (samples, noise, steps, layer) are kept only for it."""
        s, p, r = self.stage(SaliencyConfig), self.stage(ProposalConfig), self.stage(RankingConfig)
        defaults = SaliencyConfig()
        used = s.method_kwargs()
        s = replace(s, **{n: getattr(defaults, n) for n in ("samples", "noise", "steps", "layer") if n not in used})
        if self.method in CAM_METHODS:
            cam = dict(smooth_sigma=0.0, kernel=3, component_score="area", union_box=False, moment_box=0.0,
                       frame_box=0.0, peaks=0, class_contrast=False, ladder="")
            if self.threshold in ("top-n", "mass") and self.threshold_value is None:
                cam.update(threshold="fraction", threshold_value=0.2)
            p = replace(p, **cam)
            r = replace(r, top_k=1, rescore="off", fuse=0.0, consensus="off", merge_iou=RankingConfig.merge_iou,
                        judge="classifier")
        elif self.rescore == "off":
            p = replace(p, moment_box=0.0, frame_box=0.0, peaks=0, ladder="")
            r = replace(r, fuse=0.0, consensus="off", merge_iou=RankingConfig.merge_iou, judge="classifier")
        if p.threshold != "mass":
            p = replace(p, ladder="")
        if r.rescore != "crop-delete":
            r = replace(r, blanked_views=RankingConfig.blanked_views)
        return PipelineConfig(s, p, r, self.stage(PlanConfig))

    def inert(self) -> list[str]:
        """The options given another value than their default that :meth:`effective` does not
        use, each as a sentence saying why (the generator warns with them: never silently)."""
        ran, default = self.effective().flat(), Options()
        if self.method in CAM_METHODS:
            why = f"--method {self.method} is boxed by the CAM paper's recipe"
        elif self.rescore == "off":
            why = "--rescore off ranks by the map alone"
        else:
            why = f"--threshold {self.threshold} makes one box set (the ladder is of mass shares)"
        notes = []
        for f in fields(self):
            given = getattr(self, f.name)
            if given == getattr(default, f.name) or ran[f.name] == given:
                continue
            if f.name in ("samples", "noise", "steps", "layer"):
                tail = f" with --method {self.method}"
            elif f.name == "blanked_views" and ran["rescore"] == "crop":
                tail = ": --rescore crop blanks no box"
            else:
                tail = f": {why}"
            notes.append(f"--{f.name.replace('_', '-')} {given!r} does nothing{tail}")
        return notes

    def threshold_values(self) -> list[float | None]:
        """The threshold values boxes are made at (:meth:`ProposalConfig.values` of what runs)."""
        return list(self.effective().proposals.values())
