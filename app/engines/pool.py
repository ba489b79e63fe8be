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


# Stream-seconds below this over the history measure no per-stream cost yet.
MIN_STREAM_SECONDS = 10.0


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
        self._local = threading.local()  # on a worker thread: whether the call it runs is courtesy work

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

    def in_courtesy_call(self) -> bool:
        """Return True when called from courtesy work on one of the pool's workers."""
        return getattr(self._local, "courtesy", False)

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
        self._local.courtesy = not required
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
    only while the workers have room for one more stream's work.

    A stream's work is measured as the streams run (the CPU, its other load, the Whisper model,
    the length of what people say) instead of fixed: the required busy time of the workers per
    second of stream held open over the last ``history`` seconds. One more stream is admitted
    while the streams open and it would keep the workers busy at most ``max_utilisation`` of the
    time, and while they are not that busy already over the last ``window`` seconds; the next
    stream is refused rather than slowing all. Measured per stream rather than from the current
    load alone, a burst of streams that arrive together is not admitted on the strength of a
    moment when few were open.
    """

    def __init__(self, limit: int, pool: InferencePool | None = None, floor: int | None = None,
                 max_utilisation: float = 0.7, window: float = 5.0, history: float = 30.0,
                 min_held: float = MIN_STREAM_SECONDS):
        self.limit = max(1, limit)
        self.floor = self.limit if pool is None else max(1, min(self.limit, floor or pool.workers))
        self.pool, self.max_utilisation, self.window = pool, max_utilisation, window
        self.history = max(window, min(history, 60.0))  # the pool remembers calls for 60 s
        self.min_held = min_held
        self.open = 0  # streams holding a slot
        self._lock = threading.Lock()
        # (time, stream-seconds held so far, streams open from then on): enough to integrate back.
        self._marks: deque[tuple[float, float, int]] = deque([(time.monotonic(), 0.0, 0)])

    def acquire(self) -> bool:
        """Take a slot; return False at once when all are taken or the pool has no room for one more."""
        with self._lock:
            if self.open >= self.limit:
                return False
            if self.open >= self.floor and self.pool is not None and not self._fits(self.open + 1, *self._load()):
                return False
            self._mark(self.open + 1)
            return True

    def room(self) -> int:
        """Return how many more streams acquire would admit now, one after another."""
        with self._lock:
            if self.pool is None:
                return max(0, self.limit - self.open)
            load, count, n = self._load(), 0, self.open
            while n < self.limit and (n < self.floor or self._fits(n + 1, *load)):
                count, n = count + 1, n + 1
            return count

    def release(self) -> None:
        """Give a slot back."""
        with self._lock:
            self._mark(self.open - 1)

    def per_stream(self) -> float | None:
        """Return the workers' required busy seconds per second of stream over the last ``history`` s (None: too few)."""
        with self._lock:
            return self._load()[1]

    def _load(self) -> tuple[float, float | None]:
        """Return the pool's utilisation over ``window``, and the busy seconds per stream-second over ``history``."""
        now = time.monotonic()
        held = self._held_since(now - self.history, now)
        busy = self.pool.utilisation(self.history) * self.history * self.pool.workers
        # Too few stream-seconds measure nothing (a first stream, or streams after a long pause).
        return self.pool.utilisation(self.window), (busy / held if held >= self.min_held else None)

    def _fits(self, streams: int, load: float, per_stream: float | None) -> bool:
        """Return True when ``streams`` open at once leave the workers within max_utilisation."""
        if per_stream is None:
            # Nothing measured per stream yet: each open stream is taken to add an equal share of the load now.
            return load * streams / max(1, streams - 1) <= self.max_utilisation
        return load <= self.max_utilisation and streams * per_stream <= self.max_utilisation * self.pool.workers

    def _mark(self, open_after: int) -> None:
        now = time.monotonic()
        at, held, open_before = self._marks[-1]
        self._marks.append((now, held + open_before * (now - at), open_after))
        self.open = open_after
        while len(self._marks) > 1 and self._marks[1][0] < now - 60:
            self._marks.popleft()

    def _held_since(self, since: float, now: float) -> float:
        """Return the stream-seconds held between ``since`` and ``now``."""
        def held_at(moment: float) -> float:
            at, held, open_from = self._marks[0]
            for mark in self._marks:
                if mark[0] > moment:
                    break
                at, held, open_from = mark
            return held + open_from * max(0.0, moment - at)

        return held_at(now) - held_at(max(since, self._marks[0][0]))
