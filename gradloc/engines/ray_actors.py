"""The Ray Data engine: the same batches as the local engine, run by a pool of actors.

The driver forms the batches exactly as :func:`gradloc.engines.local.run_files` does (consecutive runs
of ``batch_size`` files, bad files included), so batch-dependent results (SmoothGrad's seeded
noise) are the same. Each batch is one row of a Ray Dataset; a stateful actor pool
(``map_batches`` with an ``ActorPoolStrategy``) holds one :class:`~gradloc.discovery.pipeline.ProposalGenerator`
per actor, decodes the batch's files with gradloc's own opener (not Ray's readers, which rename
files, drop names starting with ``_`` or ``.`` and decode with plain PIL) and returns the batch's
results pickled. ``preserve_order`` makes the driver receive batches in order, and it writes
them with the local engine's writer. Ray retries a failed or lost actor task; a batch's result
depends only on its files, so a retried batch gives the same bytes. A batch that keeps failing
ends the run with Ray's error (no ``max_errored_blocks``): nothing is dropped silently.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: ``address`` ``local`` (start a one-machine cluster), ``auto`` (the
    running cluster; ``RAY_ADDRESS`` also works) or ``HOST:PORT``; ``actors`` in the pool, CPUs
    and GPUs per actor; ``threads`` torch threads per actor (None: Ray's share, ``cpus``)."""

    address: str = "local"
    actors: int = 2
    cpus: float = 1.0
    gpus: float = 0.0
    threads: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.actors, bool) or not isinstance(self.actors, int) or self.actors < 1:
            raise ValueError(f"actors must be an integer >= 1, got {self.actors!r}")
        if not self.cpus > 0 or not self.gpus >= 0:
            raise ValueError(f"CPUs per actor must be > 0 and GPUs >= 0, got {self.cpus!r}, {self.gpus!r}")


def init_ray(address: str) -> None:
    """Connect to (or, for ``local``, start) a cluster once per process."""
    try:
        import ray
    except ImportError:
        raise ValueError("--engine ray needs Ray: pip install \"gradloc[ray]\"") from None
    if ray.is_initialized():
        return
    target = os.environ.get("RAY_ADDRESS") if address == "local" and os.environ.get("RAY_ADDRESS") else address
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.init(address=None if target == "local" else target, **kwargs)


class BatchWorker:
    """One actor: a generator built once from the driver's model and settings; each call
    runs whole batches (rows ``{"batch", "start", "paths"}``) and returns them pickled."""

    def __init__(self, model, config: dict) -> None:
        import ray
        import torch

        from ..discovery.pipeline import ProposalGenerator
        from ..models.runtime import Runtime
        if isinstance(model, ray.ObjectRef):  # Ray Data passes constructor arguments as given
            model = ray.get(model)
        if config["threads"]:
            torch.set_num_threads(int(config["threads"]))
        runtime = Runtime.build(model, device=config["device"], **config["runtime"])
        self.gen = ProposalGenerator(runtime, **config["options"])

    def __call__(self, batch: dict) -> dict:
        from .local import run_batch_of_files
        payloads = []
        for start, paths, specs in zip(batch["start"], batch["paths"], batch["classes"]):
            files = [Path(os.fsdecode(bytes(p))) for p in paths]
            specs = pickle.loads(specs)
            done, skipped = run_batch_of_files(self.gen, files, lambda i: specs[i])
            shift = int(start)
            payloads.append(pickle.dumps(([(i + shift, *rest) for i, *rest in done],
                                          [(i + shift, r) for i, r in skipped])))
        return {"batch": np.asarray(batch["batch"]), "payload": np.array(payloads, dtype=object)}


def run_files_ray(gen, files: Sequence[Path], classes, options: RayOptions, desc: str = "gradloc",
                  progress: bool = True) -> Iterator[tuple[list[tuple], list[tuple[int, str]]]]:
    """:func:`gradloc.engines.local.run_files` on a Ray cluster: the same ``(done, skipped)`` per batch,
    in the same order. ``classes(i)``: the class spec of file ``i``, sent with its batch."""
    import copy

    from tqdm import tqdm

    init_ray(options.address)  # first: without Ray installed this is a one-line error
    import ray
    config = {"device": "cuda" if options.gpus > 0 else "cpu", "runtime": gen.runtime.settings(),
              "options": asdict(gen.options), "threads": options.threads or max(1, int(options.cpus))}
    # the model travels once, through the object store (workers need the same gradloc version)
    model = ray.put(copy.deepcopy(gen.model).cpu())
    b = gen.batch_size
    items = [{"batch": k, "start": s, "paths": [os.fsencode(str(f)) for f in files[s:s + b]],
              "classes": pickle.dumps([classes(i) for i in range(s, min(s + b, len(files)))])}
             for k, s in enumerate(range(0, len(files), b))]
    if not items:
        return
    import logging
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # gradloc shows its own progress
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        BatchWorker, fn_constructor_args=(model, config), batch_size=1, batch_format="numpy",
        # Ray Data's actor pools restart dead actors and retry their tasks without limit by
        # default (max_restarts / max_task_retries -1), so a retried batch gives the same bytes
        compute=ray.data.ActorPoolStrategy(size=options.actors), num_cpus=options.cpus, num_gpus=options.gpus)
    with tqdm(total=len(files), unit="img", desc=desc, disable=None if progress else True) as bar:
        for row in ds.iter_rows():
            done, skipped = pickle.loads(row["payload"])
            bar.update(len(done) + len(skipped))
            yield done, skipped


def engine_runner(engine: str, options: RayOptions | None) -> Callable:
    """The batch loop of an engine, with :func:`gradloc.engines.local.run_files`'s signature
    ``(gen, files, classes, workers, desc=...)``."""
    from .local import run_files
    if engine == "local":
        return run_files
    if engine != "ray":
        raise ValueError(f"unknown engine {engine!r}; choose local or ray")
    opts = options or RayOptions()

    def run(gen, files, classes, workers=None, desc="gradloc"):
        return run_files_ray(gen, files, classes, opts, desc=desc)
    return run
