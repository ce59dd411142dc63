"""The one loop over image files: decode in workers, run a batch step, report progress.

``gradloc localize``, ``gradloc evaluate`` and the benchmark scripts all go through
:func:`run_files`, so batching, skipping and progress behave the same everywhere.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from tqdm import tqdm

from .io import iter_batches


def run_batch_of_files(gen, files: Sequence[Path], classes: Callable[[int], object],
                       step: Callable | None = None, keep_work: bool | None = None) -> tuple[list[tuple], list[tuple[int, str]]]:
    """One batch of files, decoded here in order (what the Ray engine's actors run): the
    ``(done, skipped)`` that :func:`run_files` yields for the same files as one batch."""
    from .io import ImageFiles
    keep = gen.keeps_work if keep_work is None else keep_work
    reader = ImageFiles(list(files), gen.max_pixels, gen.options.scales, keep, gen.spec.input_size)
    return _run_decoded(gen, [reader[i] for i in range(len(files))], classes, step or gen.run_batch)


def _run_decoded(gen, batch: list[tuple], classes, step) -> tuple[list[tuple], list[tuple[int, str]]]:
    good = [b for b in batch if b[1] is not None]
    skipped = [(i, reason) for i, _, _, reason, _ in batch if reason is not None]
    done = []
    if good:
        outputs = step(torch.stack([b[1] for b in good]), [b[2] for b in good],
                       [classes(b[0]) for b in good], [b[4] for b in good])
        done = [(b[0], b[1], b[2], out) for b, out in zip(good, outputs)]
    return done, skipped


def run_files(gen, files: Sequence[Path], classes: Callable[[int], object], workers: int | None = None,
              step: Callable | None = None, keep_work: bool | None = None, desc: str = "gradloc",
              progress: bool = True) -> Iterator[tuple[list[tuple], list[tuple[int, str]]]]:
    """Run ``gen`` over ``files`` in batches of ``gen.batch_size``.

    ``classes(i)``: the class spec of file ``i``. ``step(x_uint8, sizes, specs, work)``: what a
    batch runs (default ``gen.run_batch``); ``keep_work`` overrides ``gen.keeps_work``.
    Yields per batch ``(done, skipped)``: ``done`` is ``[(i, x32, size, output)]``, ``output`` the
    step's result for that image (a step returns one per image), ``skipped`` is ``[(i, reason)]``.
    """
    step = step or gen.run_batch
    keep = gen.keeps_work if keep_work is None else keep_work
    with tqdm(total=len(files), unit="img", desc=desc, disable=None if progress else True) as bar:
        for batch in iter_batches(list(files), gen.batch_size, workers, gen.max_pixels, gen.options.scales, keep,
                                  gen.spec.input_size):
            done, skipped = _run_decoded(gen, batch, classes, step)
            bar.update(len(batch))
            yield done, skipped
