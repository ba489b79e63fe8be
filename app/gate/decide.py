"""Pure decisions on voices: clip quality, consistency, verification and identification.

Takes numpy arrays and embeddings, returns plain values; no models, no database.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

import numpy as np

from ..engines.speaker import centroid, cosine
from ..audio.vad import Segment
from .calibration import Cohort, Quality, asnorm, load_cohort
from .policy import Policy

# A clip whose speech is quieter than this (RMS, dBFS) is too far from the microphone.
QUIET_DBFS = -40.0
# More than this fraction of samples at full scale means the recording was clipped.
CLIPPED_FRACTION = 0.001
FULL_SCALE = 0.99
# Less speech than this is no speech at all (a cough, a click).
MIN_ANY_SPEECH = 0.3
# Enrolled voices at least this alike are taken for one person (kept out of each other's cohort).
SAME_PERSON = 0.5


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
    """The outcome of comparing one embedding with enrolled voices.

    ``score`` is the raw cosine (what admins read); ``calibrated`` is the calibrated score the
    decision was made on, against ``calibrated_threshold`` (docs/threshold.md).
    """

    state: str  # accept or reject
    user: str | None
    score: float | None
    runner_up: float | None = None
    calibrated: float | None = None
    calibrated_threshold: float | None = None


def verify(embedding: np.ndarray, enrolled: np.ndarray, user: str, policy: Policy, quality: Quality,
           others: list[np.ndarray] | tuple = (), cohort: Cohort | None = None, *,
           channels: Mapping[str, np.ndarray] | None = None) -> Match:
    """Compare an embedding with one user's centroid (1:1), calibrated for the test audio's quality.

    Accepts when the calibrated score reaches the policy's target false-accept rate and the raw
    cosine reaches the policy's floor. ``others`` are other enrolled users' voices, added to the
    shipped cohort for AS-norm. ``channels`` are the voiceprint's channel centroids
    (``Voiceprint.channel_vectors``): telephone-band audio is compared with the ``phone`` one
    when given. A missing or altered cohort raises CalibrationError: nothing is accepted.
    """
    cohort = cohort or load_cohort()
    # A voice this close to the claimed one is most likely the same person under another name:
    # normalising against it would hold them to their own voice.
    others = [other for other in others if cosine(other, enrolled) < SAME_PERSON]
    if quality.narrow and channels and "phone" in channels:
        # The voice as a phone line carries it: a wide-band centroid would hold the user to
        # frequencies the line cut off (docs/threshold.md).
        enrolled = channels["phone"]
    score = cosine(embedding, enrolled)
    normed = asnorm(score, enrolled, embedding, cohort.with_others(others), cohort.calibration.top_k)
    calibrated = cohort.calibration.calibrate(normed, quality)
    needed = cohort.calibration.threshold(policy.target_far)
    accept = calibrated >= needed and score >= policy.threshold
    return Match("accept" if accept else "reject", user, score, calibrated=calibrated, calibrated_threshold=needed)


def identify(embedding: np.ndarray, enrolled: dict[str, np.ndarray], policy: Policy, quality: Quality,
             cohort: Cohort | None = None) -> Match:
    """Find who is speaking among ``enrolled`` (1:N, open set).

    Each voice is scored as in ``verify`` (the others form part of its cohort). The best must clear
    the target false-accept rate divided by the number of voices (each is a chance to be wrong), and
    beat the runner-up's raw cosine by ``identify_margin``; otherwise the speaker is unknown.
    """
    if not enrolled:
        return Match("reject", None, None)
    cohort = cohort or load_cohort()
    share = replace(policy, target_far=policy.target_far / len(enrolled))
    matches = sorted((verify(embedding, vector, name, share, quality,
                             [v for other, v in enrolled.items() if other != name], cohort)
                      for name, vector in enrolled.items()), key=lambda m: m.calibrated, reverse=True)
    best = matches[0]
    runner_up = max((m.score for m in matches[1:]), default=None)
    if best.state == "accept" and (runner_up is None or best.score - runner_up >= policy.identify_margin):
        return replace(best, runner_up=runner_up)
    return replace(best, state="reject", user=None, runner_up=runner_up)
