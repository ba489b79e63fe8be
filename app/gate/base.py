"""What every voice session shares: its context, its errors, model calls on the pool, user checks."""
from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import SessionError
from . import store
from ..observe import metrics
from .policy import Policy
from .store import Audit
from ..engines.pool import Busy
from ..audio.vad import SAMPLE_RATE

if TYPE_CHECKING:
    from ..engines.runtime import Engines

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """What a session needs from its surroundings."""

    engines: Engines
    policy: Policy
    secret_key: str
    protocol: str
    client_addr: str | None = None
    # A signed-in admin (same-origin) made the request: may see scores and user standing.
    admin: bool = False
    # The user whose sign-in cookie came with a same-origin request (the browser's pages), if any.
    signed_in_user: str | None = None

    def audit(self, request_id: str, kind: str, decision: str, **fields) -> Audit:
        """Return an audit record of this context's protocol and client."""
        return Audit(request_id, kind, self.protocol, decision, client_addr=self.client_addr, **fields)


def new_request_id() -> str:
    """Return a fresh id for one request or session."""
    return uuid.uuid4().hex


def run_model(ctx: Context, fn, *args):
    """Run a model call on the pool; a full pool ends the session with ``busy``."""
    try:
        with metrics.timed_model_call(fn):
            return ctx.engines.pool.run(fn, *args)
    except Busy as error:
        raise _busy(error) from None


def start_model(ctx: Context, fn, *args) -> Future:
    """Start a model call on the pool and return its future, to do other work meanwhile; ``busy`` as run_model."""
    def call():
        with metrics.timed_model_call(fn):
            return fn(*args)
    try:
        return ctx.engines.pool.submit(call)
    except Busy as error:
        raise _busy(error) from None


def _busy(error: Busy) -> SessionError:
    return SessionError("busy", f"the server is at capacity ({error}); try again in a moment")


def embed_window(ctx: Context, audio: np.ndarray) -> np.ndarray:
    """Embed a voice-check window, in one model call with other live streams' windows; ``busy`` as run_model."""
    windows = getattr(ctx.engines, "windows", None)
    if windows is None or windows.pool is not ctx.engines.pool or windows.speaker is not ctx.engines.speaker:
        return run_model(ctx, ctx.engines.speaker.embed, audio)
    try:
        with metrics.timed_model_call(ctx.engines.speaker.embed):
            return windows.embed(audio)
    except Busy as error:
        raise _busy(error) from None


def seconds(samples: int) -> float:
    return round(samples / SAMPLE_RATE, 3)


# --------------------------------------------------------------------------- checks

def user_problem(ctx: Context, name: str, request_id: str, kind: str, *, limit: bool = True) -> str | None:
    """Return why ``name``'s voice cannot be checked now (audited), or None.

    ``locked`` (this client failed too often for ``name``: see store.client_wait; only
    with ``limit``, which a caller signed in as ``name`` by token or key turns off),
    ``unknown_user``, ``disabled`` or ``not_enrolled``.
    """
    if limit and store.client_wait(name, ctx.client_addr, ctx.policy):
        problem = "locked"
    else:
        problem = standing(store.find_user(name))
    if problem is None:
        return None
    store.record(ctx.audit(request_id, kind, problem, claimed_user=None if problem == "unknown_user" else name,
                           reason=problem))
    return problem


def standing(user) -> str | None:
    """Return why ``user`` (None: no such user) cannot be verified: unknown_user, disabled, not_enrolled; or None."""
    if user is None:
        return "unknown_user"
    if not user.active:
        return "disabled"
    if user.voiceprint is None:
        return "not_enrolled"
    return None


PROBLEM_MESSAGES = {
    "unknown_user": "there is no user by that name",
    "disabled": "this user is disabled",
    "not_enrolled": "this user has not enrolled a voice yet",
    "locked": "too many failed voice attempts from your address; wait and try again",
}


class ClipBuffer:
    """Collect one clip or utterance, refusing more than ``max_seconds`` of it."""

    def __init__(self, max_seconds: float, what: str):
        self.max_samples, self.max_seconds, self.what = int(max_seconds * SAMPLE_RATE), max_seconds, what
        self._chunks: list[np.ndarray] = []
        self._samples = 0
        self._arrived: float | None = None
        # The longest wait between two pieces of this clip: a live client that stalls (a busy
        # browser or machine) delivers its audio late and in bursts.
        self.longest_gap = 0.0

    def add(self, samples: np.ndarray) -> None:
        """Take more audio; raise ``too_long`` past the limit."""
        self._samples += samples.size
        if self._samples > self.max_samples:
            raise SessionError("too_long", f"{self.what} may last at most {self.max_seconds:g} s")
        now = time.monotonic()
        if self._arrived is not None:
            self.longest_gap = max(self.longest_gap, now - self._arrived)
        self._arrived = now
        self._chunks.append(samples)

    @property
    def samples(self) -> int:
        """Return how many samples were collected."""
        return self._samples

    def peek(self) -> np.ndarray:
        """Return the audio collected so far, keeping it."""
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0] if self._chunks else np.zeros(0, dtype=np.float32)

    def take(self) -> np.ndarray:
        """Return the audio collected and start empty again."""
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.float32)
        self._chunks, self._samples, self._arrived, self.longest_gap = [], 0, None, 0.0
        return audio
