"""The one loop over image files: decode in workers, run a batch step, report progress.

``gradloc localize``, ``gradloc evaluate``, the CAM baselines, ``gradloc sensitivity`` and the
benchmark scripts all go through :func:`run_steps` (the generator's through :func:`run_files`),
so batching, skipping and progress behave the same everywhere. The Ray engine's actors run
:func:`run_batch_of_files`, the same decoding and step for one batch.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from tqdm import tqdm

from ..data.io import ImageFiles, iter_batches
from ..data.preprocess import DEFAULT_MAX_PIXELS, INPUT_SIZE

Step = Callable  # (uint8 [B, 3, S, S], sizes [(h, w)], class specs, working images) -> one output per image


def _malloc_trim():
    """glibc's ``malloc_trim``, or None on a C library without it (macOS, musl, Windows)."""
    try:  # the C library the process already has (no search, no subprocess)
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Give the heap pages freed by the last batch back to the system. glibc keeps them, and
    batches of varying sizes (candidates, views, records) fragment its heap, so without this the
    peak memory of a run creeps up with the number of images; with it, it stays flat (measured in
    BENCHMARKS.md). A few milliseconds a batch; nothing where the C library has no malloc_trim."""
    if _TRIM is not None:
        _TRIM(0)


@dataclass(frozen=True)
class Batching:
    """How files become batches: ``batch_size`` images a step, each decoded (refused above
    ``max_pixels``) to the model's ``input_size`` and, with ``keep_work``, kept at working
    resolution too."""

    batch_size: int = 64
    max_pixels: int = DEFAULT_MAX_PIXELS
    input_size: int = INPUT_SIZE
    keep_work: bool = False

    @classmethod
    def of(cls, gen) -> "Batching":
        """A :class:`~gradloc.discovery.pipeline.ProposalGenerator`'s batching."""
        return cls(gen.batch_size, gen.max_pixels, gen.spec.input_size, gen.keeps_work)


def _run_decoded(batch: list[tuple], classes, step) -> tuple[list[tuple], list[tuple[int, str]]]:
    good = [b for b in batch if b[1] is not None]
    skipped = [(i, reason) for i, _, _, reason, _ in batch if reason is not None]
    done = []
    if good:
        outputs = step(torch.stack([b[1] for b in good]), [b[2] for b in good],
                       [classes(b[0]) for b in good], [b[4] for b in good])
        done = [(b[0], b[1], b[2], out) for b, out in zip(good, outputs)]
    return done, skipped


def run_steps(files: Sequence[Path], step: Step, batching: Batching, classes: Callable[[int], object] | None = None,
              workers: int | None = None, desc: str = "gradloc",
              progress: bool = True) -> Iterator[tuple[list[tuple], list[tuple[int, str]]]]:
    """Run ``step`` over ``files`` in batches.

    ``classes(i)``: the class spec of file ``i`` (default None for all). Yields per batch
    ``(done, skipped)``: ``done`` is ``[(i, x_uint8, size, output)]``, ``output`` the step's
    result for that image (a step returns one per image), ``skipped`` is ``[(i, reason)]``.
    """
    classes = classes or (lambda i: None)
    with tqdm(total=len(files), unit="img", desc=desc, disable=None if progress else True) as bar:
        for batch in iter_batches(list(files), batching.batch_size, workers, batching.max_pixels,
                                  batching.keep_work, batching.input_size):
            done, skipped = _run_decoded(batch, classes, step)
            bar.update(len(batch))
            yield done, skipped
            del done, skipped, batch
            release_freed_memory()


def run_files(gen, files: Sequence[Path], classes: Callable[[int], object], workers: int | None = None,
              desc: str = "gradloc", progress: bool = True) -> Iterator[tuple[list[tuple], list[tuple[int, str]]]]:
    """:func:`run_steps` of the generator ``gen`` (its ``run_batch``, with its batching)."""
    return run_steps(files, gen.run_batch, Batching.of(gen), classes, workers, desc, progress)


def run_batch_of_files(gen, files: Sequence[Path], classes: Callable[[int], object]) -> tuple[list[tuple], list[tuple[int, str]]]:
    """One batch of files, decoded here in order (what the Ray engine's actors run): the
    ``(done, skipped)`` that :func:`run_files` yields for the same files as one batch."""
    b = Batching.of(gen)
    reader = ImageFiles(list(files), b.max_pixels, b.keep_work, b.input_size)
    out = _run_decoded([reader[i] for i in range(len(files))], classes, gen.run_batch)
    release_freed_memory()
    return out


def skipped_files(files: Sequence[Path], skipped: list[tuple[int, str]]) -> list[dict]:
    """``[(i, reason)]`` -> the ``[{"file", "reason"}]`` records reports list."""
    return [{"file": str(files[i]), "reason": reason} for i, reason in skipped]
