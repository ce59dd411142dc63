"""The user's options, validated once, and the per-stage settings derived from them once.

:class:`Options` is every knob of the pipeline (the CLI exposes each as ``--name-with-dashes``);
it is frozen: a generator with other options is made by ``gen.with_options(...)``. The stages
read what is derived from it when the generator is built: the saliency method's arguments
(:meth:`Options.method_kwargs`) and the post-processing recipe (:class:`BoxRecipe`).
"""
from __future__ import annotations

from dataclasses import dataclass

from .rescoring import RESCORES

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


@dataclass(frozen=True)
class Options:
    """Every knob of the pipeline."""

    method: str = "gradient"
    model_output: str = "probs"    # what the class mask multiplies: probs, logits, log_probs
    reduce: str = "max"            # channel reduction of the gradient: max, l2, sum
    positive: bool | None = None   # positive evidence only (None: the method's default)
    layer: str | None = None       # intermediate block for layer / gradcam / cam
    samples: int = 16              # smoothgrad family
    noise: float = 0.15            # smoothgrad family, fraction of the input range
    steps: int = 16                # integrated gradients
    smooth_sigma: float = 1.0      # Gaussian smoothing of the map, in grid pixels
    threshold: str = "mass"        # mass, top-n, fraction, otsu, percentile
    top_n: int = 100               # pixels kept by top-n (of 32x32)
    threshold_value: float | None = None  # mass share (default 0.5) / fraction / percentile value
    morph: str = "close"
    kernel: int = 3
    component_score: str = "mass"  # mass, area, mean, contrast
    union_box: bool = True
    box_padding: float = 0.0
    nms_iou: float = 0.5
    top_k: int | None = 5          # proposals kept per class map (None: all)
    min_score: float | None = None  # proposals scoring under this are dropped: a class left without one is absent
    rescore: str = "crop-delete"   # crop-delete: crop probability minus that of the image without the box; crop; off
    ladder: str = "0.4,0.5,0.6,0.7"  # with rescoring and mass: mass shares tried, best box of each
    moment_box: float = 1.5        # with rescoring: also the box of the map's centroid +- this many std; 0: off
    frame_box: float = 0.9         # with rescoring, whole images: also the centred box of this share of each side; 0: off
    peaks: int = 3                 # with rescoring, pyramid: also the regions around the map's strongest local maxima; 0: off
    peak_fractions: str = "0.6,0.4,0.2"  # each peak's regions: shares of its value
    merge_iou: float = 0.85        # with rescoring: a candidate overlapping an earlier one this much shares its score; > 1: off
    fuse: float = 0.2              # with rescoring: temperature of the best box's fusion with its neighbours; 0: off
    consensus: float = 0.5         # with rescoring, pyramid: rows whose 32x32 view gives the class more than this pick by candidates' agreement; > 1: off
    class_contrast: bool = True    # several classes named for one image: contrasted maps, no union box
    flip: bool = True              # 32x32 views of the whole-image plan: map averaged with the mirrored view's
    scales: str = "auto"           # auto: large images get the input-size pyramid; off; or windows, e.g. "1,2,3"
    input_sizes: str = "48,64,96,128,192,256"  # the pyramid's inputs beside the 32x32 view: longer side, pixels
    max_windows: int = 128         # cap on windows scored per image (finest scales dropped first)
    windows: int = 8               # windows per (image, class) that get gradients, best-supported first

    def __post_init__(self) -> None:
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
        if self.rescore not in RESCORES:
            raise ValueError(f"unknown rescore {self.rescore!r}; choose from {', '.join(RESCORES)}")
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
