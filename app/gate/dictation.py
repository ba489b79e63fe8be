"""Dictation behind the identity gate: transcribe only speech verified as the user's.

One protocol-independent engine serves every surface that returns text: /ws/voice and
the browser's /dictate, ``POST /api/v1/transcribe``, and Kõnele's WebSocket and HTTP
endpoints. The stream is split into utterances by the VAD; each utterance is checked
window by window as it arrives, and only what the release rule (``release.py``) settles
as the user's voice is handed to Whisper. Every settled stretch becomes one ``final``:
accepted with its text, or rejected (another voice) with its times and no text, so the
owner's words around another voice are kept. Partials show the accepted stretch that is
still growing, up to where it is settled.
"""
from __future__ import annotations

import logging

import numpy as np

from . import calibration, decide, store
from ..audio.vad import SAMPLE_RATE
from .base import Context, seconds
from .release import Check, Span, spans
from .stream import GatedStream, Utterance, run_recording
from ..engines.fused import common
from ..engines.speaker import cosine

logger = logging.getLogger(__name__)

# The newest second of an utterance's last window is vouched for by no later window (release.py):
# another voice that takes over for under a second, right after the user's last word, is a small
# part of that window and passes with it. So that second of speech alone must reach the raw floor
# (policy.threshold, not fitted here). bench/studies/last_second.py, fused models: on speech-more's
# 132 endings 2.3% of users' own last seconds miss it, and it catches 36%, 77% and 94% of another
# voice's 0.4, 0.6 and 0.8 s joined right after the user's speech (speech-dev, 7 endings: none
# lost; 43%, 100%, 100%). Mid-utterance, a sub-second interjection still passes (docs/protocol.md).
END_SECONDS = 1.0
# Less speech than this in that second is not checked on its own (too little to score).
END_MIN_SPEECH = 0.5


class DictateSession(GatedStream):
    """Dictation gated by identity: ``audio`` in, partials and finals out (see the module docstring).

    ``live``: a real-time stream that holds one of the server's dictation slots; a whole
    recording (HTTP) takes none and computes no partials. ``shows_scores``: finals carry the
    scores (the user's own, or an admin's view). ``standing``: why a stranger-named user cannot
    be verified (unknown_user, disabled, not_enrolled): every check then fails, as a wrong voice.
    """

    mode = "dictate"
    noun = "dictation"
    TALLY = {"accept": "accepted", "reject": "rejected", "not_enough_speech": "unverified"}

    def __init__(self, ctx: Context, user_name: str, live: bool = True, shows_scores: bool = True,
                 standing: str | None = None, language: str | None = None):
        super().__init__(ctx, live, language)
        self.user = user_name
        self.shows_scores, self.standing = shows_scores, standing
        voiceprint = None if standing else store.find_user(user_name).voiceprint
        self._enrolled = None if voiceprint is None else voiceprint.centroid_vector()
        # Telephone-band windows well under the enrollment's band meet its telephone copy (docs/threshold.md).
        self._channels = {} if voiceprint is None else voiceprint.channel_vectors()
        self._band_edge_db = None if voiceprint is None else voiceprint.band_edge_db
        self._verified_until: int | None = None  # end of the last window that verified calibrated (context for windows)
        if live:
            self._take_slot()

    def _result(self) -> dict:
        return {"type": "result", "mode": "dictate", "user": self.user, "request_id": self.request_id,
                "utterances": len(self.emitted), "language": self.written_language, **self._tally}

    def _partial_message(self, begin: int, whose: str | None, text: str) -> dict:
        return {"type": "partial", "utterance": len(self.emitted) + 1, "text": text}

    def _check(self, utterance: Utterance, begin: int, end: int, short: bool = False) -> None:
        """Score the window [begin, end) against the user's voice, if it holds enough speech.

        ``short``: a phrase too short for a calibrated decision, held to the raw ``short_threshold``.
        """
        window = self._window(utterance, begin, end, short)
        if window is None:
            return
        begin, speech = window
        audio = self._slice(begin, end)
        embedding = self._embedding(begin, end)
        if self._enrolled is None:
            utterance.checks.append(Check(begin, end, -1.0, False))  # no voice to match: as a wrong one
            return
        policy = self.ctx.policy
        if short:
            score = cosine(*common(embedding, self._enrolled))
            utterance.checks.append(Check(begin, end, score, score >= policy.short_threshold))
            return
        match = self._match(embedding, audio, speech)
        passed = match.state == "accept"
        if passed:
            self._verified_until = end
        elif self._soon_after(self._verified_until, begin):
            # The voice verified moments ago in this dictation: a window that misses the calibrated
            # bar (short windows often do) is held to the short-phrase bar instead, which another
            # voice's window does not reach either (docs/threshold.md, short phrases).
            passed = match.score >= policy.short_threshold
        utterance.checks.append(Check(begin, end, match.score, passed))

    def _check_end(self, utterance: Utterance) -> None:
        """Hold the last second of speech of an utterance whose last window passed to the raw floor, alone.

        Failing, it rejects that second and the silence after it, as any failing check does.
        """
        last = max(utterance.checks, key=lambda check: check.end, default=None)
        window = self._end_window(utterance.start, utterance.speech_end or utterance.end)
        if window is None or last is None or not last.passed or last.end < utterance.end:
            return
        begin, end, speech = window
        match = self._match(self._embedding(begin, end), self._slice(begin, end), speech)
        utterance.checks.append(Check(begin, utterance.end, match.score, match.score >= self.ctx.policy.threshold))

    def _end_window(self, start: int, speech_end: int) -> tuple[int, int, float] | None:
        """Return the last END_SECONDS of an utterance's speech (from ``start``) and its seconds of speech; None when too little."""
        if self._enrolled is None:
            return None
        begin = max(start, speech_end - int(END_SECONDS * SAMPLE_RATE))
        speech = self._endpointer.speech_seconds_between(begin, speech_end)
        return None if speech < END_MIN_SPEECH else (begin, speech_end, speech)

    def _decision_state(self) -> object:
        return self._verified_until

    def _restore_decision_state(self, state: object) -> None:
        self._verified_until = state

    def _end_windows(self, utterance: Utterance, speech_end: int, end: int) -> list[tuple[int, int]]:
        window = self._end_window(utterance.start, speech_end)
        return super()._end_windows(utterance, speech_end, end) + ([] if window is None else [window[:2]])

    def _match(self, embedding: np.ndarray, audio: np.ndarray, speech: float) -> decide.Match:
        """Return the calibrated decision every surface shares (docs/threshold.md) on a window's ``embedding``."""
        return decide.verify(embedding, self._enrolled, self.user, self.ctx.policy,
                             calibration.measure_quality(audio, speech), channels=self._channels,
                             band_edge_db=self._band_edge_db)

    def _parts(self, start: int, end: int, checks: list[Check], settled: int) -> list[Span]:
        return spans(start, end, checks, settled)

    def _message(self, span: Span, state: str, text: str | None, begin: int) -> dict:
        final = {"type": "final", "utterance": len(self.emitted) + 1, "state": state, "text": text,
                 "score": None if span.score is None else round(span.score, 4),
                 "threshold": self.ctx.policy.threshold, "start": seconds(begin), "end": seconds(span.end)}
        if text:
            final["language"] = self.written_language
        if not self.shows_scores:
            del final["score"], final["threshold"]  # scores are for the user and admins only
        return final

    def _record(self, state: str, whose: str | None, begin: int, end: int, score: float | None,
                reason: str | None = None) -> None:
        store.record(self.ctx.audit(
            self.request_id, "transcribe", state, claimed_user=self.user,
            matched_user=self.user if state == "accept" else None, score=None if self.standing else score,
            threshold=None,  # decided on a calibrated score
            reason=reason or self.standing or (None if state == "accept" else "other_voice" if state == "reject" else state),
            audio_seconds=seconds(end - begin),
        ))


def transcribe_recording(session: DictateSession, audio: np.ndarray) -> list[dict]:
    """Run a whole recording through the gate; return every message, the closing ``result`` last."""
    return run_recording(session, audio)


def summary_state(segments: list[dict]) -> str:
    """Return one state for a recording's segments: accept if any verified, else the most telling refusal."""
    states = {segment["state"] for segment in segments}
    for state in ("accept", "reject", "not_enough_speech"):
        if state in states:
            return state
    return "no_speech"
