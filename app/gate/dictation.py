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
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from . import calibration, decide, store
from .base import Context, SessionError, new_request_id, run_model, seconds
from .release import ACCEPT, PENDING, REJECT, STEP_SAMPLES, WINDOW_SAMPLES, Check, Span, horizon, spans
from ..audio.vad import SAMPLE_RATE
from ..engines.pool import Busy
from ..engines.speaker import cosine

logger = logging.getLogger(__name__)

# Audio kept before an utterance's first voiced window, so its first word is not clipped.
LEAD_IN = 0.2
# A check needs this much speech in its window; windows with less are left to their neighbours.
MIN_WINDOW_SPEECH = 1.0
# At a boundary with another voice, an accepted stretch is cut at a pause up to this far
# inside it, if there is one, so that Whisper is not handed half a word (inward never leaks).
SNAP_SECONDS = 0.3
# Accepted stretches shorter than this hold no word worth transcribing.
MIN_TEXT_SECONDS = 0.3


@dataclass
class _Utterance:
    """One stretch of speech in the stream, in stream samples, with the checks made on it so far."""

    start: int
    end: int | None = None
    checks: list[Check] = field(default_factory=list)
    emitted_until: int = 0  # finals have been sent for everything before this sample
    partial_sent: bool = False

    def __post_init__(self):
        self.emitted_until = self.start


class DictateSession:
    """Dictation gated by identity: ``audio`` in, partials and finals out (see the module docstring).

    ``live``: a real-time stream that holds one of the server's dictation slots; a whole
    recording (HTTP) takes none and computes no partials. ``shows_scores``: finals carry the
    scores (the user's own, or an admin's view). ``standing``: why a stranger-named user cannot
    be verified (unknown_user, disabled, not_enrolled): every check then fails, as a wrong voice.
    """

    mode = "dictate"

    def __init__(self, ctx: Context, user_name: str, live: bool = True, shows_scores: bool = True,
                 standing: str | None = None):
        self.ctx, self.user = ctx, user_name
        self.shows_scores, self.standing = shows_scores, standing
        self.request_id = new_request_id()
        self.done = False
        policy = ctx.policy
        self.partials = live and policy.partial_interval != float("inf")
        self._enrolled = None if standing else store.find_user(user_name).voiceprint.centroid_vector()
        self._endpointer = ctx.engines.vad.endpointer(policy.end_silence_ms, policy.max_utterance_seconds)
        self._audio = np.zeros(0, dtype=np.float32)
        self._offset = 0  # stream sample of self._audio[0]
        self._received = 0
        self._utterance: _Utterance | None = None
        self._next_check = 0
        self._finals = 0
        self._partial: tuple[int, Future] | None = None  # (span begin, transcription)
        self._last_partial = 0
        self._accepted_until: int | None = None  # end of the user's last accepted speech (context for short phrases)
        self._tally = {"accepted": 0, "rejected": 0, "unverified": 0}
        self.segments: list[dict] = []  # every final, for callers that answer once (HTTP)
        # Last, so that nothing after it can fail and leave the slot taken.
        self._slot = False
        if live:
            self._slot = ctx.engines.streams.acquire()
            if not self._slot:
                raise SessionError("busy", f"the server is taking all the dictations it can keep up with "
                                           f"({ctx.engines.streams.limit}); try again in a moment")

    # -- adapter interface

    def audio(self, samples: np.ndarray) -> list[dict]:
        """Take more of the stream; return partials and finals that are ready."""
        self._received += samples.size
        if self._received > self.ctx.policy.max_dictation_seconds * SAMPLE_RATE:
            raise SessionError("too_long", f"a dictation may last at most {self.ctx.policy.max_dictation_seconds:g} s")
        self._audio = np.concatenate([self._audio, samples])
        messages = []
        for kind, at in self._endpointer.feed(samples):
            messages += self._event(kind, at)
        if self._utterance is not None:
            self._run_checks(self._endpointer.position)
            messages += self._settle()
            self._start_partial()
        else:
            # A start is found only after some speech, and dated back: keep enough for its lead-in
            # whatever the framing, so that every surface cuts the same utterance.
            self._trim(self._endpointer.position - self._endpointer.start_lag - int(LEAD_IN * SAMPLE_RATE))
        return messages + self.poll()

    def stop(self) -> list[dict]:
        """End the stream: finish the open utterance and report the totals."""
        messages = []
        for kind, at in self._endpointer.flush():
            messages += self._event(kind, at)
        self.done = True
        return messages + [{"type": "result", "mode": "dictate", "user": self.user, "request_id": self.request_id,
                            "utterances": self._finals, **self._tally}]

    def close(self) -> None:
        """Give back the stream slot, and audit any text a vanished client was shown; adapters always call this."""
        utterance = self._utterance
        try:
            if not self.done and utterance is not None and utterance.partial_sent:
                # The client left mid-utterance after seeing partial text: that text needs its row too.
                utterance.partial_sent = False
                self._record(ACCEPT, utterance.emitted_until, self._endpointer.position, None, reason="client_left")
        finally:
            if self._slot:
                self._slot = False
                self.ctx.engines.streams.release()

    def partial_in_flight(self) -> bool:
        """Return True while a partial transcript is being computed (``poll`` returns it when done)."""
        return self._partial is not None and not self._partial[1].done()

    def poll(self) -> list[dict]:
        """Return a partial transcript that has finished computing, if it still stands."""
        if self._partial is None or not self._partial[1].done():
            return []
        begin, future = self._partial
        self._partial = None
        utterance = self._utterance
        if utterance is None or utterance.emitted_until != begin:
            return []  # that stretch has been settled by a final meanwhile
        text = future.result().text
        if not text:
            return []
        utterance.partial_sent = True
        return [{"type": "partial", "utterance": self._finals + 1, "text": text}]

    # -- utterances and checks

    def _event(self, kind: str, at: int) -> list[dict]:
        if kind == "start":
            start = max(self._offset, at - int(LEAD_IN * SAMPLE_RATE))
            self._utterance = _Utterance(start)
            self._next_check = start + WINDOW_SAMPLES
            self._last_partial = start
            return []
        utterance = self._utterance
        if utterance is None:
            return []
        self._run_checks(at)
        utterance.end = at
        messages = self._finish(utterance)
        self._utterance = None
        self._trim(at)
        return messages

    def _run_checks(self, until: int) -> None:
        """Make the periodic checks of the open utterance that end by ``until``.

        They end on a fixed grid from the utterance's start, so every surface decides
        alike whatever its framing (50 ms browser frames, Kõnele's 200 ms, a whole upload).
        """
        while self._next_check <= until:
            self._check(self._utterance, self._next_check - WINDOW_SAMPLES, self._next_check)
            self._next_check += STEP_SAMPLES

    def _check(self, utterance: _Utterance, begin: int, end: int, threshold: float | None = None) -> None:
        """Score the window [begin, end) against the user's voice, if it holds enough speech."""
        begin = max(begin, utterance.start)
        speech = self._endpointer.speech_seconds_between(begin, end)
        enough = min(MIN_WINDOW_SPEECH, self.ctx.policy.min_verify_speech)  # calibration decides short speech
        if speech < enough and threshold is None:
            return
        audio = self._slice(begin, end)
        embedding = run_model(self.ctx, self.ctx.engines.speaker.embed, audio)
        if self._enrolled is None:
            utterance.checks.append(Check(begin, end, -1.0, False))  # no voice to match: as a wrong one
            return
        if threshold is None:  # the calibrated decision every surface shares (docs/threshold.md)
            quality = calibration.measure_quality(audio, speech)
            match = decide.verify(embedding, self._enrolled, self.user, self.ctx.policy, quality)
            utterance.checks.append(Check(begin, end, match.score, match.state == "accept"))
            return
        score = cosine(embedding, self._enrolled)
        utterance.checks.append(Check(begin, end, score, score >= threshold))

    def _finish(self, utterance: _Utterance) -> list[dict]:
        """Check an ended utterance to its end and settle all of it."""
        end = utterance.end
        if not utterance.checks:
            speech = self._endpointer.speech_seconds_between(utterance.start, end)
            if speech >= self.ctx.policy.min_verify_speech:
                self._check(utterance, end - WINDOW_SAMPLES, end)
            elif self._short_phrase_allowed(utterance):
                # A short phrase right after the user's verified speech: decided on its own, stricter.
                self._check(utterance, utterance.start, end, threshold=self.ctx.policy.short_threshold)
        elif max(check.end for check in utterance.checks) < end:
            self._check(utterance, end - WINDOW_SAMPLES, end)
        return self._settle(utterance)

    def _short_phrase_allowed(self, utterance: _Utterance) -> bool:
        """Return True when a phrase too short to verify alone follows the user's own accepted speech closely."""
        policy = self.ctx.policy
        return (policy.short_context_seconds > 0 and self._accepted_until is not None
                and utterance.start - self._accepted_until <= policy.short_context_seconds * SAMPLE_RATE)

    def _settle(self, utterance: _Utterance | None = None) -> list[dict]:
        """Send the finals of every stretch of the utterance that nothing can change any more."""
        utterance = utterance or self._utterance
        ended = utterance.end is not None
        end = utterance.end if ended else self._endpointer.position
        settled = horizon(utterance.checks, utterance.end)
        if settled is None or settled <= utterance.emitted_until:
            return []
        parts = spans(utterance.start, end, utterance.checks, settled)
        # While the utterance is open, the stretch reaching the horizon may still grow: it waits.
        ready = [s for s in parts if s.end > utterance.emitted_until and (ended or s.end < settled)]
        messages = []
        for span in ready:
            index = parts.index(span)
            neighbours = (parts[index - 1] if index else None, parts[index + 1] if index + 1 < len(parts) else None)
            messages += self._final(span, utterance, neighbours)
        return messages

    def _final(self, span: Span, utterance: _Utterance, neighbours: tuple[Span | None, Span | None]) -> list[dict]:
        """Decide one settled stretch: transcribe it if accepted; audit it; return its final (if worth one)."""
        begin = max(span.begin, utterance.emitted_until)
        utterance.emitted_until = span.end
        if span.state != ACCEPT and span.end - begin < MIN_TEXT_SECONDS * SAMPLE_RATE:
            return []  # a sliver between checks: too short to hold a word
        state = {ACCEPT: "accept", REJECT: "reject", PENDING: "not_enough_speech"}[span.state]
        text = None
        if state == "accept":
            before, after = neighbours
            cut_begin = self._snap(begin, +1) if before is not None and before.state == REJECT else begin
            cut_end = self._snap(span.end, -1) if after is not None and after.state == REJECT else span.end
            text = self._transcribe(cut_begin, cut_end)
            self._accepted_until = span.end
        utterance.partial_sent = False
        self._finals += 1
        self._tally[{"accept": "accepted", "reject": "rejected"}.get(state, "unverified")] += 1
        self._record(state, begin, span.end, span.score)
        final = {"type": "final", "utterance": self._finals, "state": state, "text": text,
                 "score": None if span.score is None else round(span.score, 4),
                 "threshold": self.ctx.policy.threshold, "start": seconds(begin), "end": seconds(span.end)}
        if not self.shows_scores:
            del final["score"], final["threshold"]  # scores are for the user and admins only
        self.segments.append(final)
        return [final]

    def _snap(self, at: int, direction: int) -> int:
        """Move a cut at ``at`` into the accepted side (``direction``) to a pause within SNAP_SECONDS, if there is one."""
        reach = int(SNAP_SECONDS * SAMPLE_RATE)
        low, high = (at, at + reach) if direction > 0 else (at - reach, at)
        pause = self._endpointer.pause_in(max(low, self._offset), high)
        return at if pause is None else pause

    def _transcribe(self, begin: int, end: int) -> str:
        if end - begin < MIN_TEXT_SECONDS * SAMPLE_RATE:
            return ""
        return run_model(self.ctx, self.ctx.engines.transcriber.transcribe, self._slice(begin, end)).text

    def _record(self, state: str, begin: int, end: int, score: float | None, reason: str | None = None) -> None:
        store.record(self.ctx.audit(
            self.request_id, "transcribe", state, claimed_user=self.user,
            matched_user=self.user if state == "accept" else None, score=None if self.standing else score,
            threshold=None,  # decided on a calibrated score
            reason=reason or self.standing or (None if state == "accept" else "other_voice" if state == "reject" else state),
            audio_seconds=seconds(end - begin),
        ))

    def _start_partial(self) -> None:
        """Transcribe the accepted stretch that is still growing, when a worker is free and enough is new."""
        utterance = self._utterance
        pool = self.ctx.engines.pool
        if not self.partials or self._partial is not None or pool.pending >= pool.workers:
            return  # partials are a courtesy: never queue them behind decisions
        settled = horizon(utterance.checks, None)
        if settled is None or settled - self._last_partial < self.ctx.policy.partial_interval * SAMPLE_RATE:
            return
        parts = spans(utterance.start, settled, utterance.checks, settled)
        growing = parts[-1] if parts else None
        if growing is None or growing.state != ACCEPT or growing.begin != utterance.emitted_until:
            return
        self._last_partial = settled
        try:
            self._partial = (growing.begin, pool.submit(partial(self.ctx.engines.transcriber.transcribe, draft=True),
                                                        self._slice(growing.begin, settled)))
        except Busy:
            self._partial = None

    def _slice(self, begin: int, end: int) -> np.ndarray:
        return self._audio[max(0, begin - self._offset): max(0, end - self._offset)]

    def _trim(self, keep_from: int) -> None:
        """Drop audio before ``keep_from`` that no open utterance needs (it is never stored)."""
        if self._utterance is not None:
            keep_from = min(keep_from, self._utterance.start)
        drop = keep_from - self._offset
        if drop > 0:
            self._audio = self._audio[drop:]
            self._offset = keep_from


# Audio is handed to the engine in blocks this long, as a live stream would arrive.
BLOCK = SAMPLE_RATE // 4


def transcribe_recording(session: DictateSession, audio: np.ndarray) -> list[dict]:
    """Run a whole recording through the gate; return every message, the closing ``result`` last."""
    messages = []
    for start in range(0, audio.size, BLOCK):
        messages += session.audio(audio[start:start + BLOCK])
    return messages + session.stop()


def summary_state(segments: list[dict]) -> str:
    """Return one state for a recording's segments: accept if any verified, else the most telling refusal."""
    states = {segment["state"] for segment in segments}
    for state in ("accept", "reject", "not_enough_speech"):
        if state in states:
            return state
    return "no_speech"
