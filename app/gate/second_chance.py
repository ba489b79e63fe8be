"""A voice login's second chance: one more utterance after a near miss, decided on both together.

Real audio fails genuine people now and then (noise, a phone line, a short phrase), mostly just
under the threshold. A refused login whose calibrated score lands within
``Policy.second_chance_band`` under the threshold (or above it, short of the raw floor) is asked
for one more utterance, and is then accepted only when the mean of the two attempts' calibrated
scores reaches the threshold plus MARGIN and their mean raw cosine the floor: the second attempt
must make up what the first lacked. A plain retry, accepting either attempt on its own, adds half
as many false accepts again; this rule keeps what second attempts add under a tenth of the target
(bench/second_chance.py, docs/threshold.md). Pure: matches in, a match out.
"""
from __future__ import annotations

from dataclasses import replace

from .decide import Match

# The widest near-miss band (Policy.second_chance_band, in calibrated units: standard deviations of
# impostor scores) an admin may set: MARGIN was chosen to hold there, so it holds in any narrower one.
MAX_BAND = 2.0
# How far above the threshold the two attempts' mean must be. Chosen by bench/second_chance.py on
# the calibration's fitting speakers: the smallest margin at which second attempts, in a band of
# MAX_BAND, add at most a tenth of the target false-accept rate.
MARGIN = 0.0


def near_miss(match: Match, band: float) -> bool:
    """Return True when a refused 1:1 match came within ``band`` of the calibrated threshold."""
    return (band > 0 and match.state == "reject" and match.calibrated is not None
            and match.calibrated_threshold is not None and match.calibrated >= match.calibrated_threshold - band)


def combined(first: Match, second: Match) -> Match:
    """Return the decision on two 1:1 attempts at one voice: their mean calibrated score against the threshold
    plus MARGIN, and their mean raw cosine against the raw floor."""
    needed = second.calibrated_threshold + MARGIN
    calibrated = (first.calibrated + second.calibrated) / 2
    score = (first.score + second.score) / 2
    accept = calibrated >= needed and score >= max(first.raw_floor, second.raw_floor)
    return replace(second, state="accept" if accept else "reject", score=score, calibrated=calibrated,
                   calibrated_threshold=needed)
