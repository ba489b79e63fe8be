"""Score histograms for the settings page, as numbers an SVG template can draw (pure, no Flask)."""
from __future__ import annotations

from dataclasses import dataclass

LOW, HIGH, BINS = -0.2, 1.0, 24


@dataclass(frozen=True)
class Histogram:
    """Counts of accepted and rejected scores in equal bins from ``low`` to ``high``."""

    low: float
    high: float
    accepted: list[int]
    rejected: list[int]

    @property
    def bins(self) -> int:
        """Return the number of bins."""
        return len(self.accepted)

    @property
    def width(self) -> float:
        """Return the width of one bin, in score units."""
        return (self.high - self.low) / self.bins

    @property
    def peak(self) -> int:
        """Return the largest count of any bin (at least 1)."""
        return max([1, *self.accepted, *self.rejected])

    def x(self, score: float) -> float:
        """Return where ``score`` falls, from 0 (low) to 1 (high)."""
        return min(1.0, max(0.0, (score - self.low) / (self.high - self.low)))


def histogram(accepted: list[float], rejected: list[float], low: float = LOW, high: float = HIGH,
              bins: int = BINS) -> Histogram:
    """Bin the scores; scores outside [low, high] go to the edge bins."""
    def counts(scores: list[float]) -> list[int]:
        result = [0] * bins
        for score in scores:
            index = int((score - low) / (high - low) * bins)
            result[min(bins - 1, max(0, index))] += 1
        return result

    return Histogram(low, high, counts(accepted), counts(rejected))


@dataclass(frozen=True)
class Shift:
    """What a threshold would have done to past attempts decided by score alone."""

    threshold: float
    accepted_now_rejected: int
    rejected_now_accepted: int


def shift(accepted: list[float], rejected: list[float], threshold: float) -> Shift:
    """Count past accepts below ``threshold`` and past rejects at or above it."""
    return Shift(threshold, sum(1 for s in accepted if s < threshold), sum(1 for s in rejected if s >= threshold))
