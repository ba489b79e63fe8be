"""A bounded pool for model inference: a few workers, a short queue, and "busy" beyond it.

Also the admission limit on live streams (dictations), which need the pool every second.
Courtesy work (partial transcripts, which the next final replaces) runs on the same workers
but is not counted as load: it only starts when a worker is free, so admitting a stream
needs room for what streams must do (window checks, final decisions and transcripts).
"""
from __future__ import annotations

import threading
import time
from collections import deque
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
        self._calls: deque[tuple[float, float]] = deque()  # (end, seconds) of recent required calls
        self._running: dict[int, float] = {}  # thread id -> start of the required call it runs

    @property
    def pending(self) -> int:
        """Return how many calls are running or waiting."""
        return self._pending

    def courtesy_room(self) -> bool:
        """Return True when courtesy work may start now: it would leave a worker free for required work.

        A running call cannot be stopped, so courtesy work that took the last free worker would
        hold up the next window check or final for as long as it runs (a draft of a long
        utterance: half a second). With one worker, only an idle pool has room.
        """
        return self._pending < max(1, self.workers - 1)

    def submit(self, fn: Callable[..., T], *args, **kwargs) -> Future:
        """Queue ``fn(*args, **kwargs)``; raise Busy at once when the pool is full."""
        return self._submit(True, fn, *args, **kwargs)

    def submit_courtesy(self, fn: Callable[..., T], *args, **kwargs) -> Future:
        """Queue courtesy work, which ``utilisation`` does not count; raise Busy at once when the pool is full."""
        return self._submit(False, fn, *args, **kwargs)

    def _submit(self, required: bool, fn, *args, **kwargs) -> Future:
        if not self._slots.acquire(blocking=False):
            raise Busy(f"all {self.workers} inference workers are busy and {self.capacity - self.workers} calls are waiting")
        with self._count_lock:
            self._pending += 1
        try:
            future = self._executor.submit(self._timed, required, fn, *args, **kwargs)
        except BaseException:
            self._release()
            raise
        # A call cancelled before it ran never reaches _timed, which frees its place otherwise.
        future.add_done_callback(lambda done: done.cancelled() and self._release())
        return future

    def utilisation(self, seconds: float = 5.0) -> float:
        """Return the share of the workers' time spent in required calls over the last ``seconds`` (0..1)."""
        now = time.monotonic()
        since = now - seconds
        with self._count_lock:
            while self._calls and self._calls[0][0] < now - 60:
                self._calls.popleft()
            busy = sum(min(length, end - since) for end, length in self._calls if end > since)
            busy += sum(now - max(start, since) for start in self._running.values())
        return min(1.0, busy / (seconds * self.workers))

    def _timed(self, required: bool, fn, *args, **kwargs):
        me = threading.get_ident()
        started = time.monotonic()
        if required:
            with self._count_lock:
                self._running[me] = started
        try:
            return fn(*args, **kwargs)
        finally:
            ended = time.monotonic()
            if required:
                with self._count_lock:
                    del self._running[me]
                    self._calls.append((ended, ended - started))
            # Counted free before the caller wakes (not in a done callback after it), so that a
            # caller that looks at ``pending`` right after its result sees its own call gone.
            self._release()

    def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run ``fn`` on the pool and return its result (raising Busy when full)."""
        return self.submit(fn, *args, **kwargs).result()

    def shutdown(self) -> None:
        """Stop accepting work and wait for running calls."""
        self._executor.shutdown(wait=True)

    def _release(self) -> None:
        with self._count_lock:
            self._pending -= 1
        self._slots.release()


class StreamSlots:
    """Admit live streams while the pool keeps up: at most ``limit`` at once, and beyond ``floor``
    only while the workers were busy less than ``max_utilisation`` of the last seconds.

    The capacity is thus measured as the streams run (the CPU, its other load, the Whisper model,
    the length of what people say) instead of fixed; the next stream is refused rather than
    slowing all.
    """

    def __init__(self, limit: int, pool: InferencePool | None = None, floor: int | None = None,
                 max_utilisation: float = 0.7, window: float = 5.0):
        self.limit = max(1, limit)
        self.floor = self.limit if pool is None else max(1, min(self.limit, floor or pool.workers))
        self.pool, self.max_utilisation, self.window = pool, max_utilisation, window
        self.open = 0  # streams holding a slot
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        """Take a slot; return False at once when all are taken or the pool has no room for one more."""
        with self._lock:
            if self.open >= self.limit:
                return False
            if self.open >= self.floor and self.pool is not None:
                # Each live stream adds about an equal share of the work: admit one more only
                # if the streams open now leave room for it.
                if self.pool.utilisation(self.window) * (self.open + 1) / self.open > self.max_utilisation:
                    return False
            self.open += 1
            return True

    def room(self) -> int:
        """Return how many more streams acquire would admit now, one after another."""
        with self._lock:
            if self.pool is None:
                return max(0, self.limit - self.open)
            load, count, n = self.pool.utilisation(self.window), 0, self.open
            while n < self.limit and (n < self.floor or load * (n + 1) / n <= self.max_utilisation):
                count, n = count + 1, n + 1
            return count

    def release(self) -> None:
        """Give a slot back."""
        with self._lock:
            self.open -= 1
