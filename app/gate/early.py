"""A streamed voice login's work while the person speaks: the speaker models on what was said so far.

Whenever STEP_SECONDS more audio has come and the inference pool has room for courtesy work,
everything so far is worked on (``prefix``): ECAPA's frame features, and CAM++'s embedding
where the models are fused. After ``stop``, only ECAPA's frames after the newest prefix are left
(``embed_after``): about a third of ECAPA's work for a 5 s utterance, and none of CAM++'s; a
prefix still running is cancelled.

That estimate is close to the whole utterance's embedding but not equal to it: a prefix's
features are normalised on the beginning's statistics, and CAM++ has not heard the last
fraction of a second. Only an accept far enough from every threshold stands (``settled``); a
refusal or a close call is made again on the whole utterance, so that decisions are the whole
utterance's (bench/early.py measures both on speech-more: docs/benchmarks.md).
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..audio.vad import SAMPLE_RATE
from ..engines.pool import Busy
from ..engines.speaker import Cancel, Cancelled
from .decide import Match
from .policy import Policy

logger = logging.getLogger(__name__)

# Below this much audio a prefix saves little (its last frames and the context are redone).
MIN_SECONDS = 2.0
# How much more audio starts the next prefix (each covers everything so far): with a lone
# login, one prefix after another, each ending a pass (about 0.1 s) before the audio.
STEP_SECONDS = 0.15


@dataclass(frozen=True)
class Bands:
    """How far an estimate may move each score: the raw cosine to the voiceprint, its calibrated
    score, and the highest cosine to the user's own clips (which tells a replayed recording)."""

    raw: float
    calibrated: float
    replay: float


# The largest changes the estimate made on speech-more (bench/early.py, docs/benchmarks.md) with
# prefixes ending up to the given seconds before the utterance, fused models: ECAPA's frames from
# the prefix and the rest, CAM++'s embedding of the prefix alone (each band at least the one before
# it). They also covered ECAPA alone, whose changes were smaller (raw 0.048 and 0.057, calibrated
# 0.65, measured 2026-12-01 with 0.5 s redone each way; not measured again with 0.3 s). A decision
# within MARGIN times these of a threshold is a close call. 0.6 s was added on 2026-12-07: on a
# slower CPU (Zen 3 EPYC) a prefix pass takes longer, so the newest finished prefix often ends
# 0.45-0.6 s before the end of speech, and such logins were otherwise decided on the whole utterance
# (3 of 20 in interleaved pairs, 120-290 ms later). Measured again when ECAPA's redone frames went
# from 0.5 s to 0.3 s each way (speaker.PREFIX_RIGHT): the 0.3 and 0.45 s changes grew a little (raw
# 0.0516, calibrated 0.979; replay 0.0496), 0.6 s's did not. A prefix later than the last is not
# used: its estimate strays further, and most of the work would be left (a client that sends faster
# than it speaks).
MEASURED_CHANGES = ((0.3, Bands(0.052, 0.98, 0.030)), (0.45, Bands(0.061, 0.96, 0.050)),
                    (0.6, Bands(0.077, 1.61, 0.069)))
MARGIN = 1.5
MAX_LATE_SECONDS = MEASURED_CHANGES[-1][0]
# Audio that arrives faster than this many seconds a second (a file sent at once) gets no
# prefix: the rest would arrive before it is done, and be left for after stop all the same.
MAX_PACE = 2.0
# How long a cancelled prefix may take to let its worker go.
CANCEL_WAIT_SECONDS = 0.05


def bands(late_seconds: float) -> Bands:
    """Return the close-call bands of an estimate from a prefix ``late_seconds`` before the end."""
    for late, measured in MEASURED_CHANGES:
        if late_seconds <= late:
            return Bands(*(round(value * MARGIN, 4) for value in (measured.raw, measured.calibrated, measured.replay)))
    raise ValueError(f"no measured bands for a prefix {late_seconds:g} s before the end")


def close_call(match: Match, policy: Policy, bands: Bands, copy: float | None = None) -> bool:
    """Return True when an estimate's decision (and replay cosine ``copy``) lies within ``bands`` of a threshold."""
    if copy is not None and abs(copy - policy.replay_similarity) < bands.replay:
        return True
    if match.score is None:
        return False
    if match.calibrated is not None and match.calibrated_threshold is not None:
        if abs(match.calibrated - match.calibrated_threshold) < bands.calibrated:
            return True
        if match.calibrated < match.calibrated_threshold:
            return False  # refused on the calibrated score whatever the raw ones say
    # An accept also needs the raw cosine over the policy's floor, and when identifying, the
    # best raw cosine over the runner-up's (which moves too) by the policy's margin.
    if abs(match.score - policy.threshold) < bands.raw:
        return True
    return match.runner_up is not None and abs(match.score - match.runner_up - policy.identify_margin) < 2 * bands.raw


def settled(match: Match, policy: Policy, bands: Bands, copy: float | None = None) -> bool:
    """Return True when an estimate's decision stands: an accept that is not a close call.

    A refusal is always made again on the whole utterance: every refusal then takes as long,
    near a threshold or not, so that its timing tells a caller nothing its answer does not (the
    scores are withheld so that nobody can tune a voice against them).
    """
    return match.state == "accept" and not close_call(match, policy, bands, copy)


@dataclass(frozen=True)
class Estimate:
    """How to estimate an utterance's embedding (``embed(audio)``) from a prefix, and how close a call is for it."""

    embed: Callable[[np.ndarray], np.ndarray]
    bands: Bands


class EarlyFrames:
    """The prefixes of one streamed utterance, computed on the pool as courtesy work."""

    def __init__(self, speaker, pool):
        self._speaker, self._pool = speaker, pool
        self._running: Future | None = None
        self._cancel: Cancel | None = None
        self._latest = None
        self._asked = 0  # samples of the newest prefix started
        self._began = time.monotonic()

    def offer(self, so_far: Callable[[], np.ndarray], samples: int) -> None:
        """Start a prefix of the audio so far (``samples`` long) when enough has come and the pool has room."""
        self._collect()
        if (self._running is not None or samples < MIN_SECONDS * SAMPLE_RATE
                or samples - self._asked < STEP_SECONDS * SAMPLE_RATE
                or samples / SAMPLE_RATE > MAX_PACE * (time.monotonic() - self._began)
                or not self._pool.courtesy_room()):
            return
        self._cancel = Cancel()
        try:
            self._running = self._pool.submit_courtesy(self._speaker.prefix, so_far(), self._cancel)
        except Busy:
            return
        self._asked = samples

    def estimator(self, samples: int) -> Estimate | None:
        """At ``stop`` of an utterance ``samples`` long: return the estimate from the newest finished
        prefix, or None when none ends close enough to the end.

        A prefix still running is cancelled, not waited for: it would hold the cores the
        estimate (or the whole utterance) needs, for longer than either takes.
        """
        self.close()
        prefix = self._latest
        if prefix is None or samples - prefix.samples > MAX_LATE_SECONDS * SAMPLE_RATE:
            return None

        def embed(audio: np.ndarray) -> np.ndarray:  # named so, it is timed as a voice check (metrics.py)
            return self._speaker.embed_after(audio, prefix)
        return Estimate(embed, bands((samples - prefix.samples) / SAMPLE_RATE))

    def close(self) -> None:
        """End the prefix in flight, if any (a decision no longer needs it)."""
        if self._running is not None:
            self._running.cancel()
            self._cancel()
            # ONNX Runtime stops at its next operation: let the worker go before the decision's
            # own call, which then finds the pool idle and takes every core.
            wait([self._running], timeout=CANCEL_WAIT_SECONDS)
            self._collect()  # a prefix that finished all the same is kept
            self._running = None

    def _collect(self) -> None:
        if self._running is None or not self._running.done():
            return
        try:
            if not self._running.cancelled():
                self._latest = self._running.result()
        except Cancelled:
            pass
        except Exception:  # the whole utterance is then computed after stop, as without prefixes
            logger.warning("an early ECAPA pass failed", exc_info=True)
        self._running = None
