"""ProposalGenerator: image -> windows -> saliency maps -> masks -> components -> boxes.

    >>> gen = gradloc.ProposalGenerator.pretrained()  # or threshold="top-n", top_n=100
    >>> out = gen(["cat.jpg", "two_objects.png"], classes=[None, ["cat", "dog"]])
    >>> out[0]["boxes"], out[0]["scores"], out[0]["labels"], out[0]["probs"]

The generator only composes stages: class requests (:mod:`~gradloc.models.classes`), a window plan
(:mod:`~gradloc.discovery.windows`) that yields the saliency maps, the post-processing of those maps
(:mod:`~gradloc.discovery.proposals`), rescoring and fusion (:mod:`~gradloc.discovery.rescoring`), box geometry
(:mod:`~gradloc.ops.boxes`), and the result (:mod:`~gradloc.discovery.results`).
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, fields
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from . import multiscale as ms
from .candidates import CandidateMaker, RowCandidates
from ..models.classes import ClassSpec, class_index, parse_class_spec
from ..models.classifier import CIFAR10, ClassifierSpec, spatial_feature_layer
from .config import CAM_METHODS, Options
from ..models.runtime import DEFAULT_MAX_PIXELS, Runtime, judge_runtime
from ..models.wrn import wide_resnet
from ..models.network import Network
from ..data.preprocess import ImageInput, prepare
from ..ops.boxes import scale_boxes
from .proposals import smooth_and_threshold
from .rescoring import Rescorer, evidence_scores, presence_scores, rank_and_fuse, recognised_large
from .results import Candidates, ClassProposals, Result, assemble
from ..attribution.saliency import make_method
from .windows import VIEW_CONSENSUS, MultiScale, Pyramid, WholeImage, WindowPlan, Windows, contrasted




class ProposalGenerator:
    """Bounding-box proposals from class-masked gradients of a CIFAR-10 classifier.

    Parameters
    ----------
    model : nn.Module or Runtime
        Classifier on normalised input (``spec``); put in eval mode with frozen parameters. Or a
        :class:`~gradloc.models.runtime.Runtime` built once (the arguments below then unused).
    spec : ClassifierSpec
        Its class names, input size, normalisation and last feature layer (default: the shipped
        CIFAR-10 WRN's); :meth:`from_classifier` builds one.
    device : str
        "auto" (CUDA when available), "cpu" or "cuda".
    batch_size : int
        Images per forward/backward pass.
    max_pixels : int
        Larger images are refused (decompression-bomb guard).
    precision : {"auto", "fp32", "bf16"}
        The network's passes in bf16 autocast or fp32. ``auto`` (default): bf16 where the device
        computes it natively (CUDA, CPUs with AVX-512-BF16 / AMX; BENCHMARKS.md),
        fp32 elsewhere (on AVX2-only CPUs bf16 is many times slower). Boxes agree closely between
        the two (BENCHMARKS.md); pin ``fp32`` for results identical on every machine.
    amp : bool
        Older spelling: True is ``precision="bf16"``.
    **options
        Fields of :class:`~gradloc.discovery.config.Options` (``method``, ``top_n``, ``threshold``, ...).
    """

    def __init__(self, model: nn.Module | Runtime, device: str = "auto", batch_size: int = 64,
                 max_pixels: int = DEFAULT_MAX_PIXELS, precision: str = "auto", amp: bool = False,
                 spec: ClassifierSpec = CIFAR10, **options) -> None:
        unknown = set(options) - {f.name for f in fields(Options)}
        if unknown:
            raise TypeError(f"unknown options: {', '.join(sorted(unknown))}")
        self.options = Options(**options)
        for note in self.options.inert():  # an option that would do nothing is said so, not ignored
            warnings.warn(note, UserWarning, stacklevel=2)
        self.config = self.options.effective()  # what runs, one config per stage
        self.runtime = model if isinstance(model, Runtime) else Runtime.build(
            model, spec, device, "bf16" if amp else precision, batch_size, max_pixels)
        spec = self.runtime.spec  # a given runtime's own
        saliency, plan = self.config.saliency, self.config.plan
        kwargs = saliency.method_kwargs()
        # the features pooled last, which the layer methods and the pyramid hook; None for tokens (a ViT)
        self.feature_layer = spatial_feature_layer(self.model, spec)
        if saliency.method in (*CAM_METHODS, "grad-x-activation") and "layer" not in kwargs:
            if self.feature_layer is None:
                raise ValueError(f"--method {saliency.method} needs a spatial feature map [B, C, h, w], and this "
                                 "classifier has none (its features are tokens, as a vision transformer's); use an "
                                 "input-gradient method such as --method gradient, or name a layer (--feature-layer)")
            kwargs["layer"] = self.feature_layer
        self.method = make_method(saliency.method, self.model, spec.activation, **kwargs)
        self.net = Network(self.model, self.method, self.device, self.batch_size, self.amp, saliency.flip, spec,
                           self.runtime.forward_model)
        # the boxes' judge: the shipped extent judge, a network of the user's, or the classifier itself
        self.judge, judge = judge_runtime(self.config.ranking.judge, self.runtime)
        self.judge_net = self.net if judge is None else Network(judge.model, None, judge.device, judge.batch_size,
                                                                judge.amp, False, judge.spec, judge.forward_model)
        self.rescorer = Rescorer(self.judge_net.class_probs, self.config.ranking.merge_iou, spec.input_size,
                                 spec.mean_colour)
        self.whole_image = WholeImage()
        self.multiscale = MultiScale(plan.scales, plan.max_windows, plan.windows)
        p, ranking = self.config.proposals, self.config.ranking
        self.candidates = CandidateMaker(
            morph=p.morph, kernel=p.kernel, score=p.component_score, union_box=p.union_box, nms_iou=ranking.nms_iou,
            top_k=ranking.top_k, moment=p.moment_box, peaks=p.peaks, peak_shares=p.peak_shares(),
            padding=p.box_padding, frame=p.frame_box, blank=ranking.rescore == "crop-delete", fill=spec.mean_colour)
        # the pyramid's sizes are set for a 32 px input; another model's scale with its input
        scale = spec.input_size / 32
        # its larger inputs need gradients from the final features only: the forward model's
        self.pyramid = Pyramid([round(s * scale) for s in plan.pyramid_sizes()], self.runtime.forward_model,
                               self.feature_layer, spec.activation,
                               fine_above=4 * spec.input_size if plan.fine_inputs == "unrecognised" else None)
        if self.feature_layer is None and ms.parse_scales(plan.scales) == "auto":
            warnings.warn("this classifier has no spatial feature map (its features are tokens, as a vision "
                          "transformer's), which the input-size pyramid needs: large images take multi-scale windows "
                          f"at its own input size instead (--scales {','.join(map(str, ms.DEFAULT_SCALES))})",
                          UserWarning, stacklevel=2)

    @classmethod
    def pretrained(cls, weights: str | Path = "default", depth: int = 16, width: int = 4,
                   **kwargs) -> "ProposalGenerator":
        """The shipped WRN-16-4 (or ``weights``, a state-dict file) with the given options."""
        return cls(wide_resnet(depth, width, weights=weights), **kwargs)

    @classmethod
    def from_classifier(cls, model: nn.Module, classes: Sequence[str], input_size: int | tuple[int, int],
                        mean: Sequence[float], std: Sequence[float], feature_layer: str | None = None,
                        activation: str = "softmax", **kwargs) -> "ProposalGenerator":
        """Proposals from any classifier: ``model`` maps a batch ``[B, 3, S, S]`` normalised by
        ``mean`` / ``std`` (RGB in [0, 1]) to ``[B, len(classes)]`` logits; ``input_size`` is the
        side ``S`` it was trained at. ``feature_layer`` names its last feature layer (found for
        common torchvision families when None), which Grad-CAM, CAM and the pyramid's gradient x
        activation hook. ``activation``: how its logits become probabilities, ``softmax`` or
        ``sigmoid`` (multi-label; one class with one logit is a binary model). Other keywords as
        for the constructor (options, device, precision)."""
        return cls(model, spec=ClassifierSpec(tuple(classes), input_size, tuple(mean), tuple(std), feature_layer,
                                              activation), **kwargs)

    @classmethod
    def from_source(cls, source: str, weights: str | Path = "default", classes: Sequence[str] | str | Path | None = None,
                    input_size: int | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    feature_layer: str | None = None, activation: str | None = None,
                    **kwargs) -> "ProposalGenerator":
        """A classifier named as ``--model`` names it (``"torchvision:resnet18:IMAGENET1K_V1"``,
        ``"timm:resnet18"``, ``"hf:path/to/folder"``, ``"my_net.py:build"``) with its ``weights``
        file, built and described as the command line does: what the source knows (a weights
        enum's names and transforms, timm's data config, a transformers folder's id2label and
        image processor) need not be given. ``classes``: the names, or a file of them.
        ``activation``: ``softmax`` or ``sigmoid`` (multi-label), by default what the model is.
        Other keywords as for the constructor."""
        from ..models.classifier import load_user_classifier
        model, spec = load_user_classifier(source, weights, classes, input_size, mean and tuple(mean),
                                           std and tuple(std), feature_layer, activation)
        return cls(model, spec=spec, **kwargs)

    def with_options(self, **changes) -> "ProposalGenerator":
        """A generator on the same runtime with some options changed."""
        return ProposalGenerator(self.runtime, **{**asdict(self.options), **changes})

    # the runtime's fields, as the generator's own
    model = property(lambda self: self.runtime.model)
    spec = property(lambda self: self.runtime.spec)
    device = property(lambda self: self.runtime.device)
    precision = property(lambda self: self.runtime.precision)
    amp = property(lambda self: self.runtime.amp)
    batch_size = property(lambda self: self.runtime.batch_size)
    max_pixels = property(lambda self: self.runtime.max_pixels)

    def settings(self) -> dict:
        """The effective settings, as recorded in run.json and predictions.json: every option as
        it runs (:meth:`Options.effective`), the precision, and the classifier's description
        when it is not the shipped WRN's."""
        own = {} if self.spec == CIFAR10 else {"classes": list(self.spec.classes), "input_size": self.spec.input_size,
                                               "mean": list(self.spec.mean), "std": list(self.spec.std),
                                               "activation": self.spec.activation, "feature_layer": self.feature_layer}
        return {**self.config.flat(), "judge": self.judge, "precision": self.precision, **own}

    @property
    def keeps_work(self) -> bool:
        """Whether images are kept at working resolution when prepared: rescoring cuts
        proposals out of them, and the plans of large images (:meth:`plan_for`) view them."""
        return self.config.ranking.rescore != "off" or ms.parse_scales(self.config.plan.scales) != "off"

    def plan_for(self, size: tuple[int, int]) -> WindowPlan:
        """The window plan of an image of ``size`` ``(h, w)``, chosen here and nowhere else:
        large images (``Options.scales``) take the input-size pyramid (``auto``) or the
        multi-scale windows (explicit scales, or ``auto`` for a model without a feature map,
        such as a vision transformer), the rest their model-sized view."""
        scales = self.config.plan.scales
        if not ms.wants_multiscale(size, scales, self.spec.input_size):
            return self.whole_image
        # the pyramid hooks a feature map; a model without one (a ViT) takes the windows, at its input size
        pyramid = ms.parse_scales(scales) == "auto" and self.feature_layer is not None
        return self.pyramid if pyramid else self.multiscale

    # -- the stages on a prepared batch ---------------------------------------------------

    def run_batch(self, x_uint8: Tensor, sizes: Sequence[tuple[int, int]],
                  classes: Sequence[ClassSpec] | None = None,
                  work: Sequence[Tensor | None] | None = None) -> list[Result]:
        """Proposals for a prepared batch: ``uint8 [B, 3, S, S]`` (the model's input side),
        each image's original ``(h, w)``, class specs, and each image at working resolution
        (or None: its model-sized view is all there is). Each image takes :meth:`plan_for`'s
        plan; the images of one plan run as one batch."""
        specs = [parse_class_spec(c, self.spec.classes) for c in (classes or [None] * len(sizes))]
        work = list(work) if work is not None else [None] * len(sizes)
        groups: dict[WindowPlan, list[int]] = {}
        for i, size in enumerate(sizes):
            plan = self.plan_for(size) if work[i] is not None else self.whole_image
            groups.setdefault(plan, []).append(i)
        out: list = [None] * len(sizes)
        for plan, idx in groups.items():
            # without a working copy, rescoring cuts boxes out of the model-sized view itself
            images = [x_uint8[i] if work[i] is None else work[i] for i in idx]
            sub_sizes = [sizes[i] for i in idx]
            w = plan.windows(self.net, x_uint8[idx], sub_sizes, [specs[i] for i in idx], images)
            for i, r in zip(idx, self.postprocess(plan, w, sub_sizes, images)):
                out[i] = r
        return out

    def postprocess(self, plan: WindowPlan, w: Windows, sizes: Sequence[tuple[int, int]],
                    work: Sequence[Tensor]) -> list[Result]:
        """The one post-processing loop, for any plan's windows: smoothing, threshold,
        morphology, components and candidates on each window's grid (:func:`gather`), rescoring,
        ranking and fusion, the boxes mapped to the original image, the result per image."""
        p = self.config.proposals
        shared, maps = contrasted(w, p.class_contrast) if plan.contrast else (torch.zeros(len(w.counts), dtype=torch.bool), w.maps)
        smoothed, masks = smooth_and_threshold(maps, p.smooth_sigma, p.threshold, p.values())
        rows = self.candidates.rows(w, smoothed, masks, shared, plan.peak_regions, plan.frame_candidate)
        probs = [float(w.probs[r.image, r.cls]) for r in rows]
        # a row whose object is large picks by its candidates' agreement, the others by their best score
        consensus = [plan.consensus and self.is_large(r, p) for r, p in zip(rows, probs)]
        evidence = self.rescore(plan, rows, sizes, work, consensus)
        scores = [r.scores if e is None else evidence_scores(e) for r, e in zip(rows, evidence)]
        chosen = [self.select(plan, r, s, p, c) for r, s, p, c in zip(rows, scores, probs, consensus)]
        shown = (len(masks) - 1) // 2  # with a ladder, the middle rung's mask (the lower of two) is returned
        per_image: list[list] = [[] for _ in sizes]
        start = 0
        for r, s, e, (boxes, ranked), count in zip(rows, scores, evidence, chosen, w.counts):
            i = r.image
            # boxes go to the original image here, once: the chosen ones and every candidate
            mapped = plan.to_original(torch.cat([boxes, r.boxes]), sizes[i], work[i])
            cand = Candidates(mapped[len(boxes):], s, torch.zeros(len(r.boxes), 2) if e is None else e, r.kinds, r.sides)
            m, k = plan.output(w, start, smoothed[start:start + count], masks[shown, start:start + count],
                               sizes[i], work[i])
            per_image[i].append(ClassProposals(r.cls, mapped[:len(boxes)], ranked, m, k, cand))
            start += count
        return [assemble(res, w.probs[i], sizes[i]) for i, res in enumerate(per_image)]

    def rescore(self, plan: WindowPlan, rows: list[RowCandidates], sizes: Sequence[tuple[int, int]],
                work: Sequence[Tensor], consensus: Sequence[bool]) -> list[Tensor | None]:
        """Each row's evidence ``[M, 2]`` (its boxes' crop and blanked-view probabilities), all
        rows in one batched pass; None per row when rescoring is off. Rows ranked by their best
        score (not by ``consensus``) are bounded by ``--blanked-views``."""
        o = self.config.ranking
        if o.rescore == "off":
            return [None] * len(rows)
        in_work = [plan.to_work(r.boxes, sizes[r.image], work[r.image]) for r in rows]
        return self.rescorer.box_evidence([work[r.image] for r in rows], in_work, [r.cls for r in rows],
                                          o.rescore, [r.blanked for r in rows], [r.is_frame for r in rows],
                                          # the map's pass knows the whole view's probability by the classifier only
                                          [r.whole_prob if self.judge_net is self.net else None for r in rows],
                                          [o.blanked_views == "bounded" and not c for c in consensus])

    def select(self, plan: WindowPlan, row: RowCandidates, scores: Tensor, prob: float,
               consensus: bool) -> tuple[Tensor, Tensor]:
        """One row's chosen boxes (in the ranking frame) and their scores, best first: ranking
        (by the candidates' agreement where ``consensus``), fusion, scores that compare across
        images, and the minimum score."""
        o, boxes = self.config.ranking, row.boxes
        if o.rescore != "off" or plan.rank_without_rescoring:
            # consensus is off without rescoring (Options.effective)
            boxes, scores = rank_and_fuse(boxes, scores, o.nms_iou, o.top_k, o.fuse, consensus=consensus)
        if o.rescore != "off":  # the class probability says whether the class is there at all
            scores = presence_scores(scores, prob)
        if o.min_score is not None:  # "absent" is an answer: a class may be left without a box
            kept = scores >= o.min_score - 1e-6  # float32 scores: 0.5 may read 0.49999997
            boxes, scores = boxes[kept], scores[kept]
        return boxes, scores

    def is_large(self, row: RowCandidates, prob: float) -> bool:
        """Whether a row's object is large, by ``--consensus``: ``view``, its 32x32 view gives the
        class more than :data:`VIEW_CONSENSUS` probability; ``scale``, it is recognised better in
        the coarse views than the fine ones (:func:`~gradloc.discovery.rescoring.recognised_large`)."""
        how = self.config.ranking.consensus
        if how == "view":
            return prob > VIEW_CONSENSUS
        return how == "scale" and recognised_large(row.view_sides, row.view_probs)

    def proposals_from_maps(self, maps: Tensor, row_image: Tensor, row_class: Tensor, probs: Tensor,
                            sizes: Sequence[tuple[int, int]], work: Sequence[Tensor | None] | None = None,
                            named: Sequence[bool] | None = None) -> list[Result]:
        """The whole-image post-processing of maps ``[R, 32, 32]`` computed elsewhere (a test
        gives its own maps). ``work``: each image at working resolution, needed by
        rescoring. ``named``: per image, whether its classes were named (a list) rather than
        its top-k guesses, which the contrast would split; default all named."""
        if self.config.ranking.rescore != "off" and (work is None or any(work[int(i)] is None for i in row_image)):
            raise ValueError("crop rescoring needs each image at working resolution (prepare(keep_work=True))")
        work = work if work is not None else [None] * len(sizes)
        return self.postprocess(self.whole_image, WholeImage.from_maps(maps, row_image, row_class, probs, sizes, named),
                                sizes, work)

    def score_boxes(self, image: ImageInput, boxes, classes: ClassSpec | Sequence[ClassSpec]) -> Tensor:
        """The score the pipeline ranks candidates by, for boxes of your own: ``image`` (any
        accepted input), ``boxes`` ``[K, 4]`` xyxy in its pixels, and one class (name or index)
        for all boxes or one per box -> float ``[K]``. With ``rescore`` ``crop``, each box's crop
        probability of its class; ``crop-delete`` (default), that minus the probability of the
        image's model-sized view with the box blanked; ``off`` is refused (nothing to score by).
        Every box is scored on its own (no merging of near-duplicates)."""
        rescore = self.config.ranking.rescore
        if rescore == "off":
            raise ValueError("score_boxes needs rescoring (rescore crop or crop-delete)")
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        names = self.spec.classes
        per_box = [classes] * len(boxes) if classes is None or isinstance(classes, (str, int)) else list(classes)
        if len(per_box) != len(boxes):
            raise ValueError(f"got {len(per_box)} classes for {len(boxes)} boxes")
        if any(c is None for c in per_box):
            raise ValueError("score_boxes needs a class for every box (a name or an index)")
        idx = [class_index(c, names) for c in per_box]
        _, size, work = prepare(image, self.max_pixels, True, self.spec.input_size)
        in_work = scale_boxes(boxes, size, tuple(work.shape[-2:]))
        rescorer = Rescorer(self.judge_net.class_probs, 2.0, self.spec.input_size, self.spec.mean_colour)
        order = sorted(set(idx))
        rows = [in_work[[k for k, c in enumerate(idx) if c == cls]] for cls in order]
        evidence = rescorer.box_evidence([work] * len(rows), rows, order, rescore)
        out = torch.zeros(len(boxes))
        for cls, e in zip(order, evidence):
            out[[k for k, c in enumerate(idx) if c == cls]] = evidence_scores(e)
        return out

    # -- the public entry point --------------------------------------------------------

    def __call__(self, images: ImageInput | Iterable[ImageInput],
                 classes: ClassSpec | Sequence[ClassSpec] = None) -> list[Result]:
        """Proposals for one image or a list of images.

        ``classes``: None (each image's predicted class), one spec for all images (a name,
        index, "all", "top3"), or a sequence with one spec per image (a name, index, list).
        Returns one :class:`~gradloc.discovery.results.Result` per image, best box first.
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
        out: list[Result] = []
        for start in range(0, len(items), self.batch_size):
            chunk = [prepare(im, self.max_pixels, self.keeps_work, self.spec.input_size)
                     for im in items[start:start + self.batch_size]]
            x = torch.stack([c[0] for c in chunk])
            out += self.run_batch(x, [c[1] for c in chunk], per_image[start:start + self.batch_size],
                                  [c[2] for c in chunk])
        return out
