"""Settings chosen on a few boxed images of the user's own data (``gradloc calibrate``).

Choe et al. (CVPR 2020) showed that a handful of boxed images, used to choose a method's
settings, is worth more than the weakly supervised tricks they re-evaluated. The defaults were
chosen for a CIFAR-10 network on VOC and COCO photographs; another model on other photographs
may want others. The annotated images are split in two by a seed: the settings are chosen on
one part by GT-known CorLoc@0.5, one option at a time from the given settings (:data:`GRID`, a
small stated grid), and the presence threshold ``min_score`` as the best F1 of the chosen
settings' claims (each image asked for its top 3 classes). A value replaces the current one only
when it wins beyond chance on the choosing part (:func:`confident_gain`): on a few images, most
differences are a pair or two. The other part, never used to choose, reports CorLoc with a
bootstrap 95% interval beside the given settings and the best centred box.

A settings file is ``{"format": "gradloc-settings", "version": 1, "options": {...}, ...}``;
``localize --settings`` and ``evaluate --settings`` read its options (:func:`read_settings`),
as they read the ``settings`` of a ``predictions.json`` or ``run.json``.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from ..data.annotations import AnnotatedSet
from . import baselines as B
from .evaluate import predict
from .metrics import corloc, presence, top1_ious

SETTINGS_FORMAT = "gradloc-settings"
# The options searched, each over its values, one at a time in this order, starting from the
# given settings: the threshold rule and its ladder, how a large object's box is picked, the pyramid's
# inputs, and how candidates are rescored. Values that do not apply (a ladder under top-n, the
# pyramid's sizes on thumbnails) are skipped by the generator's own rules (Options.effective).
GRID: tuple[tuple[str, tuple], ...] = (
    ("threshold", ("mass", "top-n")),
    ("ladder", ("0.4,0.5,0.6,0.7", "0.2,0.3,0.4,0.5", "0.6,0.7,0.8,0.9")),
    ("consensus", ("view", "scale", "off")),
    ("input_sizes", ("48,64,96,128,192,256", "48,64,96,128")),
    ("rescore", ("crop-delete", "crop", "off")),
)
BOOTSTRAP_SAMPLES = 1000


def split(ds: AnnotatedSet, share: float, seed: int) -> tuple[AnnotatedSet, AnnotatedSet]:
    """The annotated images in two parts, drawn by ``seed``: ``share`` of them to choose on, the
    rest held out (each part at least one image)."""
    if len(ds.images) < 2:
        raise ValueError(f"calibration needs at least 2 annotated images (one to choose on, one held out), "
                         f"got {len(ds.images)}")
    order = np.random.default_rng(seed).permutation(len(ds.images))
    k = min(max(1, round(share * len(order))), len(order) - 1)
    part = lambda idx: replace(ds, images=[ds.images[i] for i in sorted(idx)])  # noqa: E731
    return part(order[:k]), part(order[k:])


def confident_gain(new: np.ndarray, old: np.ndarray, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES) -> bool:
    """Whether per-pair hits ``new`` beat ``old`` (the same pairs) beyond chance: the 5th
    percentile of the paired bootstrap of their mean difference is above zero. On 20 pairs a
    setting must win about three more pairs than it loses: a one-pair gain is noise, and moving
    on noise loses on the held-out images as often as it wins."""
    if not len(new):
        return False
    diff = new - old
    means = diff[np.random.default_rng(seed).integers(0, len(diff), (samples, len(diff)))].mean(1)
    return bool(np.percentile(means, 5) > 0)


def bootstrap_interval(hits: np.ndarray, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES) -> tuple[float, float]:
    """The 95% percentile-bootstrap interval of the mean of ``hits`` (pairs resampled)."""
    if not len(hits):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = hits[rng.integers(0, len(hits), (samples, len(hits)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


@dataclass(frozen=True)
class Score:
    """CorLoc@0.5 of one method on one part, with its interval and its number of pairs."""

    corloc: float
    low: float
    high: float
    pairs: int

    @classmethod
    def of(cls, ds: AnnotatedSet, preds: list, seed: int = 0) -> "Score":
        ious, _, _ = top1_ious(ds, preds)
        hits = (ious >= 0.5).astype(np.float64)
        low, high = bootstrap_interval(hits, seed)
        return cls(float(hits.mean()) if len(hits) else float("nan"), low, high, int(len(hits)))


def calibrate(gen, ds: AnnotatedSet, images_dir: str | Path, share: float = 0.5, seed: int = 0,
              workers: int | None = None, progress: bool = True) -> dict:
    """Choose ``gen``'s settings on part of ``ds`` (:func:`split`) and report them on the rest.

    Returns ``{"format", "version", "options", "calibration"}``: ``options`` are the chosen
    values that differ from ``gen``'s, and ``min_score``; ``calibration`` what was tried on the
    choosing part and the held-out scores of the chosen settings, of ``gen`` as given and of the
    best centred box (its area chosen on the choosing part). The held-out CorLoc is GT-known, so
    ``min_score``, which decides whether a class is there at all, is not applied to it."""
    choose, held_out = split(ds, share, seed)
    base = asdict(gen.options)
    cache: dict[tuple, np.ndarray] = {}  # each setting's per-pair hits on the choosing part

    def run(options: dict | None, part: AnnotatedSet, desc: str, request: str = "gt") -> list:
        with warnings.catch_warnings():  # a grid value another one makes inert is simply scored as it runs
            warnings.simplefilter("ignore")
            g = gen if options is None else gen.with_options(**options)
            return predict(g, part, images_dir, workers, progress=progress, desc=desc, request=request)[0]

    def choose_hits(options: dict) -> np.ndarray:
        key = tuple(sorted(options.items()))
        if key not in cache:
            cache[key] = (top1_ious(choose, run(options, choose, "calibrate"))[0] >= 0.5).astype(np.float64)
        return cache[key]

    chosen = dict(base)
    tried = []
    hits = choose_hits(chosen)
    for name, values in GRID:
        if name == "ladder" and chosen["threshold"] != "mass":
            continue  # the ladder is of mass shares
        start = chosen[name]
        for value in values:
            if value == start:  # scored already
                continue
            candidate = {**chosen, name: value}
            h = choose_hits(candidate)
            tried.append({"option": name, "value": value, "corloc": float(h.mean())})
            if confident_gain(h, hits, seed):  # only a gain beyond chance moves away from the current settings
                chosen, hits = candidate, h
    # the presence threshold: the chosen settings' claims on the top 3 classes, at their best F1
    claims = presence(choose, run(chosen, choose, "calibrate", "top3"))
    min_score = claims["best_f1_min_score"] if claims else None
    held_tuned = run(chosen, held_out, "held out")
    held_given = run(None, held_out, "held out")
    area = max(B.CENTRED_AREAS, key=lambda a: corloc(choose, B.baseline_centred(choose, a))["0.5"])
    changed = {k: v for k, v in chosen.items() if v != base[k]}
    return {
        "format": SETTINGS_FORMAT, "version": 1,
        "options": {**changed, **({"min_score": round(min_score, 6)} if min_score is not None else {})},
        "calibration": {
            "images": {"choose": len(choose.images), "held_out": len(held_out.images)}, "seed": seed,
            "grid": [{"option": n, "values": list(v)} for n, v in GRID],
            "choose_corloc": {"given": float(cache[tuple(sorted(base.items()))].mean()), "tried": tried,
                              "chosen": float(hits.mean())},
            "presence_on_choose": claims and {"best_f1": claims["best_f1"], "min_score": min_score},
            "held_out": {"calibrated": asdict(Score.of(held_out, held_tuned, seed)),
                         "given": asdict(Score.of(held_out, held_given, seed)),
                         f"centred box ({int(area * 100)}% of the area)":
                             asdict(Score.of(held_out, B.baseline_centred(held_out, area), seed))},
        },
    }


def read_settings(path: str | Path) -> dict:
    """The options of a settings file (``gradloc calibrate``'s, or the ``settings`` recorded in
    a ``predictions.json`` or ``run.json``) -> ``{option: value}``, each an
    :class:`~gradloc.discovery.config.Options` field, validated; other recorded entries (the
    precision, a model's description) are not options and are left to their own flags."""
    from ..data.annotations import read_json
    from ..discovery.config import Options
    data = read_json(path, "settings file")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a settings file (a JSON object with 'options' or 'settings')")
    options = data.get("options") if data.get("format") == SETTINGS_FORMAT else data.get("settings")
    if not isinstance(options, dict):
        raise ValueError(f"{path}: not a settings file (no 'options' of a {SETTINGS_FORMAT} file, nor the "
                         "'settings' of a predictions.json or run.json)")
    names = {f.name for f in fields(Options)}
    kept = {k: v for k, v in options.items() if k in names}
    try:
        Options(**kept)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    return kept


def write_settings(result: dict, path: str | Path) -> None:
    from ..data.io import atomic_write_text
    atomic_write_text(Path(path), json.dumps(result, indent=2) + "\n")


def summary(result: dict) -> str:
    """The calibration as a few lines of Markdown: what was chosen, and the held-out scores."""
    cal = result["calibration"]
    rows = ["| on the held-out images | CorLoc@0.5 | 95% interval | pairs |", "| --- | ---: | ---: | ---: |"]
    for name, s in cal["held_out"].items():
        rows.append(f"| {name} | {100 * s['corloc']:.1f} | {100 * s['low']:.1f}-{100 * s['high']:.1f} | {s['pairs']} |")
    chosen = ", ".join(f"{k}={v}" for k, v in result["options"].items()) or "the given settings"
    return (f"chosen on {cal['images']['choose']} images (CorLoc {100 * cal['choose_corloc']['given']:.1f} -> "
            f"{100 * cal['choose_corloc']['chosen']:.1f}): {chosen}\n\n" + "\n".join(rows))
