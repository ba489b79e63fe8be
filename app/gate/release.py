"""The release rule: which stretches of an utterance may be handed to Whisper.

This is the contract every surface relies on (/ws/voice, /api/v1, the browser, Kõnele):

    Audio reaches Whisper, in a partial, a final or a piece of one decoded ahead (stream.py),
    only if every part of it lies inside a voice check that passed and inside no check that
    failed, and only once no later check can still fail over it.

    One exception, whose text nobody sees unless the rule above settles it: at a pause of TRAIL
    (stream.py), a live stream decides the end it would have there, with every check that end
    makes, and decodes the stretch that end would settle as accepted. The text is sent only if
    the utterance does end there and its final is that very stretch; otherwise it is dropped.

Checks are ECAPA scores of windows of ``WINDOW`` seconds, ending every ``STEP`` seconds
of an utterance, plus one window ending where the utterance ends (and, in a dictation, that
window's last second of speech alone: dictation.END_SECONDS). A window that passed
does not vouch for its newest part: the next window, which overlaps it, may fail there
(another voice that has just begun is a small part of one window but most of the next).
So a stretch is settled only behind the *horizon*, ``WINDOW - STEP`` before the end of
the latest check: no later check reaches back that far. When the utterance has ended,
its last check settles everything.

A failed check is final: nothing inside it is ever released, however well the windows
around it score. Another voice's stretch is thereby reported as rejected, and the
owner's speech before and after it, under passing checks only, is still transcribed.

Pure functions on sample positions; no models, no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass

SAMPLE_RATE = 16000
WINDOW = 2.0
STEP = 1.0
WINDOW_SAMPLES = int(WINDOW * SAMPLE_RATE)
STEP_SAMPLES = int(STEP * SAMPLE_RATE)
HORIZON_SAMPLES = WINDOW_SAMPLES - STEP_SAMPLES

ACCEPT, REJECT, PENDING = "accept", "reject", "pending"


@dataclass(frozen=True)
class Check:
    """One voice check: the window [begin, end) in stream samples, its score, and whether it passed."""

    begin: int
    end: int
    score: float
    passed: bool


@dataclass(frozen=True)
class Span:
    """A stretch [begin, end) of an utterance with one state: accept, reject or pending."""

    begin: int
    end: int
    state: str
    score: float | None = None  # the lowest passing score over an accepted span, the failing one over a rejected


def horizon(checks: list[Check], ended_at: int | None) -> int | None:
    """Return the sample before which nothing can change any more (None before any check).

    Once the utterance has ended (``ended_at``) and had its last check, everything is settled.
    """
    if ended_at is not None:
        return ended_at
    if not checks:
        return None
    return max(check.end for check in checks) - HORIZON_SAMPLES


def spans(start: int, end: int, checks: list[Check], settled_until: int | None) -> list[Span]:
    """Split [start, end) into accepted, rejected and pending spans under the release rule.

    Accepted: inside a passing check, inside no failing one, and before ``settled_until``.
    Rejected: inside a failing check. Pending: everything else (not yet checked, or not yet settled).
    """
    cuts = {start, end}
    for check in checks:
        cuts.update(point for point in (check.begin, check.end) if start < point < end)
    if settled_until is not None and start < settled_until < end:
        cuts.add(settled_until)
    points = sorted(cuts)
    out: list[Span] = []
    for begin, stop in zip(points, points[1:]):
        over = [check for check in checks if check.begin <= begin and stop <= check.end]
        failed = [check.score for check in over if not check.passed]
        passed = [check.score for check in over if check.passed]
        if failed:
            state, score = REJECT, min(failed)
        elif passed and settled_until is not None and stop <= settled_until:
            state, score = ACCEPT, min(passed)
        else:
            state, score = PENDING, None
        if out and out[-1].state == state:
            scores = [s for s in (out[-1].score, score) if s is not None]
            out[-1] = Span(out[-1].begin, stop, state, min(scores) if scores else None)
        else:
            out.append(Span(begin, stop, state, score))
    return out
