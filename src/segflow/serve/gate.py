"""Bounded concurrency for predictions: a few run, a few wait, the rest are turned away at once.

Predictions run in a small thread pool of their own (``max_concurrency`` threads), so the event
loop keeps answering ``/health`` and the other requests while models run, and uploads never wait
behind predictions for a thread. Admission is counted under a lock: a request is admitted while
fewer than ``max_concurrency + max_queue`` are admitted; otherwise :class:`SaturatedError` is raised
(the app answers 503 with ``Retry-After``). A slot is freed when its work really ends, also when
the client has already been told it timed out, so the pool never runs more than its size.
Nothing here is bound to an event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class SaturatedError(Exception):
    """Every running and waiting slot is taken."""


class GateTimeoutError(Exception):
    """The work did not finish in time; ``started`` tells whether it had left the queue."""

    def __init__(self, started: bool) -> None:
        super().__init__("started" if started else "queued")
        self.started = started


class Gate:
    """Admission control over a private thread pool.

    Args:
        running: work items run at once (the pool's size).
        queue: work items that may wait for a free thread.
    """

    def __init__(self, running: int, queue: int) -> None:
        self.running = running
        self.capacity = running + queue
        self._lock = threading.Lock()
        self._admitted = 0
        self._pool: ThreadPoolExecutor | None = None

    @property
    def admitted(self) -> int:
        """Work items running or waiting now."""
        with self._lock:
            return self._admitted

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Start ``fn`` in the pool, or raise :class:`SaturatedError` when no slot is free."""
        with self._lock:
            if self._admitted >= self.capacity:
                raise SaturatedError
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.running, thread_name_prefix="segflow-predict")
            future = self._pool.submit(fn)
            self._admitted += 1
        future.add_done_callback(self._release)
        return future

    async def run(self, fn: Callable[[], T], timeout: float) -> T:
        """Run ``fn`` in the pool and await its result for at most ``timeout`` seconds.

        Raises:
            SaturatedError: no slot free.
            GateTimeoutError: too slow; work still queued is cancelled, running work finishes unobserved.
        """
        future = self.submit(fn)
        waiter = asyncio.wrap_future(future)
        try:
            done, _ = await asyncio.wait({waiter}, timeout=timeout)
        except asyncio.CancelledError:  # the request itself was cancelled (shutdown)
            future.cancel()
            waiter.cancel()
            raise
        if waiter in done:
            return waiter.result()
        if future.cancel():
            raise GateTimeoutError(started=False)
        waiter.cancel()
        raise GateTimeoutError(started=True)

    def close(self) -> None:
        """Cancel waiting work and let the threads end (a later submit starts a new pool)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _release(self, _: Future[T]) -> None:
        with self._lock:
            self._admitted -= 1
