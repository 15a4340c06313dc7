"""Process-parallel map for CPU-bound per-file work (import, check, split)."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import TypeVar

from segflow._progress import ProgressBar

T = TypeVar("T")
R = TypeVar("R")

#: Below this many items the work runs in-process: starting workers costs more than it saves.
MIN_ITEMS_FOR_POOL = 32


def default_workers() -> int:
    """Worker processes for CPU-bound stages: the CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def parallel_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    workers: int | None = None,
    progress: bool = False,
    label: str = "",
) -> Iterator[R]:
    """Yield ``fn(item)`` for every item, in completion order, using worker processes.

    ``fn`` must be a module-level function and must not raise for expected failures: return
    them in the result instead. Closing the iterator early (``break``) cancels pending work.
    Workers start with ``forkserver`` (``spawn`` where unavailable) so that no thread state of
    the parent (progress bars, torch) is forked.
    """
    if workers is not None and workers < 1:
        from segflow.errors import UsageError

        raise UsageError(
            f"--workers {workers}: must be at least 1 (or leave it out for the default)"
        )
    n_workers = workers or default_workers()
    with ProgressBar(progress, label, len(items)) as bar:
        if n_workers <= 1 or len(items) < MIN_ITEMS_FOR_POOL:
            for item in items:
                result = fn(item)
                bar.advance()
                yield result
            return
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        pool = ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx)
        try:
            pending: set[Future[R]] = {pool.submit(fn, item) for item in items}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    bar.advance()
                    yield fut.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
