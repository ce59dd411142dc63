"""Fault injection for the Ray engine's tests, kept out of the product: an actor that runs
gradloc's :class:`~gradloc.engines.ray_actors.BatchWorker` after the faults its environment asks for.

``GRADLOC_RAY_SLOW_BATCH=K``: the actor that runs batch K sleeps a second first (batches then
finish out of order). ``GRADLOC_RAY_KILL_ONCE=FILE``: the first call that creates FILE ends its
process mid-task (Ray restarts the actor and retries the batch).
"""
import os
import time

from gradloc.engines.ray_actors import BatchWorker


class FaultyBatchWorker(BatchWorker):
    def __call__(self, batch: dict) -> dict:
        slow = os.environ.get("GRADLOC_RAY_SLOW_BATCH")
        if slow is not None and int(slow) in [int(k) for k in batch["batch"]]:
            time.sleep(1.0)
        marker = os.environ.get("GRADLOC_RAY_KILL_ONCE")
        if marker:
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.close(fd)
                os._exit(1)
        return super().__call__(batch)
