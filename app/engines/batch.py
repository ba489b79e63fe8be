"""One ECAPA call for the voice-check windows of every live stream.

Each live dictation embeds a 2 s window every second. Embedded one by one, 8 streams cost 8
model calls a second; queued here, the windows that arrive while a call runs go together
into the next one (equal lengths, each normalised on its own, so every embedding is the one
it would be alone: SpeakerEncoder.embed_many).
"""
from __future__ import annotations

import threading
from collections import defaultdict
from concurrent.futures import Future

import numpy as np

from .pool import Busy, InferencePool

# More windows than this wait for the next call, so that one call stays short.
MAX_BATCH = 16


class WindowBatcher:
    """Embed windows from many threads, batching those that wait at the same time into one pool call."""

    def __init__(self, speaker, pool: InferencePool):
        self.speaker, self.pool = speaker, pool
        self._lock = threading.Lock()
        self._waiting: list[tuple[np.ndarray, Future]] = []
        self._scheduled = False
        self.calls = 0  # model calls made, for the benchmark
        self.windows = 0  # windows embedded

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """Return ``audio``'s unit embedding (blocking); raise Busy when the pool is full."""
        future: Future = Future()
        with self._lock:
            self._waiting.append((audio, future))
            schedule, self._scheduled = not self._scheduled, True
        if schedule:
            self._submit_flush()
        return future.result()

    def _submit_flush(self) -> None:
        """Queue a model call for the waiting windows; when the pool is full, every waiter gets Busy."""
        try:
            self.pool.submit(self._flush)
        except Busy as error:
            with self._lock:
                waiting, self._waiting, self._scheduled = self._waiting, [], False
            for _, waiter in waiting:
                waiter.set_exception(Busy(str(error)))

    def _flush(self) -> None:
        with self._lock:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            more = bool(self._waiting)
            self._scheduled = more
        if more:  # the rest go in the next call, queued behind this one
            self._submit_flush()
        groups: dict[int, list[tuple[np.ndarray, Future]]] = defaultdict(list)
        for audio, future in batch:
            groups[audio.size].append((audio, future))
        for items in groups.values():
            try:
                vectors = self.speaker.embed_many([audio for audio, _ in items])
            except Exception as error:  # the callers raise it, each in its own session
                for _, future in items:
                    future.set_exception(error)
                continue
            self.calls += 1
            self.windows += len(items)
            for (_, future), vector in zip(items, vectors):
                future.set_result(vector)
