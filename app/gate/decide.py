"""Pure decisions on voices: clip quality, consistency, verification and identification.

Takes numpy arrays and embeddings, returns plain values; no models, no database.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engines.speaker import centroid, cosine
from ..audio.vad import Segment

# A clip whose speech is quieter than this (RMS, dBFS) is too far from the microphone.
QUIET_DBFS = -40.0
# More than this fraction of samples at full scale means the recording was clipped.
CLIPPED_FRACTION = 0.001
FULL_SCALE = 0.99
# Less speech than this is no speech at all (a cough, a click).
MIN_ANY_SPEECH = 0.3


@dataclass(frozen=True)
class ClipQuality:
    """What a clip's audio measured: seconds of speech, loudness, clipping."""

    speech_seconds: float
    speech_dbfs: float
    clipped_fraction: float


def measure(audio: np.ndarray, segments: list[Segment]) -> ClipQuality:
    """Measure 16 kHz mono float32 audio and its VAD segments."""
    speech = sum(s.seconds for s in segments)
    if segments:
        voiced = np.concatenate([audio[s.start:s.end] for s in segments])
        rms = float(np.sqrt(np.mean(np.square(voiced, dtype=np.float64))))
    else:
        rms = 0.0
    dbfs = 20 * np.log10(rms) if rms > 0 else -120.0
    clipped = float(np.mean(np.abs(audio) >= FULL_SCALE)) if audio.size else 0.0
    return ClipQuality(speech, float(dbfs), clipped)


def clip_problem(quality: ClipQuality, min_speech: float) -> str | None:
    """Return why an enrollment clip cannot be used before embedding it, or None."""
    if quality.speech_seconds < MIN_ANY_SPEECH:
        return "no_speech"
    if quality.speech_dbfs < QUIET_DBFS:
        return "too_quiet"
    if quality.clipped_fraction > CLIPPED_FRACTION:
        return "clipped"
    if quality.speech_seconds < min_speech:
        return "too_short"
    return None


def consistency(embedding: np.ndarray, accepted: list[np.ndarray]) -> float | None:
    """Return how well a clip matches the clips accepted so far (None for the first)."""
    if not accepted:
        return None
    return cosine(centroid(np.stack(accepted)), embedding)


def speech_state(speech_seconds: float, min_speech: float) -> str | None:
    """Return ``no_speech`` or ``not_enough_speech`` when a decision cannot be made, else None."""
    if speech_seconds < MIN_ANY_SPEECH:
        return "no_speech"
    if speech_seconds < min_speech:
        return "not_enough_speech"
    return None


@dataclass(frozen=True)
class Match:
    """The outcome of comparing one embedding with enrolled voices."""

    state: str  # accept or reject
    user: str | None
    score: float | None
    runner_up: float | None = None


def verify(embedding: np.ndarray, enrolled: np.ndarray, user: str, threshold: float) -> Match:
    """Compare an embedding with one user's centroid (1:1)."""
    score = cosine(embedding, enrolled)
    return Match("accept" if score >= threshold else "reject", user, score)


def identify(embedding: np.ndarray, enrolled: dict[str, np.ndarray], threshold: float, margin: float) -> Match:
    """Find who is speaking among ``enrolled`` (1:N, open set).

    The best match must clear the threshold and beat the runner-up by ``margin``;
    otherwise the speaker is unknown (state reject, user None).
    """
    if not enrolled:
        return Match("reject", None, None)
    scores = sorted(((cosine(embedding, vector), name) for name, vector in enrolled.items()), reverse=True)
    best, name = scores[0]
    runner_up = scores[1][0] if len(scores) > 1 else None
    if best >= threshold and (runner_up is None or best - runner_up >= margin):
        return Match("accept", name, best, runner_up)
    return Match("reject", None, best, runner_up)
