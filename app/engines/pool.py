"""A bounded pool for model inference: a few workers, a short queue, and "busy" beyond it.

Also the admission limit on live streams (dictations), which need the pool every second.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")


class Busy(RuntimeError):
    """Every worker is occupied and the queue is full; the caller should try again later."""


class InferencePool:
    """Run model calls on ``workers`` threads, with at most ``queue`` more waiting."""

    def __init__(self, workers: int, queue: int):
        self.workers = max(1, workers)
        self.capacity = self.workers + max(0, queue)
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="inference")
        self._slots = threading.BoundedSemaphore(self.capacity)
        self._pending = 0
        self._count_lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Return how many calls are running or waiting."""
        return self._pending

    def submit(self, fn: Callable[..., T], *args, **kwargs) -> Future:
        """Queue ``fn(*args, **kwargs)``; raise Busy at once when the pool is full."""
        if not self._slots.acquire(blocking=False):
            raise Busy(f"all {self.workers} inference workers are busy and {self.capacity - self.workers} calls are waiting")
        with self._count_lock:
            self._pending += 1
        future = self._executor.submit(fn, *args, **kwargs)
        future.add_done_callback(self._release)
        return future

    def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run ``fn`` on the pool and return its result (raising Busy when full)."""
        return self.submit(fn, *args, **kwargs).result()

    def shutdown(self) -> None:
        """Stop accepting work and wait for running calls."""
        self._executor.shutdown(wait=True)

    def _release(self, _future: Future) -> None:
        with self._count_lock:
            self._pending -= 1
        self._slots.release()


class StreamSlots:
    """Admit at most ``limit`` live streams at once; the next is refused rather than slowing all."""

    def __init__(self, limit: int):
        self.limit = max(1, limit)
        self.open = 0  # streams holding a slot
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        """Take a slot; return False at once when all are taken."""
        with self._lock:
            if self.open >= self.limit:
                return False
            self.open += 1
            return True

    def release(self) -> None:
        """Give a slot back."""
        with self._lock:
            self.open -= 1
