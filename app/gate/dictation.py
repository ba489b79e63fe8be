"""Dictation gated by identity: transcribe only the utterances that verify as the user."""
from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass, replace

import numpy as np

from . import calibration, decide, store
from ..audio.vad import SAMPLE_RATE, Endpointer, speech_seconds
from ..engines.pool import Busy
from ..engines.speaker import MIN_SAMPLES
from .base import Context, SessionError, new_request_id, run_model, seconds

logger = logging.getLogger(__name__)

# Dictation re-verifies the voice on windows this long, this often, while someone speaks.
VERIFY_WINDOW = 2.0
VERIFY_STEP = 1.0
# Audio kept before an utterance's first voiced window, so its first word is not clipped.
LEAD_IN = 0.2


@dataclass
class _Utterance:
    """One stretch of speech in a dictation stream, in stream samples."""

    index: int
    start: int
    verified_until: int
    last_check: int
    rejected: bool = False
    score: float | None = None
    reason: str | None = None


class DictateSession:
    """Dictation gated by identity: transcribe only utterances that verify as the user.

    The stream is split into utterances by VAD. While one is spoken, its voice is
    checked on sliding windows; only audio up to the last accepted check is ever
    handed to Whisper (partials about once a second, and a final when the utterance
    ends). If the voice stops matching, the verified part is finalised at the pause
    nearest the change and the rest is reported as rejected, with no text.
    """

    mode = "dictate"

    def __init__(self, ctx: Context, user_name: str):
        self.ctx, self.user = ctx, user_name
        self.request_id = new_request_id()
        self.done = False
        policy = ctx.policy
        self._enrolled = store.find_user(user_name).voiceprint.centroid_vector()
        self._endpointer = Endpointer(policy.end_silence_ms, policy.max_utterance_seconds)
        self._audio = np.zeros(0, dtype=np.float32)
        self._offset = 0  # stream sample of self._audio[0]
        self._received = 0
        self._utterance: _Utterance | None = None
        self._count = 0
        self._partial: tuple[int, Future] | None = None
        self._last_partial = 0
        self._tally = {"accepted": 0, "rejected": 0, "unverified": 0}
        # Last, so that nothing after it can fail and leave the slot taken.
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
            messages += self._check_voice()
            self._start_partial()
        else:
            self._trim(self._endpointer.position - int(LEAD_IN * SAMPLE_RATE))
        return messages + self.poll()

    def stop(self) -> list[dict]:
        """End the stream: finish the open utterance and report the totals."""
        messages = []
        for kind, at in self._endpointer.flush():
            messages += self._event(kind, at)
        self.done = True
        return messages + [{"type": "result", "mode": "dictate", "user": self.user, "request_id": self.request_id,
                            "utterances": self._count, **self._tally}]

    def close(self) -> None:
        """Give back the session's stream slot; the adapter calls this however the session ended."""
        if self._slot:
            self._slot = False
            self.ctx.engines.streams.release()

    def poll(self) -> list[dict]:
        """Return a partial transcript that has finished computing, if any."""
        if self._partial is None or not self._partial[1].done():
            return []
        index, future = self._partial
        self._partial = None
        if self._utterance is None or self._utterance.index != index or self._utterance.rejected:
            return []  # that utterance has ended or turned out not to be the user's
        text = future.result().text
        return [{"type": "partial", "utterance": index, "text": text}] if text else []

    # -- utterances

    def _event(self, kind: str, at: int) -> list[dict]:
        if kind == "start":
            self._count += 1
            start = max(self._offset, at - int(LEAD_IN * SAMPLE_RATE))
            self._utterance = _Utterance(self._count, start, verified_until=start, last_check=start)
            self._last_partial = start
            return []
        utterance, self._utterance = self._utterance, None
        return self._finish(utterance, at) if utterance else []

    def _check_voice(self) -> list[dict]:
        """Verify the newest window of speech once a second; split off a change of decide."""
        utterance, policy = self._utterance, self.ctx.policy
        now = self._endpointer.position
        if (utterance.rejected or now - utterance.last_check < VERIFY_STEP * SAMPLE_RATE
                or self._endpointer.utterance_speech_seconds < policy.min_verify_speech):
            return []
        first = utterance.verified_until == utterance.start
        begin = utterance.start if first else max(utterance.start, now - int(VERIFY_WINDOW * SAMPLE_RATE))
        utterance.last_check = now
        match = self._score(begin, now)
        score = match.score
        if match.state == "accept":
            utterance.verified_until = now
            utterance.score = score if utterance.score is None else min(utterance.score, score)
            return []
        if first:
            utterance.rejected, utterance.score = True, score
            return []
        # The voice changed: keep what was verified up to the pause nearest the change.
        cut = self._endpointer.quietest(max(utterance.start, utterance.verified_until - int(VERIFY_WINDOW * SAMPLE_RATE)), now)
        cut = max(cut, utterance.start + MIN_SAMPLES)
        messages = self._finish(replace(utterance, verified_until=min(cut, utterance.verified_until)), cut)
        self._count += 1
        self._utterance = _Utterance(self._count, cut, cut, now, rejected=True, score=score)
        return messages

    def _finish(self, utterance: _Utterance, end: int) -> list[dict]:
        """Decide on an ended utterance and return its final message."""
        policy = self.ctx.policy
        if not utterance.rejected and end - utterance.verified_until > 0.3 * SAMPLE_RATE and utterance.verified_until > utterance.start:
            # Speech after the last check must match too, or it is left out.
            tail = self._score(max(utterance.start, end - int(VERIFY_WINDOW * SAMPLE_RATE)), end)
            if tail.state == "accept":
                utterance.verified_until = end
        if not utterance.rejected and utterance.verified_until == utterance.start:
            state = "not_enough_speech"
        else:
            state = "reject" if utterance.rejected else "accept"
        text = None
        if state == "accept":
            text = run_model(self.ctx, self.ctx.engines.transcriber.transcribe, self._slice(utterance.start, utterance.verified_until)).text
        self._tally[{"accept": "accepted", "reject": "rejected"}.get(state, "unverified")] += 1
        audit = self.ctx.audit(self.request_id, "transcribe", state, claimed_user=self.user,
                               matched_user=self.user if state == "accept" else None, score=utterance.score,
                               threshold=policy.threshold, reason=None if state == "accept" else state,
                               audio_seconds=seconds(end - utterance.start))
        if state == "not_enough_speech":
            store.record(audit)
        else:
            store.record_attempt(self.user, state == "accept", policy.lockout_attempts, policy.lockout_seconds, audit)
        self._trim(end)
        return [{"type": "final", "utterance": utterance.index, "state": state, "text": text,
                 "score": None if utterance.score is None else round(utterance.score, 4),
                 "threshold": policy.threshold, "start": seconds(utterance.start), "end": seconds(end)}]

    def _start_partial(self) -> None:
        """Transcribe the verified part so far, when a worker is free and a second has passed."""
        utterance = self._utterance
        pool = self.ctx.engines.pool
        if (utterance.rejected or self._partial is not None
                or utterance.verified_until - self._last_partial < self.ctx.policy.partial_interval * SAMPLE_RATE
                or pool.pending >= pool.workers):
            return  # partials are a courtesy: never queue them behind decisions
        self._last_partial = utterance.verified_until
        audio = self._slice(utterance.start, utterance.verified_until)
        try:
            self._partial = (utterance.index, pool.submit(self.ctx.engines.transcriber.transcribe, audio))
        except Busy:
            self._partial = None

    def _score(self, begin: int, end: int) -> decide.Match:
        audio = self._slice(begin, end)
        embedding = run_model(self.ctx, self.ctx.engines.speaker.embed, audio)
        quality = calibration.measure_quality(audio, speech_seconds(audio))
        return decide.verify(embedding, self._enrolled, self.user, self.ctx.policy, quality)

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
