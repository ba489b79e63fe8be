"""Pure decisions on voices: clip quality, consistency, verification and identification.

Takes numpy arrays and embeddings, returns plain values; no models, no database.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

import numpy as np

from ..engines.fused import common, in_space
from ..engines.speaker import centroid, cosine, normalise
from ..audio.vad import Segment
from .calibration import CalibrationError, Cohort, Quality, asnorm, centred_cosines, cohort_for
from .policy import Policy

# A clip whose speech is quieter than this (RMS, dBFS) is too far from the microphone.
QUIET_DBFS = -40.0
# More than this fraction of samples at full scale means the recording was clipped.
CLIPPED_FRACTION = 0.001
FULL_SCALE = 0.99
# Less speech than this is no speech at all (a cough, a click).
MIN_ANY_SPEECH = 0.3
# Audio a client says it lost while capturing a clip (its audio thread starved, frames dropped):
# past MAX the clip is not trusted (a hole that long can hide words); past SOME, a clip that
# measured too little speech may owe it to the loss. A busy laptop loses a few tenths of a
# second now and then (seen in the browser tests on a loaded machine), which harms no voiceprint.
MAX_LOST_SECONDS = 1.0
SOME_LOST_SECONDS = 0.25
# A wait this long between two pieces of a live clip means it arrived late and in bursts.
LATE_GAP_SECONDS = 1.0
# Enrolled voices at least this alike are taken for one person (kept out of each other's cohort).
SAME_PERSON = 0.5
# A telephone-band test meets the voiceprint's telephone copy only when its band edge lies this
# far (dB) under the enrollment's. Chosen on the cohort's (fitting) speakers, the widest gap tried
# and their best: FRR 10.97% -> 9.81%, FAR unchanged; on held-out speakers FRR 8.80% -> 8.27%
# (bench/results/channel-guard.json). Real phone lines sit 30 dB and more under wide-band speech.
PHONE_COPY_GAP_DB = 20.0


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


def delivery_problem(quality: ClipQuality, min_speech: float, lost_seconds: float, longest_gap: float) -> str | None:
    """Return why an enrollment clip is refused (``clip_problem``), or ``broken_audio`` when the way
    it arrived, not the speaker, explains it.

    A clip that lost a second of audio on its way is refused whatever it measured. One that lost
    less, or stalled, is blamed on the machine only when it measured too little speech and the
    audio that may be missing would have made up the shortfall: two seconds said and a tenth
    lost is a short clip, not a broken one.
    """
    problem = clip_problem(quality, min_speech)
    if lost_seconds >= MAX_LOST_SECONDS:
        return "broken_audio"
    missing = lost_seconds + (longest_gap if longest_gap >= LATE_GAP_SECONDS else 0.0)
    needed = {"no_speech": MIN_ANY_SPEECH, "too_short": min_speech}.get(problem)
    if needed is not None and missing >= SOME_LOST_SECONDS and quality.speech_seconds + missing >= needed:
        return "broken_audio"
    return problem


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
    raw_floor: float | None = None  # the raw cosine an accept needed (raw_floor below)


def verify(embedding: np.ndarray, enrolled: np.ndarray, user: str, policy: Policy, quality: Quality,
           others: list[np.ndarray] | tuple = (), cohort: Cohort | None = None, *,
           channels: Mapping[str, np.ndarray] | None = None, band_edge_db: float | None = None) -> Match:
    """Compare an embedding with one user's centroid (1:1), calibrated for the test audio's quality.

    Accepts when the calibrated score reaches the policy's target false-accept rate and the raw
    cosine reaches the policy's floor. ``others`` are other enrolled users' voices, added to the
    shipped cohort for AS-norm. ``channels`` are the voiceprint's channel centroids
    (``Voiceprint.channel_vectors``): telephone-band audio is compared with the ``phone`` one
    when given and ``held_to_phone_copy`` says so (``band_edge_db``: the enrollment's band edge,
    ``Voiceprint.band_edge_db``). A missing or altered cohort raises CalibrationError: nothing is accepted.

    Voices are compared in the richest space both have (app/engines/fused.py): a voiceprint of
    ECAPA alone is scored on the test's ECAPA part, with ECAPA's cohort and calibration.
    """
    embedding, enrolled = common(embedding, enrolled)
    dim = enrolled.shape[-1]
    # Other voices of ECAPA alone cannot join a fused cohort; the shipped cohort remains.
    others = [in_space(other, dim) for other in others if np.shape(other)[-1] >= dim]
    channels = {name: in_space(vector, dim) for name, vector in (channels or {}).items()}
    cohort = cohort or cohort_for(dim)
    # A voice this close to the claimed one is most likely the same person under another name:
    # normalising against it would hold them to their own voice.
    others = [other for other in others if cosine(other, enrolled) < SAME_PERSON]
    if held_to_phone_copy(quality, channels, band_edge_db):
        enrolled = channels["phone"]
    score = cosine(embedding, enrolled)
    voice, test = cohort.centre(enrolled), cohort.centre(embedding)
    normed = asnorm(float(voice @ test), voice, test, cohort.centred_with(others),
                    cohort.calibration.top_k)
    calibrated = cohort.calibration.calibrate(normed, quality)
    needed = cohort.calibration.threshold(policy.target_far)
    floor = raw_floor(policy, cohort)
    accept = calibrated >= needed and score >= floor
    return Match("accept" if accept else "reject", user, score, calibrated=calibrated, calibrated_threshold=needed,
                 raw_floor=floor)


def held_to_phone_copy(quality: Quality, channels: Mapping[str, np.ndarray] | None,
                       band_edge_db: float | None) -> bool:
    """Return True when a test is compared with the voiceprint's telephone copy, not its centroid.

    Telephone-band audio meets the voice as a phone line carries it: a wide-band centroid would
    hold the user to frequencies the line cut off. But only when its band lies ``PHONE_COPY_GAP_DB``
    under the enrollment's own (``band_edge_db``; None on older voiceprints: always): a voice
    recorded band-limited to begin with (a headset, a cheap microphone) is still closest to its
    own centroid, and the phone line's copy of it is another voice (docs/threshold.md).
    """
    if not (quality.narrow and channels and "phone" in channels):
        return False
    return band_edge_db is None or band_edge_db - quality.edge_db >= PHONE_COPY_GAP_DB


def raw_floor(policy: Policy, cohort: Cohort) -> float:
    """Return the raw cosine an accept needs: the policy's floor, or the calibration's own where higher."""
    return max(policy.threshold, cohort.calibration.floor)


def identify(embedding: np.ndarray, enrolled: dict[str, np.ndarray], policy: Policy, quality: Quality,
             cohort: Cohort | None = None) -> Match:
    """Find who is speaking among ``enrolled`` by name (1:N, open set); see ``identify_among``."""
    if not enrolled:
        return Match("reject", None, None)
    names = tuple(enrolled)
    # Every voice in the richest space all of them (and the test) have.
    dim = min([np.shape(embedding)[-1]] + [np.shape(voice)[-1] for voice in enrolled.values()])
    columns = np.stack([normalise(in_space(enrolled[name], dim)) for name in names], axis=1).astype(np.float32)
    return identify_among(embedding, names, columns, policy, quality, cohort)


# Identification scores in full (AS-norm, calibration) only the voices with the highest raw
# cosines: an accept needs the best raw cosine anyway (it must beat every other by
# identify_margin), so the rest only change a reject's reported runner-up, never a decision
# but in the unlikely case that a voice ranked past this would calibrate above the top one.
SHORTLIST = 8
# The test side of AS-norm is found among this many more of the closest voices than it needs,
# so that leaving out a candidate's own (SAME_PERSON) voices rarely needs a second look.
_REACH = 64


def identify_among(embedding: np.ndarray, names: tuple[str, ...] | list[str], columns: np.ndarray, policy: Policy,
                   quality: Quality, cohort: Cohort | None = None, shortlist: int = SHORTLIST,
                   stats: dict | None = None) -> Match:
    """Find who is speaking among the unit voices ``columns`` (dim × users, named by ``names``; 1:N, open set).

    The voices closest by raw cosine (one matrix product) are scored as in ``verify``, every
    other enrolled voice being part of their cohort. The best must clear the target
    false-accept rate divided by the number of voices (each is a chance to be wrong), and beat
    the runner-up's raw cosine by ``identify_margin``; otherwise the speaker is unknown.
    ``stats``: a cache of each voice's enrolled-side normalisation, valid while ``columns`` is.
    (Voices as columns: a product with one embedding then reads memory in order, three times faster.)
    """
    count = len(names)
    if count == 0:
        return Match("reject", None, None)
    if np.shape(embedding)[-1] < columns.shape[0]:  # fused voices, a test of ECAPA alone (CAM++ not loaded)
        columns, stats = normalise_columns(in_space(columns.T, np.shape(embedding)[-1]).T), None
    test = normalise(in_space(embedding, columns.shape[0]))
    cohort = cohort or cohort_for(columns.shape[0])
    raw = test @ columns
    closest = _closest(raw, max(shortlist, cohort.calibration.top_k + _REACH))  # the one pass over every voice
    rows = closest[:min(shortlist, count)]
    share = replace(policy, target_far=policy.target_far / count)
    matches = _score_rows(test, raw, closest, columns, [int(row) for row in rows], names, share, quality, cohort,
                          stats)
    best_at = max(range(len(matches)), key=lambda j: matches[j].calibrated)
    best = matches[best_at]
    # The highest raw cosine but the best's: the top one, or the second when the best is the top.
    runner_up = None if count == 1 else float(raw[rows[1] if best_at == 0 else rows[0]])
    if best.state == "accept" and (runner_up is None or best.score - runner_up >= policy.identify_margin):
        return replace(best, runner_up=runner_up)
    return replace(best, state="reject", user=None, runner_up=runner_up)


def verify_among(embedding: np.ndarray, enrolled: np.ndarray, user: str, names: tuple[str, ...] | list[str],
                 columns: np.ndarray, policy: Policy, quality: Quality, cohort: Cohort | None = None,
                 row: int | None = None, stats: dict | None = None, *,
                 channels: Mapping[str, np.ndarray] | None = None, band_edge_db: float | None = None) -> Match:
    """Verify as ``verify`` with every enrolled voice (``columns``, named by ``names``) but ``user``'s as cohort.

    ``row``: the user's column in ``columns`` (None: not in it), which is then the voice verified against.
    ``channels``, ``band_edge_db`` as in ``verify``: telephone-band audio may be scored against the telephone copy.
    """
    bands = {"channels": channels, "band_edge_db": band_edge_db}
    if row is None:
        return verify(embedding, enrolled, user, policy, quality, list(columns.T), cohort, **bands)
    if min(np.shape(embedding)[-1], np.shape(enrolled)[-1]) != columns.shape[0]:
        # The voices are in another space than the one this pair is scored in (some enrolled
        # with ECAPA alone, or CAM++ not loaded): score the pair on its own.
        others = [columns[:, i] for i in range(columns.shape[1]) if i != row]
        return verify(embedding, enrolled, user, policy, quality, others, cohort, **bands)
    if held_to_phone_copy(quality, channels, band_edge_db):
        # The matrix's figures are of the wide-band centroids: score the telephone copy on its own.
        others = [columns[:, i] for i in range(columns.shape[1]) if i != row]
        return verify(embedding, enrolled, user, policy, quality, others, cohort, **bands)
    cohort = cohort or cohort_for(columns.shape[0])
    test = normalise(in_space(embedding, columns.shape[0]))
    raw = test @ columns
    closest = _closest(raw, cohort.calibration.top_k + _REACH)
    return _score_rows(test, raw, closest, columns, [row], names, policy, quality, cohort, stats)[0]


def normalise_columns(columns: np.ndarray) -> np.ndarray:
    """Return ``columns`` (dim × voices) scaled to unit length each."""
    return (columns / np.maximum(np.linalg.norm(columns, axis=0, keepdims=True), 1e-12)).astype(np.float32)


def _closest(raw: np.ndarray, count: int) -> np.ndarray:
    """Return the rows of the ``count`` highest of ``raw``, highest first."""
    if count < raw.size:
        rows = np.argpartition(raw, raw.size - count)[raw.size - count:]
    else:
        rows = np.arange(raw.size)
    return rows[np.argsort(-raw[rows], kind="stable")]


def _score_rows(test: np.ndarray, raw: np.ndarray, closest: np.ndarray, columns: np.ndarray, rows: list[int], names,
                policy: Policy, quality: Quality, cohort: Cohort, stats: dict | None) -> list[Match]:
    """Score ``test`` (cosines ``raw`` to every voice of ``columns``, ``closest`` its highest) against each of ``rows``.

    The cohort of each is the shipped one plus every other voice of ``columns`` less than
    SAME_PERSON alike it (a voice this close is most likely the same person under another
    name: normalising against it would hold them to their own voice).
    """
    top_k = cohort.calibration.top_k
    shipped = cohort.centred_embeddings
    # AS-norm's cosines are of voices less the cohort's mean (Cohort.centre): worked out from the
    # raw ones and each voice's cosine to the mean, so that no centred copy of the matrix is kept.
    # The SAME_PERSON rule stays on raw cosines, as everywhere else.
    mean = cohort.mean
    mean_sq = float(mean @ mean)
    test_lean = float(test @ mean)
    centred_test = cohort.centre(test)
    # Test side: the voices closest to the test audio are among the shipped cohort and the
    # closest enrolled ones (pool indices past the shipped cohort stand for rows of ``closest``).
    pool = np.concatenate([shipped @ centred_test,
                           centred_cosines(raw[closest], test_lean, mean @ columns[:, closest], mean_sq)])
    reach = min(pool.size, top_k + _REACH)
    near = np.argpartition(pool, -reach)[-reach:]
    near = near[np.argsort(-pool[near], kind="stable")]
    near_rows = closest[near[near >= len(shipped)] - len(shipped)]
    stats = {} if stats is None else stats
    missing = [row for row in rows if row not in stats]
    leans = None
    if missing:
        # One product for every candidate not yet known: its cosines to all the voices.
        leans = mean @ columns
        among = columns[:, missing].T @ columns
        centred_among = centred_cosines(among, leans[missing, None], leans[None, :], mean_sq)
        to_shipped = shipped @ cohort.centre(columns[:, missing].T).T
        for j, row in enumerate(missing):
            alike = among[j]
            scores = np.concatenate([to_shipped[:, j], centred_among[j][alike < SAME_PERSON]])
            stats[row] = _top_stats(scores, top_k)
    needed = cohort.calibration.threshold(policy.target_far)
    floor = raw_floor(policy, cohort)
    matches = []
    for row in rows:
        score = float(raw[row])
        centred_score = float(centred_cosines(raw[row], test_lean, float(mean @ columns[:, row]), mean_sq))
        same = set(near_rows[columns[:, row] @ columns[:, near_rows] >= SAME_PERSON].tolist())
        kept = [i for i in near if i < len(shipped) or int(closest[i - len(shipped)]) not in same][:top_k]
        if len(kept) < top_k and reach < len(shipped) + raw.size:  # too many alike among the nearest: look at all
            alike = columns[:, row] @ columns
            leans = mean @ columns if leans is None else leans
            centred_raw = centred_cosines(raw, test_lean, leans, mean_sq)
            test_stats = _top_stats(np.concatenate([pool[:len(shipped)], centred_raw[alike < SAME_PERSON]]), top_k)
        else:
            test_stats = _top_stats(pool[kept], top_k)
        normed = sum((centred_score - mean_) / std for mean_, std, _ in (stats[row], test_stats)) / 2
        calibrated = cohort.calibration.calibrate(normed, quality)
        accept = calibrated >= needed and score >= floor
        matches.append(Match("accept" if accept else "reject", names[row], score, calibrated=calibrated,
                             calibrated_threshold=needed, raw_floor=floor))
    return matches


def _top_stats(scores: np.ndarray, top_k: int) -> tuple[float, float, float]:
    """Return the mean and (floored) deviation of the ``top_k`` highest ``scores`` (AS-norm's), and their lowest."""
    if scores.size < 2:
        raise CalibrationError("AS-norm needs a cohort of at least two embeddings")
    k = min(top_k, scores.size)
    top = np.partition(scores, -k)[-k:]
    return float(top.mean()), max(float(top.std()), 1e-3), float(top.min()) if k == top_k else -np.inf
