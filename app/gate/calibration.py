"""Calibrated verification scores: AS-norm against a cohort, then quality-aware calibration.

A raw cosine means different things on a clean 6 s clip and on 1.5 s of noisy phone audio.
Here it becomes a *calibrated score*: how many standard deviations the trial stands above what
impostors score under the same conditions (AS-norm, on voices less the cohort's mean embedding).
The impostor distribution's centre and spread are functions of the test audio's quality (seconds
of speech, SNR, bandwidth), fitted on held-out speakers by ``bench/calibrate.py``; a target
false-accept rate maps to one calibrated threshold in every condition. Pure numpy: no models, no
Flask, no database.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from statistics import NormalDist

import numpy as np

from ..engines.fused import FUSED_DIM, PART_DIM

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FRAME = 320  # 20 ms
# The shipped cohort and calibration (made by bench/calibrate.py; docs/threshold.md).
COHORT_PATH = Path(__file__).with_name("cohort.npz")
# The shipped cohort's sha256, as `python -m bench.calibrate --write-cohort` reports it: a file
# that differs (damaged, or swapped for one that would accept other voices) is refused.
COHORT_SHA256 = "f1c17cd23105e6c5a3e50fbf1db48b5267b28e87a380d2d7b2b38bf8a7f257f6"
# The same for voices of ECAPA and CAM++ fused (app/engines/fused.py): ``--model fused --write-cohort``.
FUSED_COHORT_PATH = Path(__file__).with_name("cohort-fused.npz")
FUSED_COHORT_SHA256 = "30bb4097bf78f788423d83edef50234f4bc1350d5d52cb2491a2c963826a117f"
# Quality features are clipped to the range the calibration was fitted on.
SPEECH_RANGE = (0.5, 8.0)
SNR_RANGE = (0.0, 40.0)
BAND_RANGE = (-5.0, 0.0)
NARROW_BAND = -3.0
# Energy above this frequency tells wide-band audio from telephone and low-bit-rate codecs.
BAND_EDGE_HZ = 3800.0
# A telephone line carries nothing above 4 kHz: audio whose energy at 4.3-7.5 kHz is this far
# (dB) below its energy at 1-3.3 kHz is compared with the voiceprint's telephone copy. Telephone
# audio measured -57 to -28 dB, wide-band speech -25 dB and up, except recordings that are
# themselves telephone audio (docs/threshold.md).
NARROW_EDGE_DB = -30.0
EDGE_FRAME = 512


class CalibrationError(RuntimeError):
    """The shipped cohort or calibration is missing, altered or unusable: nothing can be decided."""


@dataclass(frozen=True)
class Quality:
    """What the test audio's quality measured: seconds of speech, SNR (dB), high-band energy (log10 share)."""

    speech_seconds: float
    snr_db: float
    band: float
    # High band (4.3-7.5 kHz) over mid band (1-3.3 kHz) energy, dB: very low on telephone audio.
    edge_db: float = 0.0

    @property
    def narrow(self) -> bool:
        """Return True when the audio came through a telephone band (nothing above 4 kHz)."""
        return self.edge_db < NARROW_EDGE_DB

    def features(self) -> np.ndarray:
        """Return the calibration's features: 1, log2 speech seconds, SNR / 10, band share, narrow band (clipped)."""
        speech = np.clip(self.speech_seconds, *SPEECH_RANGE)
        band = np.clip(self.band, *BAND_RANGE)
        # Telephone and 8 kHz audio keep almost nothing above 3.8 kHz: a step, not a slope.
        return np.array([1.0, np.log2(speech), np.clip(self.snr_db, *SNR_RANGE) / 10.0, band,
                         max(0.0, NARROW_BAND - band)])


def measure_quality(audio: np.ndarray, speech_seconds: float) -> Quality:
    """Measure 16 kHz mono float32 audio: its SNR from frame powers, its share of energy above 3.8 kHz."""
    usable = audio[: audio.size // FRAME * FRAME].astype(np.float64)
    if usable.size < 2 * FRAME:
        return Quality(speech_seconds, 0.0, BAND_RANGE[0])
    frames = usable.reshape(-1, FRAME)
    power = np.mean(np.square(frames), axis=1) + 1e-12
    # Loud frames are speech over noise, quiet ones the noise between words.
    snr = 10 * np.log10(np.percentile(power, 90) / np.percentile(power, 10))
    loud = frames[power >= np.percentile(power, 50)] * np.hanning(FRAME)
    spectrum = np.square(np.abs(np.fft.rfft(loud, axis=1))).sum(axis=0)
    freqs = np.fft.rfftfreq(FRAME, 1 / SAMPLE_RATE)
    share = spectrum[freqs >= BAND_EDGE_HZ].sum() / max(spectrum.sum(), 1e-20)
    return Quality(float(speech_seconds), float(snr), float(np.log10(max(share, 1e-5))), band_edge(usable))


def band_edge(audio: np.ndarray) -> float:
    """Return the energy at 4.3-7.5 kHz over that at 1-3.3 kHz (dB) of the louder half of 16 kHz audio's frames."""
    usable = np.asarray(audio[: audio.size // EDGE_FRAME * EDGE_FRAME], dtype=np.float64)
    if usable.size < 2 * EDGE_FRAME:
        return 0.0
    frames = usable.reshape(-1, EDGE_FRAME)
    power = np.mean(np.square(frames), axis=1)
    loud = frames[power >= np.percentile(power, 50)] * np.hanning(EDGE_FRAME)
    spectrum = np.square(np.abs(np.fft.rfft(loud, axis=1))).sum(axis=0)
    freqs = np.fft.rfftfreq(EDGE_FRAME, 1 / SAMPLE_RATE)
    high = spectrum[(freqs >= 4300) & (freqs < 7500)].sum()
    mid = spectrum[(freqs >= 1000) & (freqs < 3300)].sum()
    return float(10 * np.log10(max(high, 1e-20) / max(mid, 1e-20)))


def asnorm(raw: float, enrolled: np.ndarray, test: np.ndarray, cohort: np.ndarray, top_k: int) -> float:
    """Return the adaptive symmetric normalisation of ``raw`` against the ``top_k`` closest cohort embeddings."""
    if cohort.shape[0] < 2:
        raise CalibrationError("AS-norm needs a cohort of at least two embeddings")
    return asnorm_scores(raw, cohort @ (enrolled / np.linalg.norm(enrolled)), cohort @ (test / np.linalg.norm(test)),
                         top_k)


def asnorm_scores(raw: float, enrolled_scores: np.ndarray, test_scores: np.ndarray, top_k: int) -> float:
    """Return AS-norm of ``raw`` from the cohort's cosines to the enrolled voice and to the test audio."""
    if enrolled_scores.size < 2 or test_scores.size < 2:
        raise CalibrationError("AS-norm needs a cohort of at least two embeddings")
    total = 0.0
    for scores in (enrolled_scores, test_scores):
        k = min(top_k, scores.size)
        top = np.partition(scores, -k)[-k:]
        total += (raw - float(top.mean())) / max(float(top.std()), 1e-3)
    return total / 2


@dataclass(frozen=True)
class Calibration:
    """Maps an AS-norm score and the test audio's quality to a calibrated score (impostor deviations)."""

    top_k: int
    centre: tuple[float, ...]  # impostor AS-norm mean = centre . features
    spread: tuple[float, ...]  # log of impostor AS-norm deviation = spread . features
    # Measured impostor tail: (false-accept rate, calibrated threshold) pairs, rate descending.
    tail: tuple[tuple[float, float], ...] = ()
    # AS-norm compares voices after taking the cohort's mean embedding away (docs/threshold.md):
    # what every voice of the set shares says nothing of who speaks.
    centred: bool = False
    # A raw cosine every accept must reach besides the calibrated score (0: none beyond the
    # policy's floor): what 1% of the fitting speakers' impostor trials reach. AS-norm holds a
    # voice to the cohort voices nearest it; for a voice far from all of them (speech unlike the
    # cohort's) it inflates impostors too, and this guard does not move with the cohort.
    floor: float = 0.0

    def calibrate(self, normed: float, quality: Quality) -> float:
        """Return the calibrated score of an AS-norm score under ``quality``."""
        features = quality.features()
        centre = float(np.dot(self.centre, features))
        spread = float(np.exp(np.dot(self.spread, features)))
        return (normed - centre) / spread

    def threshold(self, target_far: float) -> float:
        """Return the calibrated threshold whose false-accept rate is ``target_far``.

        Inside the measured tail the measured rate is used (interpolated in log rate); rarer
        targets than measured extend it as a normal tail, never more lenient than measured.
        """
        if not 0.0 < target_far < 1.0:
            raise ValueError("a false-accept rate is between 0 and 1")
        gaussian = NormalDist().inv_cdf(1.0 - target_far)
        if not self.tail:
            return gaussian
        rates = np.log10([far for far, _ in self.tail])[::-1]
        values = np.array([z for _, z in self.tail])[::-1]
        if np.log10(target_far) < rates[0]:  # rarer than measured
            rarest, at = self.tail[-1]
            return max(gaussian, at + gaussian - NormalDist().inv_cdf(1.0 - rarest))
        return float(np.interp(np.log10(target_far), rates, values))


@dataclass(frozen=True)
class Cohort:
    """The shipped cohort embeddings and the calibration fitted with them."""

    embeddings: np.ndarray  # cohort size × 192, unit length, float32
    calibration: Calibration
    sha256: str

    @cached_property
    def mean(self) -> np.ndarray:
        """Return what AS-norm takes away from every voice: the cohort's mean embedding, or zeros when not centred."""
        if not self.calibration.centred:
            return np.zeros(self.embeddings.shape[1], dtype=np.float32)
        return self.embeddings.mean(axis=0).astype(np.float32)

    @cached_property
    def centred_embeddings(self) -> np.ndarray:
        """Return the shipped cohort as AS-norm compares it (``centre`` of every row)."""
        return self.centre(self.embeddings)

    def centred_with(self, others: list[np.ndarray]) -> np.ndarray:
        """Return the cohort plus other enrolled users' voices, as AS-norm compares them (``centre`` of every row)."""
        if not others:
            return self.centred_embeddings
        return np.concatenate([self.centred_embeddings, self.centre(np.stack(others))])

    def centre(self, vectors: np.ndarray) -> np.ndarray:
        """Return unit ``vectors`` (a vector, or one per row) less the mean, scaled to unit length again."""
        moved = np.asarray(vectors, dtype=np.float32)
        moved = moved / np.linalg.norm(moved, axis=-1, keepdims=True) - self.mean
        return (moved / np.maximum(np.linalg.norm(moved, axis=-1, keepdims=True), 1e-6)).astype(np.float32)


def centred_cosines(raw: np.ndarray, lean_a: np.ndarray, lean_b: np.ndarray, mean_sq: float) -> np.ndarray:
    """Return the cosines of unit vectors a, b less a mean m, from a.b (``raw``), a.m, b.m and m.m (broadcast).

    The same figures as ``Cohort.centre`` of both, without a centred copy of every enrolled voice.
    """
    norm_a = np.sqrt(np.maximum(1.0 - 2.0 * lean_a + mean_sq, 1e-12))
    norm_b = np.sqrt(np.maximum(1.0 - 2.0 * lean_b + mean_sq, 1e-12))
    return (raw - lean_a - lean_b + mean_sq) / (norm_a * norm_b)


def save_cohort(path: Path, embeddings: np.ndarray, calibration: Calibration, about: dict) -> str:
    """Write the cohort and calibration to ``path`` (npz); return its sha256."""
    meta = {"top_k": calibration.top_k, "centre": list(calibration.centre), "spread": list(calibration.spread),
            "tail": [list(p) for p in calibration.tail], "centred": calibration.centred, **about}
    if calibration.floor:
        meta["floor"] = calibration.floor
    with open(path, "wb") as handle:
        # float16 halves the file; cosines move by under 0.001.
        np.savez(handle, embeddings=np.asarray(embeddings, dtype="<f2"), meta=np.array(json.dumps(meta, sort_keys=True)))
    return hashlib.sha256(path.read_bytes()).hexdigest()


_loaded: dict[Path, Cohort] = {}


def cohort_for(dim: int) -> Cohort:
    """Return the cohort and calibration of a voice space: ECAPA's (192) or ECAPA's and CAM++'s fused (384)."""
    if dim not in (PART_DIM, FUSED_DIM):
        raise CalibrationError(f"no calibration for {dim}-dimensional voices")
    cohort = load_cohort() if dim == PART_DIM else load_cohort(FUSED_COHORT_PATH, FUSED_COHORT_SHA256)
    if cohort.embeddings.shape[1] != dim:
        held = cohort.embeddings.shape[1]
        raise CalibrationError(f"the cohort for {dim}-dimensional voices holds {held}-dimensional ones")
    return cohort


def load_cohort(path: Path = COHORT_PATH, expected_sha256: str | None = COHORT_SHA256) -> Cohort:
    """Load (once per process) the cohort file; raise CalibrationError when it is missing or altered.

    ``expected_sha256`` None loads any cohort file (the calibration script's own, while fitting).
    """
    path = Path(path)
    if path in _loaded:
        return _loaded[path]
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CalibrationError(f"the calibration cohort {path} cannot be read: {error}") from None
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 and digest != expected_sha256:
        raise CalibrationError(f"the calibration cohort {path} has been altered (sha256 {digest[:12]}...)")
    try:
        import io

        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            embeddings = np.asarray(archive["embeddings"], dtype=np.float32)
            meta = json.loads(str(archive["meta"]))
        calibration = Calibration(int(meta["top_k"]), tuple(meta["centre"]), tuple(meta["spread"]),
                                  tuple(tuple(p) for p in meta["tail"]), bool(meta.get("centred", False)),
                                  float(meta.get("floor", 0.0)))
    except (KeyError, ValueError, TypeError) as error:
        raise CalibrationError(f"the calibration cohort {path} is unusable: {error}") from None
    if embeddings.ndim != 2 or embeddings.shape[0] < 2 or not np.all(np.isfinite(embeddings)):
        raise CalibrationError(f"the calibration cohort {path} holds no usable embeddings")
    cohort = Cohort(embeddings, calibration, digest)
    _loaded[path] = cohort
    return cohort
