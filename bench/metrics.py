"""Pure measures: EER, minDCF, DET points, error rates at a threshold, WER, latency summaries.

Scores are similarities (higher means more alike); a trial is accepted when its score
is at or above the threshold, as the service decides.
"""
from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import jiwer
import numpy as np


def _sorted_rates(genuine, impostor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (thresholds, FRR, FAR) at every distinct score, plus one above them all."""
    genuine = np.asarray(genuine, dtype=np.float64)
    impostor = np.asarray(impostor, dtype=np.float64)
    if genuine.size == 0 or impostor.size == 0:
        raise ValueError("need at least one genuine and one impostor score")
    thresholds = np.unique(np.concatenate([genuine, impostor]))
    thresholds = np.append(thresholds, np.inf)
    genuine.sort()
    impostor.sort()
    frr = np.searchsorted(genuine, thresholds, side="left") / genuine.size
    far = 1.0 - np.searchsorted(impostor, thresholds, side="left") / impostor.size
    return thresholds, frr, far


def eer(genuine, impostor) -> float:
    """Return the equal error rate, interpolated where FRR and FAR cross."""
    _, frr, far = _sorted_rates(genuine, impostor)
    # FRR rises and FAR falls with the threshold; find the first point where FRR >= FAR.
    index = int(np.argmax(frr >= far))
    if index == 0:
        return float((frr[0] + far[0]) / 2)
    # Between the last point with FRR < FAR and this one, both move linearly.
    d0, d1 = far[index - 1] - frr[index - 1], far[index] - frr[index]
    weight = d0 / (d0 - d1) if d0 != d1 else 0.5
    return float(frr[index - 1] + weight * (frr[index] - frr[index - 1]))


def min_dcf(genuine, impostor, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Return the normalised minimum detection cost over all thresholds (NIST SRE definition)."""
    _, frr, far = _sorted_rates(genuine, impostor)
    cost = c_miss * p_target * frr + c_fa * (1 - p_target) * far
    # Normalised by the cost of the better of the two trivial systems (accept all / reject all).
    return float(cost.min() / min(c_miss * p_target, c_fa * (1 - p_target)))


def rates_at(genuine, impostor, threshold: float) -> tuple[float, float]:
    """Return (FAR, FRR) when accepting scores at or above ``threshold``."""
    genuine = np.asarray(genuine, dtype=np.float64)
    impostor = np.asarray(impostor, dtype=np.float64)
    return float(np.mean(impostor >= threshold)), float(np.mean(genuine < threshold))


def det_points(genuine, impostor) -> tuple[np.ndarray, np.ndarray]:
    """Return (FAR, FRR) over every threshold, for a DET curve."""
    _, frr, far = _sorted_rates(genuine, impostor)
    return far, frr


def probit(p: np.ndarray, n: int) -> np.ndarray:
    """Return the normal deviates of rates, clipped half a trial inside (0, 1) so 0 and 1 plot."""
    floor = 0.5 / max(1, n)
    normal = NormalDist()
    return np.array([normal.inv_cdf(min(max(float(x), floor), 1 - floor)) for x in p])


@dataclass(frozen=True)
class WordErrors:
    """Word errors of a set of transcripts against their references."""

    wer: float | None
    words: int
    substitutions: int
    deletions: int
    insertions: int

    def as_dict(self) -> dict:
        """Return the counts as a plain dict."""
        return {"wer": self.wer, "words": self.words, "substitutions": self.substitutions,
                "deletions": self.deletions, "insertions": self.insertions}


def word_errors(references: list[str], hypotheses: list[str]) -> WordErrors:
    """Return the corpus WER (total errors over total reference words) of normalised texts.

    References with no words are skipped: they have no WER to contribute.
    """
    pairs = [(r, h) for r, h in zip(references, hypotheses, strict=True) if r.split()]
    if not pairs:
        return WordErrors(None, 0, 0, 0, 0)
    output = jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs])
    words = sum(len(r.split()) for r, _ in pairs)
    errors = output.substitutions + output.deletions + output.insertions
    return WordErrors(errors / words, words, output.substitutions, output.deletions, output.insertions)


def normaliser(language: str):
    """Return Whisper's text normaliser for a language: English's for en, the basic one otherwise."""
    from whisper_normalizer.basic import BasicTextNormalizer
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer() if language == "en" else BasicTextNormalizer()


def summary_ms(seconds: list[float]) -> dict:
    """Return the count, median, 95th percentile and maximum of durations, in milliseconds."""
    if not seconds:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "max_ms": None}
    values = np.asarray(seconds, dtype=np.float64) * 1000
    return {"n": int(values.size), "p50_ms": round(float(np.percentile(values, 50)), 1),
            "p95_ms": round(float(np.percentile(values, 95)), 1), "max_ms": round(float(values.max()), 1)}
