"""ProposalGenerator: image -> tensor -> saliency map -> mask -> components -> boxes.

    >>> gen = gradloc.ProposalGenerator.pretrained()  # or threshold="top-n", top_n=100
    >>> out = gen(["cat.jpg", "two_objects.png"], classes=[None, ["cat", "dog"]])
    >>> out[0]["boxes"], out[0]["scores"], out[0]["labels"], out[0]["probs"]
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Iterable, Sequence, Union

import torch
from torch import Tensor, nn
from torchvision.transforms.v2.functional import gaussian_blur

from . import multiscale as M
from . import proposals as P
from .model import CIFAR10_CLASSES, CIFAR10_MEAN, wide_resnet
from .preprocess import DEFAULT_MAX_PIXELS, INPUT_SIZE, ImageInput, normalize, prepare
from .saliency import contrast_maps, make_method
from .threshold import DEFAULT_MASS_SHARE, threshold

ClassSpec = Union[None, int, str, Sequence[Union[int, str]]]
RESCORES = ("off", "crop", "crop-delete")
CAM_METHODS = ("gradcam", "cam")  # boxed by the CAM paper's recipe
MEAN_COLOUR = tuple(255 * m for m in CIFAR10_MEAN)  # what normalises to zero: no evidence


@dataclass
class Options:
    """Every knob of the pipeline; the CLI exposes each as ``--name-with-dashes``."""

    method: str = "gradient"
    model_output: str = "probs"    # what the class mask multiplies: probs, logits, log_probs
    reduce: str = "max"            # channel reduction of the gradient: max, l2, sum
    positive: bool | None = None   # positive evidence only (None: the method's default)
    layer: str | None = None       # intermediate block for layer / gradcam
    samples: int = 16              # smoothgrad family
    noise: float = 0.15            # smoothgrad family, fraction of the input range
    steps: int = 16                # integrated gradients
    # Post-processing defaults chosen by scripts/sweep.py (BENCHMARKS.md, "sweep").
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
    top_k: int = 5                 # proposals kept per class map
    rescore: str = "crop-delete"   # crop-delete: crop probability minus that of the image without the box; crop; off
    ladder: str = "0.4,0.5,0.6,0.7"  # with rescore crop and mass: mass shares tried, best box of each
    moment_box: float = 1.5        # with rescoring: also the box of the map's centroid +- this many std; 0: off
    fuse: float = 0.2              # with rescoring: temperature of the best box's fusion with its neighbours; 0: off
    class_contrast: bool = True    # several classes named for one image: contrasted maps, no union box
    scales: str = "auto"           # multi-scale windows: auto (large images), off, or e.g. "1,2,3"
    max_windows: int = 128         # cap on windows scored per image (finest scales dropped first)
    windows: int = 8               # windows per (image, class) that get gradients, best-supported first

    def __post_init__(self) -> None:
        if not self.moment_box >= 0:
            raise ValueError(f"moment_box must be a number of standard deviations >= 0 (0: off), got {self.moment_box!r}")
        if not self.fuse >= 0:
            raise ValueError(f"fuse must be a temperature >= 0 (0: off), got {self.fuse!r}")
        if self.rescore not in RESCORES:
            raise ValueError(f"unknown rescore {self.rescore!r}; choose from {', '.join(RESCORES)}")
        if isinstance(self.ladder, (list, tuple)):
            self.ladder = ",".join(f"{float(v):g}" for v in self.ladder)
        try:
            rungs = self.ladder_shares()
        except ValueError:
            raise ValueError(f"ladder must be numbers like 0.4,0.5,0.6; got {self.ladder!r}") from None
        if not all(0 < v <= 1 for v in rungs):
            raise ValueError(f"ladder values are shares of the map's mass in (0, 1]; got {self.ladder!r}")
        if isinstance(self.scales, (list, tuple)):
            self.scales = ",".join(str(int(v)) for v in self.scales)
        if self.scales not in ("auto", "off"):
            try:
                vals = [int(v) for v in str(self.scales).split(",") if v.strip()]
            except ValueError:
                raise ValueError(f"scales must be auto, off or integers like 1,2,3; got {self.scales!r}") from None
            if not vals or min(vals) < 1:
                raise ValueError(f"scales must be integers >= 1, got {self.scales!r}")

    def method_kwargs(self) -> dict:
        kw: dict = {"output": self.model_output}
        if self.method not in CAM_METHODS:
            kw["reduce"] = self.reduce
        if self.positive is not None:
            kw["positive"] = self.positive
        if self.method in ("smoothgrad", "smoothgrad-sq", "vargrad"):
            kw.update(samples=self.samples, noise=self.noise)
        if self.method == "integrated-gradients":
            kw["steps"] = self.steps
        if self.method in ("layer", *CAM_METHODS) and self.layer:
            kw["layer"] = self.layer
        if self.method in CAM_METHODS and self.model_output == "probs":
            kw["output"] = "logits"  # Grad-CAM is defined on the class score
        return kw

    def box_recipe(self) -> "Options":
        """The post-processing actually applied: Grad-CAM is boxed by the CAM paper's recipe
        (raw map, 20% of the maximum unless a threshold is given, 3x3, largest component);
        without rescoring there is no moment box and no fusion (both need rescored boxes)."""
        if self.method not in CAM_METHODS:
            return self if self.rescore != "off" else replace(self, fuse=0.0, moment_box=0.0)
        recipe = {"smooth_sigma": 0.0, "kernel": 3, "component_score": "area", "union_box": False, "top_k": 1,
                  "rescore": "off", "fuse": 0.0, "moment_box": 0.0, "class_contrast": False}
        if self.threshold in ("top-n", "mass") and self.threshold_value is None:
            recipe.update(threshold="fraction", threshold_value=0.2)
        return replace(self, **recipe)

    def threshold_setting(self) -> tuple[str, float | None]:
        return self.threshold, (self.top_n if self.threshold == "top-n" else self.threshold_value)

    def threshold_values(self) -> list[float | None]:
        """The threshold values boxes are made at: with crop rescoring and the mass threshold,
        the ladder of mass shares (one best box per rung); otherwise the one setting, whose
        ``top_k`` boxes crop rescoring re-ranks."""
        name, value = self.threshold_setting()
        if self.rescore == "off" or name != "mass":
            return [value]
        return self.ladder_shares() or [value]

    def describe_threshold(self) -> str:
        """The threshold stage in words, as the tables of BENCHMARKS.md print it."""
        name, value = self.threshold_setting()
        how = {"crop": "crop rescoring", "crop-delete": "crop-minus-deletion rescoring"}.get(self.rescore)
        if how and self.moment_box > 0:
            how += f", +moment box ({self.moment_box:g} std)"
        if how and self.fuse > 0:
            how += f", best box fused with its neighbours (T={self.fuse:g})"
        if how and name == "mass":
            return f"mass ladder {self.ladder} (best box of each rung), {how}"
        if name == "mass" and value is None:
            value = DEFAULT_MASS_SHARE
        text = f"top-{value}" if name == "top-n" else (f"{name} {value:g}" if value is not None else name)
        return text + (f", {how}" if how else "")

    def ladder_shares(self) -> list[float]:
        """The ladder's mass shares, parsed from ``"0.4,0.5,..."``."""
        return [float(v) for v in str(self.ladder).split(",") if v.strip()]


def class_index(c: int | str) -> int:
    """A CIFAR-10 class name or index -> index, with a clear error."""
    if isinstance(c, str) and not c.strip().lstrip("-").isdigit():
        name = c.strip().lower()
        if name not in CIFAR10_CLASSES:
            raise ValueError(f"unknown class {c!r}; classes are {', '.join(CIFAR10_CLASSES)}")
        return CIFAR10_CLASSES.index(name)
    i = int(c)
    if not 0 <= i < len(CIFAR10_CLASSES):
        raise ValueError(f"class index {i} out of range 0..{len(CIFAR10_CLASSES) - 1}")
    return i


def parse_class_spec(spec: ClassSpec) -> tuple[str, list[int] | int | None]:
    """One image's class request -> ("predicted", None) | ("top", k) | ("list", [idx...]).

    Accepts None (the predicted class), "all" (the ten classes, most probable first: top-10),
    "top3"/"top-3", a name, an index, or a list. A list names classes the picture is said to
    hold; top-k are competing guesses (the class contrast applies to lists only).
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "predicted", "pred")):
        return "predicted", None
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s == "all":
            return "top", len(CIFAR10_CLASSES)
        if s.startswith("top"):
            k = int(s[3:].lstrip("-:") or 1)
            return "top", max(1, min(k, len(CIFAR10_CLASSES)))
        if "," in s:
            return "list", [class_index(p) for p in s.split(",") if p.strip()]
        return "list", [class_index(s)]
    if isinstance(spec, int):
        return "list", [class_index(spec)]
    return "list", [class_index(c) for c in spec]


def empty_result() -> dict:
    """Per-image lists that :func:`assemble` turns into one result."""
    return {"boxes": [], "scores": [], "labels": [], "maps": [], "masks": [], "map_classes": []}


def add_class(res: dict, c: int, boxes: Tensor, scores: Tensor, m: Tensor, mask: Tensor) -> None:
    """Add one class's proposals ``[K, 4]`` / ``[K]`` (original pixels), map and mask to ``res``."""
    res["boxes"].append(boxes)
    res["scores"].append(scores)
    res["labels"].append(torch.full((len(boxes),), c, dtype=torch.int64))
    res["maps"].append(m)
    res["masks"].append(mask)
    res["map_classes"].append(c)


def assemble(res: dict, probs: Tensor, size: tuple[int, int]) -> dict:
    """One image's per-class pieces -> its result: proposals of all classes best first, and
    one map, mask and peak per class."""
    boxes, scores, labels = (torch.cat(res[k]) for k in ("boxes", "scores", "labels"))
    order = torch.argsort(scores, descending=True, stable=True)
    maps = torch.stack(res["maps"])
    return {"boxes": boxes[order], "scores": scores[order], "labels": labels[order], "probs": probs,
            "maps": maps, "masks": torch.stack(res["masks"]),
            "map_classes": torch.tensor(res["map_classes"], dtype=torch.int64), "peaks": map_peaks(maps, size)}


def map_peaks(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Location of each map's maximum ``[R, 2]`` as (x, y) in original pixels (cell centre)."""
    r, h, w = maps.shape
    flat = maps.reshape(r, -1).argmax(1)
    gy, gx = flat // w, flat % w
    return torch.stack([(gx + 0.5) * size[1] / w, (gy + 0.5) * size[0] / h], 1)


class ProposalGenerator:
    """Bounding-box proposals from class-masked gradients of a CIFAR-10 classifier.

    Parameters
    ----------
    model : nn.Module
        Classifier on normalised 32x32 input; put in eval mode with frozen parameters.
    device : str
        "auto" (CUDA when available), "cpu" or "cuda".
    batch_size : int
        Images per forward/backward pass.
    max_pixels : int
        Larger images are refused (decompression-bomb guard).
    amp : bool
        Run the network under bf16 autocast. Pays on GPUs and CPUs with native bf16;
        on AVX2-only CPUs it is many times slower than fp32 (see BENCHMARKS.md).
    **options
        Fields of :class:`Options` (``method``, ``top_n``, ``threshold``, ...).
    """

    def __init__(self, model: nn.Module, device: str = "auto", batch_size: int = 64,
                 max_pixels: int = DEFAULT_MAX_PIXELS, amp: bool = False, **options) -> None:
        unknown = set(options) - {f.name for f in fields(Options)}
        if unknown:
            raise TypeError(f"unknown options: {', '.join(sorted(unknown))}")
        self.options = Options(**options)
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        model.eval().requires_grad_(False)
        self.model = model.to(self.device).to(memory_format=torch.channels_last)
        self.batch_size, self.max_pixels, self.amp = batch_size, max_pixels, amp
        self.method = make_method(self.options.method, self.model, **self.options.method_kwargs())

    @classmethod
    def pretrained(cls, weights: str | Path = "default", depth: int = 16, width: int = 4,
                   **kwargs) -> "ProposalGenerator":
        """The shipped WRN-16-4 (or ``weights``, a state-dict file) with the given options."""
        return cls(wide_resnet(depth, width, weights=weights), **kwargs)

    @property
    def keeps_work(self) -> bool:
        """Whether every image must be kept at working resolution (crop rescoring cuts
        proposals out of it), not only the multi-scale ones."""
        return self.options.box_recipe().rescore != "off"

    # -- the stages on a ready batch ------------------------------------------------------

    def _rows(self, x: Tensor, specs: list[tuple[str, object]]) -> tuple[Tensor, Tensor | None]:
        """Expand images into (image, class) rows: image index per row and class per row.

        Returns ``(row_image, row_class)``; ``row_class`` is None when every image wants
        its predicted class, which the method then picks from its own forward pass.
        """
        if all(kind == "predicted" for kind, _ in specs):
            return torch.arange(len(specs)), None
        probe = None
        if any(kind in ("predicted", "top") for kind, _ in specs):
            with torch.no_grad():
                probe = self.model(x).float()
        row_image, row_class = [], []
        for i, (kind, arg) in enumerate(specs):
            if kind == "list":
                chosen = list(dict.fromkeys(arg))
            else:
                k = 1 if kind == "predicted" else int(arg)
                chosen = probe[i].topk(k).indices.tolist()
            row_image += [i] * len(chosen)
            row_class += chosen
        return torch.tensor(row_image), torch.tensor(row_class)

    def saliency(self, x_uint8: Tensor, specs: list[tuple[str, object]]):
        """``uint8 [B, 3, 32, 32]`` -> maps ``[M, 32, 32]``, row image ``[M]``, row class ``[M]``,
        probabilities ``[B, 10]``."""
        x = self._model_input(x_uint8)
        row_image, row_class = self._rows(x, specs)
        rows = x[row_image.to(self.device)] if row_class is not None else x
        targets = row_class.to(self.device) if row_class is not None else (lambda z: z.argmax(1))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            maps, logits = self.method(rows, targets)
        if row_class is None:
            row_class = logits.argmax(1).cpu()
        probs = torch.zeros(len(specs), logits.shape[1])
        probs[row_image] = logits.softmax(1).cpu()  # rows of one image share its logits
        return maps.detach().cpu(), row_image, row_class, probs

    def run_batch(self, x_uint8: Tensor, sizes: Sequence[tuple[int, int]],
                  classes: Sequence[ClassSpec] | None = None,
                  work: Sequence[Tensor | None] | None = None) -> list[dict]:
        """Proposals for a prepared batch. ``sizes``: each image's original ``(h, w)``.

        Returns one dict per image with ``boxes`` ``[K, 4]`` (xyxy, original pixels),
        ``scores`` ``[K]``, ``labels`` ``[K]``, ``probs`` ``[10]``, and the intermediate
        products ``maps`` ``[R, 32, 32]``, ``masks`` ``[R, 32, 32]``, ``map_classes``
        ``[R]`` (one row per class asked for) and ``peaks`` ``[R, 2]`` (each map's maximum,
        x, y in original pixels).

        ``work``: each image at working resolution (or None); images that qualify for
        multi-scale (``Options.scales``) take the multi-scale path, the rest one window.
        """
        specs = [parse_class_spec(c) for c in (classes or [None] * len(sizes))]
        multi = [i for i in range(len(sizes)) if work is not None and work[i] is not None
                 and M.wants_multiscale(sizes[i], self.options.scales)]
        single = [i for i in range(len(sizes)) if i not in multi]
        out: list = [None] * len(sizes)
        if single:
            sub = [sizes[i] for i in single]
            res = self.proposals_from_maps(*self.saliency(x_uint8[single], [specs[i] for i in single]), sub,
                                           [x_uint8[i] if work is None or work[i] is None else work[i] for i in single],
                                           named=[specs[i][0] == "list" for i in single])
            for i, r in zip(single, res):
                out[i] = r
        if multi:
            res = self.multiscale(x_uint8[multi], [sizes[i] for i in multi], [specs[i] for i in multi],
                                  [work[i] for i in multi])
            for i, r in zip(multi, res):
                out[i] = r
        return out

    def smooth_and_threshold(self, maps: Tensor, o: Options) -> tuple[Tensor, Tensor]:
        """Maps ``[R, h, w]`` of one grid size -> (smoothed maps ``[R, h, w]``, kept-pixel masks
        ``[L, R, h, w]``, one per threshold value of :meth:`Options.threshold_values`), batched.

        Sizes are stated for the 32x32 grid and scale with larger (multi-scale) grids:
        top-N is a share of 1024 pixels, sigma is in 32x32-grid pixels. ``o``: the box recipe.
        """
        f = max(maps.shape[-2:]) / INPUT_SIZE
        if o.smooth_sigma > 0:
            s = o.smooth_sigma * f
            k = 2 * int(round(3 * s)) + 1
            maps = gaussian_blur(maps[:, None], [k, k], [s, s])[:, 0]
        name = o.threshold
        values = o.threshold_values()
        if name == "top-n":
            values = [v * maps[0].numel() / INPUT_SIZE ** 2 for v in values]
        return maps, torch.stack([threshold(maps, name, v) for v in values])

    @staticmethod
    def boxes_from_mask(m: Tensor, masks: Tensor, o: Options) -> tuple[Tensor, Tensor]:
        """One map ``[h, w]`` and its masks ``[L, h, w]`` -> grid boxes ``[K, 4]`` (xyxy) and
        scores ``[K]``: morphology, connected components, NMS. With one mask, its ``top_k``
        best boxes; with a ladder of masks, the best box of each. With ``o.moment_box``, also the
        map's :func:`~gradloc.proposals.moment_box` (scored 0: only rescoring ranks it, so ``o``
        is a :meth:`Options.box_recipe`). The kernel is in 32x32-grid pixels."""
        f = max(m.shape) / INPUT_SIZE
        kernel = o.kernel if f == 1 else (int(round(o.kernel * f)) | 1)
        kw = dict(morph=o.morph, kernel=kernel, score=o.component_score, include_union=o.union_box,
                  nms_iou=o.nms_iou)
        if len(masks) == 1:
            found = [P.propose(m.numpy(), masks[0].numpy(), top_k=o.top_k, **kw)]
        else:
            found = [P.propose(m.numpy(), k.numpy(), top_k=1, **kw) for k in masks]
        if o.moment_box > 0:
            box = P.moment_box(m.numpy(), o.moment_box)
            found.append((box, torch.zeros(len(box))))
        return torch.cat([b for b, _ in found]), torch.cat([s for _, s in found])

    def crop_scores(self, images: Sequence[Tensor], boxes: Sequence[Tensor], classes: Sequence[int]) -> list[Tensor]:
        """Class probability of each box's own crop: ``images[j]`` ``uint8 [3, h, w]``, its
        ``boxes[j]`` ``[K_j, 4]`` (xyxy in that image's pixels) and class -> ``[K_j]`` each,
        all crops in one batched forward pass."""
        return self._class_probs([M.crop_windows(img, P.clip_nonempty(b, img.shape[-2:])) if len(b) else b
                                  for img, b in zip(images, boxes)], classes)

    @staticmethod
    def blank_in_image(images: Sequence[Tensor], boxes: Sequence[Tensor]) -> list[Tensor]:
        """Per row, the image's 32x32 view with each box (xyxy in the image's pixels) blanked to
        the mean colour -> ``uint8 [K_j, 3, 32, 32]``."""
        out = []
        for img, b in zip(images, boxes):
            h, w = img.shape[-2:]
            thumb = M.crop_windows(img, torch.tensor([[0.0, 0.0, w, h]]), INPUT_SIZE)[0]
            out.append(M.blank_boxes(thumb, b.float() * torch.tensor([INPUT_SIZE / w, INPUT_SIZE / h] * 2),
                                     MEAN_COLOUR))
        return out

    def deletion_scores(self, blanked: Sequence[Tensor], classes: Sequence[int]) -> list[Tensor]:
        """Class probability of each blanked view ``uint8 [K_j, 3, 32, 32]`` (one tensor per
        row, see :meth:`blank_in_image`), i.e. the evidence left outside each box -> ``[K_j]``
        each, all in one batched forward pass."""
        return self._class_probs(blanked, classes)

    def box_scores(self, images: Sequence[Tensor], boxes: Sequence[Tensor], classes: Sequence[int],
                   rescore: str, blanked: Sequence[Tensor] | None = None) -> list[Tensor]:
        """Rescoring of each box (arguments as for :meth:`crop_scores`). ``crop``: its crop's
        class probability. ``crop-delete``: that minus the class probability of the image with
        the box blanked (``blanked``, by default :meth:`blank_in_image`), so a box must both hold
        the evidence and leave little of it outside; a part of an object (a head) scores high on
        the first alone, not on both."""
        kept = self.crop_scores(images, boxes, classes)
        if rescore == "crop":
            return kept
        if blanked is None:
            blanked = self.blank_in_image(images, boxes)
        return [k - d for k, d in zip(kept, self.deletion_scores(blanked, classes))]

    def _class_probs(self, inputs: Sequence[Tensor], classes: Sequence[int]) -> list[Tensor]:
        """Per row, the probability of its class for each of its inputs ``uint8 [K_j, 3, 32, 32]``
        -> ``[K_j]``, all rows in one batched forward pass over the distinct inputs."""
        full = [x for x in inputs if len(x)]
        if not full:
            return [torch.zeros(0) for _ in inputs]
        views = torch.cat(full)
        # Candidates repeat (threshold rungs that find the same box, rows of one image), so
        # each distinct view is run once.
        distinct, where = torch.unique(views.flatten(1), dim=0, return_inverse=True)
        probs = self._window_probs(distinct.view(-1, *views.shape[1:]))[where]
        probs = iter(probs.split([len(x) for x in full]))
        return [next(probs)[:, int(c)] if len(x) else torch.zeros(0) for x, c in zip(inputs, classes)]

    def proposals_from_maps(self, maps: Tensor, row_image: Tensor, row_class: Tensor, probs: Tensor,
                            sizes: Sequence[tuple[int, int]],
                            work: Sequence[Tensor | None] | None = None,
                            named: Sequence[bool] | None = None) -> list[dict]:
        """The post-processing half of the single-window path: smoothing, threshold,
        morphology, components, boxes in original pixels, for maps ``[R, 32, 32]``. Cheap, so
        a sweep can rerun it on cached maps. Scores are the component's score times the
        image's class probability, which ranks proposals across the classes of one image;
        with rescoring (``work``: each image at working resolution), :meth:`box_scores` of
        each box, and with ``fuse`` the best box fused with its neighbours
        (:func:`~gradloc.proposals.fuse_best`). With ``class_contrast``, the maps of images
        asked for several named classes are first contrasted (:func:`~gradloc.saliency.contrast_maps`)
        and propose no union box. ``named``: per image, whether its classes were named (a
        list) rather than its top-k guesses, which are hypotheses about one object that the
        contrast would split; default all named.
        """
        o = self.options.box_recipe()
        # rows whose image was asked for several named classes
        shared = (torch.bincount(row_image)[row_image] > 1) & o.class_contrast
        if named is not None:
            shared &= torch.tensor(list(named), dtype=torch.bool)[row_image]
        if shared.any():
            maps = maps.clone()
            maps[shared] = contrast_maps(maps[shared], row_image[shared])
        smoothed, masks = self.smooth_and_threshold(maps, o)
        # the box around all components of a contrasted map spans several objects
        o_shared = replace(o, union_box=False) if shared.any() else o
        boxes, scores = [], []
        for r in range(len(smoothed)):
            i, c = int(row_image[r]), int(row_class[r])
            b, sc = self.boxes_from_mask(smoothed[r], masks[:, r], o_shared if shared[r] else o)
            boxes.append(P.scale_boxes(P.pad_boxes(b, o.box_padding), smoothed[r].shape, sizes[i]))
            scores.append(sc * probs[i, c])
        if o.rescore != "off":
            if work is None or any(work[int(i)] is None for i in row_image):
                raise ValueError("crop rescoring needs each image at working resolution (prepare(keep_work=True))")
            images = [work[int(i)] for i in row_image]
            in_work = [P.scale_boxes(b, sizes[int(i)], img.shape[-2:]) for b, i, img in zip(boxes, row_image, images)]
            scores = self.box_scores(images, in_work, row_class.tolist(), o.rescore)
            boxes, scores = zip(*(P.rank(b, s, o.nms_iou, o.top_k, o.fuse) for b, s in zip(boxes, scores)))
        results = [empty_result() for _ in sizes]
        shown = (len(masks) - 1) // 2  # with a ladder, the middle rung's mask (the lower of two) is returned
        for r in range(len(smoothed)):
            i, c = int(row_image[r]), int(row_class[r])
            add_class(results[i], c, boxes[r], scores[r], smoothed[r], masks[shown, r])
        return [assemble(res, probs[i], sizes[i]) for i, res in enumerate(results)]

    def multiscale(self, x_uint8: Tensor, sizes: Sequence[tuple[int, int]], specs: list,
                   work: Sequence[Tensor]) -> list[dict]:
        """Multi-scale proposals. ``work``: each image as ``uint8 [3, h, w]`` at working
        resolution (see :func:`gradloc.preprocess.prepare`); ``x_uint8`` its 32x32 view."""
        x = self._model_input(x_uint8)
        row_image, row_class = self._rows(x, specs)
        with torch.no_grad():
            probs = self.model(x).float().softmax(1).cpu()
        if row_class is None:
            row_class = probs.argmax(1)
        windows, crops = [], []
        for i, img in enumerate(work):
            h, w = img.shape[-2:]
            scales = M.resolve_scales(self.options.scales, sizes[i])
            windows.append(M.window_boxes(h, w, scales, self.options.max_windows))
            crops.append(M.crop_windows(img, windows[-1]))
        # Pass 1, forward only: every window's class probabilities, shared by all classes of an image.
        window_probs = self._window_probs(torch.cat(crops)).split([len(c) for c in crops])
        # Pass 2: gradients only for each row's best-supported windows, all rows in one batch.
        picks = [M.top_windows(window_probs[int(i)][:, int(c)], self.options.windows)
                 for i, c in zip(row_image, row_class)]
        counts = [len(p) for p in picks]
        sel_crops = torch.cat([crops[int(i)][p] for i, p in zip(row_image, picks)])
        sel_classes = torch.cat([torch.full((n,), int(c)) for c, n in zip(row_class, counts)])
        win_maps, win_probs = self._method_in_chunks(sel_crops, sel_classes)
        o = self.options.box_recipe()
        smoothed, masks = self.smooth_and_threshold(win_maps, o)
        shown = (len(masks) - 1) // 2
        row_boxes, row_scores, row_blanked = [], [], []
        for r, (m_r, k_r, p_r, pick) in enumerate(zip(smoothed.split(counts), masks.split(counts, 1),
                                                      win_probs.split(counts), picks)):
            i = int(row_image[r])
            boxes, scores, blanked = [], [], []
            for m, mask, p, window, view in zip(m_r, k_r.unbind(1), p_r, windows[i][pick], crops[i][pick]):
                b, sc = self.boxes_from_mask(m, mask, o)
                b = P.pad_boxes(b, o.box_padding)
                boxes.append(M.boxes_to_image(b, window, INPUT_SIZE))
                scores.append(sc * p)
                if o.rescore == "crop-delete":  # blanked in its own window: in the whole image a small box would vanish
                    blanked.append(M.blank_boxes(view, b, MEAN_COLOUR))
            row_boxes.append(torch.cat(boxes))  # working-image pixels
            row_scores.append(torch.cat(scores))
            row_blanked.append(torch.cat(blanked) if blanked else None)  # None unless crop-delete
        if o.rescore != "off":
            row_scores = self.box_scores([work[int(i)] for i in row_image], row_boxes, row_class.tolist(), o.rescore,
                                         row_blanked)
        results = [empty_result() for _ in sizes]
        for r, (m_r, k_r, p_r, pick) in enumerate(zip(smoothed.split(counts), masks[shown].split(counts),
                                                      win_probs.split(counts), picks)):
            i, c = int(row_image[r]), int(row_class[r])
            h, w = work[i].shape[-2:]
            boxes, scores = P.rank(row_boxes[r], row_scores[r], o.nms_iou, o.top_k, o.fuse)
            grid = M.work_size(h, w)
            picked = windows[i][pick]
            add_class(results[i], c, P.scale_boxes(boxes, (h, w), sizes[i]), scores,
                      M.accumulate(m_r, p_r, picked, (h, w), grid),
                      M.accumulate(k_r.float(), torch.ones(len(k_r)), picked, (h, w), grid) > 0)
        return [assemble(res, probs[i], sizes[i]) for i, res in enumerate(results)]

    def _model_input(self, x_uint8: Tensor) -> Tensor:
        """``uint8 [B, 3, 32, 32]`` -> normalised float on the device, channels_last."""
        return normalize(x_uint8.to(self.device)).contiguous(memory_format=torch.channels_last)

    def _window_probs(self, crops: Tensor) -> Tensor:
        """Class probabilities ``[W, 10]`` of window crops ``uint8 [W, 3, 32, 32]``, no gradients."""
        out = []
        with torch.no_grad():
            for s in range(0, len(crops), self.batch_size):
                xb = self._model_input(crops[s:s + self.batch_size])
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                    out.append(self.model(xb).float().softmax(1).cpu())
        return torch.cat(out)

    def _method_in_chunks(self, crops: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
        """The saliency method on ``uint8 [N, 3, 32, 32]`` crops, one class each, in chunks of
        ``batch_size`` -> maps ``[N, 32, 32]`` and each crop's class probability ``[N]``."""
        maps, class_probs = [], []
        for s in range(0, len(crops), self.batch_size):
            xb = self._model_input(crops[s:s + self.batch_size])
            cb = classes[s:s + self.batch_size].to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                m, logits = self.method(xb, cb)
            maps.append(m.detach().float().cpu())
            class_probs.append(logits.detach().float().softmax(1).gather(1, cb[:, None])[:, 0].cpu())
        return torch.cat(maps), torch.cat(class_probs)

    # -- the public entry point --------------------------------------------------------

    def __call__(self, images: ImageInput | Iterable[ImageInput],
                 classes: ClassSpec | Sequence[ClassSpec] = None) -> list[dict]:
        """Proposals for one image or a list of images.

        ``classes``: None (each image's predicted class), one spec for all images (a name,
        index, "all", "top3"), or a sequence with one spec per image (a name, index, list).
        Returns a list of dicts (see :meth:`run_batch`), one per image, best box first.
        """
        ndim = getattr(images, "ndim", None)
        if ndim == 4:  # a batch tensor or array
            items = list(images)
        elif isinstance(images, (str, Path)) or ndim in (2, 3) or not isinstance(images, Iterable):
            items = [images]
        else:
            items = list(images)
        if classes is None or isinstance(classes, (str, int)):
            per_image = [classes] * len(items)
        else:
            per_image = list(classes)
            if len(per_image) != len(items):
                raise ValueError(f"got {len(per_image)} class specs for {len(items)} images")
        out: list[dict] = []
        for start in range(0, len(items), self.batch_size):
            chunk = [prepare(im, self.max_pixels, self.options.scales, self.keeps_work)
                     for im in items[start:start + self.batch_size]]
            x = torch.stack([c[0] for c in chunk])
            out += self.run_batch(x, [c[1] for c in chunk], per_image[start:start + self.batch_size],
                                  [c[2] for c in chunk])
        return out
