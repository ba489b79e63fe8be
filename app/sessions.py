"""The voice sessions: enrollment, verification (voice login) and identity-gated dictation.

Protocol-independent state machines. An adapter (WebSocket, HTTP, Kõnele) decodes
audio to 16 kHz mono float32 and calls ``audio()``, ``stop()`` and ``poll()``; each
returns the messages (plain dicts) to send. Failures that end a session raise
SessionError with a stable code. Model calls go through the bounded inference pool.
"""
from __future__ import annotations

import logging
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, replace

import numpy as np

from . import store, tokens, voice
from .policy import Policy
from .pool import Busy
from .runtime import Engines
from .speaker import MIN_SAMPLES
from .store import Audit
from .vad import SAMPLE_RATE, Endpointer, speech_segments

logger = logging.getLogger(__name__)

# Dictation re-verifies the voice on windows this long, this often, while someone speaks.
VERIFY_WINDOW = 2.0
VERIFY_STEP = 1.0
# Audio kept before an utterance's first voiced window, so its first word is not clipped.
LEAD_IN = 0.2


class SessionError(Exception):
    """A failure that ends the session; ``code`` is stable, ``message`` is for people."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Context:
    """What a session needs from its surroundings."""

    engines: Engines
    policy: Policy
    secret_key: str
    protocol: str
    client_addr: str | None = None

    def audit(self, request_id: str, kind: str, decision: str, **fields) -> Audit:
        """Return an audit record of this context's protocol and client."""
        return Audit(request_id, kind, self.protocol, decision, client_addr=self.client_addr, **fields)


def new_request_id() -> str:
    """Return a fresh id for one request or session."""
    return uuid.uuid4().hex


def run_model(ctx: Context, fn, *args):
    """Run a model call on the pool; a full pool ends the session with ``busy``."""
    try:
        return ctx.engines.pool.run(fn, *args)
    except Busy as error:
        raise SessionError("busy", f"the server is at capacity ({error}); try again in a moment") from None


def _seconds(samples: int) -> float:
    return round(samples / SAMPLE_RATE, 3)


# --------------------------------------------------------------------------- checks

def user_problem(ctx: Context, name: str, request_id: str, kind: str) -> str | None:
    """Return why ``name``'s voice cannot be checked now (audited), or None.

    ``unknown_user``, ``disabled``, ``not_enrolled`` or ``locked``.
    """
    user = store.find_user(name)
    if user is None:
        problem = "unknown_user"
    elif not user.active:
        problem = "disabled"
    elif user.voiceprint is None:
        problem = "not_enrolled"
    elif user.is_locked():
        problem = "locked"
    else:
        return None
    store.record(ctx.audit(request_id, kind, problem, claimed_user=name if user else None, reason=problem))
    return problem


PROBLEM_MESSAGES = {
    "unknown_user": "there is no user by that name",
    "disabled": "this user is disabled",
    "not_enrolled": "this user has not enrolled a voice yet",
    "locked": "voice login is locked for a while after repeated rejects",
}


class ClipBuffer:
    """Collect one clip or utterance, refusing more than ``max_seconds`` of it."""

    def __init__(self, max_seconds: float, what: str):
        self.max_samples, self.max_seconds, self.what = int(max_seconds * SAMPLE_RATE), max_seconds, what
        self._chunks: list[np.ndarray] = []
        self._samples = 0

    def add(self, samples: np.ndarray) -> None:
        """Take more audio; raise ``too_long`` past the limit."""
        self._samples += samples.size
        if self._samples > self.max_samples:
            raise SessionError("too_long", f"{self.what} may last at most {self.max_seconds:g} s")
        self._chunks.append(samples)

    def take(self) -> np.ndarray:
        """Return the audio collected and start empty again."""
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.float32)
        self._chunks, self._samples = [], 0
        return audio


# --------------------------------------------------------------------------- verification

def verify_audio(ctx: Context, audio: np.ndarray, claimed: str | None, request_id: str | None = None,
                 kind: str = "verify") -> dict:
    """Decide whether ``audio`` is the claimed user's voice (1:1), or whose it is (1:N).

    Returns the result: state (accept, reject, no_speech, not_enough_speech,
    not_enrolled, disabled, locked, unknown_user), score, threshold, request id,
    and on accept a signed session token.
    """
    policy = ctx.policy
    request_id = request_id or new_request_id()
    kind = kind if claimed else "identify"
    result = {"type": "result", "mode": "verify", "request_id": request_id, "user": claimed,
              "score": None, "threshold": policy.threshold, "audio_seconds": _seconds(audio.size)}
    if claimed:
        problem = user_problem(ctx, claimed, request_id, kind)
        if problem:
            return {**result, "state": problem, "message": PROBLEM_MESSAGES[problem]}

    speech = sum(s.seconds for s in speech_segments(audio))
    result["speech_seconds"] = round(speech, 2)
    state = voice.speech_state(speech, policy.min_verify_speech)
    audit = ctx.audit(request_id, kind, "", claimed_user=claimed, threshold=policy.threshold,
                      audio_seconds=result["audio_seconds"])
    if state:
        store.record(replace(audit, decision=state, reason=state))
        return {**result, "state": state}

    embedding = run_model(ctx, ctx.engines.speaker.embed, audio)
    if claimed:
        enrolled = store.find_user(claimed).voiceprint.centroid_vector()
        match = voice.verify(embedding, enrolled, claimed, policy.threshold)
        audit = replace(audit, decision=match.state, score=match.score, matched_user=match.user if match.state == "accept" else None)
        store.record_attempt(claimed, match.state == "accept", policy.lockout_attempts, policy.lockout_seconds, audit)
    else:
        match = voice.identify(embedding, store.enrolled_voices(), policy.threshold, policy.identify_margin)
        store.record(replace(audit, decision=match.state, score=match.score, matched_user=match.user,
                             reason=None if match.state == "accept" else "unknown_speaker"))
    result.update(state=match.state, user=match.user if match.state == "accept" else claimed,
                  score=None if match.score is None else round(match.score, 4))
    if match.runner_up is not None:
        result["runner_up_score"] = round(match.runner_up, 4)
    if match.state == "accept":
        result["token"] = tokens.issue(ctx.secret_key, match.user, request_id)
        result["token_expires_in"] = policy.token_seconds
    return result


class VerifySession:
    """Voice login: collect one utterance, then decide on ``stop``."""

    mode = "verify"

    def __init__(self, ctx: Context, claimed: str | None):
        self.ctx, self.claimed = ctx, claimed
        self.request_id = new_request_id()
        self.done = False
        self._buffer = ClipBuffer(ctx.policy.max_clip_seconds, "an utterance")

    def audio(self, samples: np.ndarray) -> list[dict]:
        """Take more of the utterance."""
        self._buffer.add(samples)
        return []

    def stop(self) -> list[dict]:
        """Decide on the utterance received and end the session."""
        self.done = True
        return [verify_audio(self.ctx, self._buffer.take(), self.claimed, self.request_id)]

    def poll(self) -> list[dict]:
        """Nothing arrives between messages in a verification."""
        return []

    def close(self) -> None:
        """Nothing to give back."""


# --------------------------------------------------------------------------- enrollment

class EnrollSession:
    """Enrollment: check clip after clip; store the voiceprint once there is enough good speech."""

    mode = "enroll"

    def __init__(self, ctx: Context, user_id: int, user_name: str, invite_id: int | None):
        self.ctx, self.user_id, self.user_name, self.invite_id = ctx, user_id, user_name, invite_id
        self.request_id = new_request_id()
        self.done = False
        self._buffer = ClipBuffer(ctx.policy.max_clip_seconds, "a clip")
        self._embeddings: list[np.ndarray] = []
        self._speech = 0.0

    def audio(self, samples: np.ndarray) -> list[dict]:
        """Take more of the current clip."""
        self._buffer.add(samples)
        return []

    def stop(self) -> list[dict]:
        """End the current clip: accept or refuse it, report progress, and finish when complete."""
        messages = [self._clip(self._buffer.take())]
        if self._complete():
            messages.append(self._finish())
        return messages

    def poll(self) -> list[dict]:
        """Nothing arrives between clips."""
        return []

    def close(self) -> None:
        """Nothing to give back: an unfinished enrollment has stored nothing."""

    def _clip(self, audio: np.ndarray) -> dict:
        policy = self.ctx.policy
        quality = voice.measure(audio, speech_segments(audio))
        reason = voice.clip_problem(quality, policy.enroll_min_clip_speech)
        score = None
        if reason is None:
            embedding = run_model(self.ctx, self.ctx.engines.speaker.embed, audio)
            score = voice.consistency(embedding, self._embeddings)
            if score is not None and score < policy.threshold:
                reason = "inconsistent_voice"
            else:
                self._embeddings.append(embedding)
                self._speech += quality.speech_seconds
        store.record(self.ctx.audit(
            self.request_id, "enroll", "clip_accepted" if reason is None else "clip_refused",
            claimed_user=self.user_name, score=score, threshold=policy.threshold if score is not None else None,
            reason=reason, audio_seconds=_seconds(audio.size),
        ))
        return {
            "type": "progress",
            "clip": {"accepted": reason is None, "reason": reason, "speech_seconds": round(quality.speech_seconds, 2),
                     "level_dbfs": round(quality.speech_dbfs, 1), "consistency": None if score is None else round(score, 4)},
            "clips_accepted": len(self._embeddings),
            "clips_required": policy.enroll_min_clips,
            "speech_seconds": round(self._speech, 2),
            "speech_required": policy.enroll_min_total_speech,
            "percent": self._percent(),
        }

    def _percent(self) -> int:
        policy = self.ctx.policy
        speech = min(1.0, self._speech / policy.enroll_min_total_speech) if policy.enroll_min_total_speech else 1.0
        clips = min(1.0, len(self._embeddings) / policy.enroll_min_clips)
        # Both requirements must be met; the bar shows the one further from done.
        return int(100 * min(speech, clips))

    def _complete(self) -> bool:
        policy = self.ctx.policy
        return len(self._embeddings) >= policy.enroll_min_clips and self._speech >= policy.enroll_min_total_speech

    def _finish(self) -> dict:
        clips = np.stack(self._embeddings)
        audit = self.ctx.audit(self.request_id, "enroll", "enrolled", claimed_user=self.user_name,
                               matched_user=self.user_name, audio_seconds=round(self._speech, 2))
        try:
            store.save_voiceprint(self.user_id, clips, self.ctx.engines.speaker.model_id, self._speech,
                                  self.invite_id, audit)
        except store.InviteUsed as error:
            raise SessionError("invite_used", str(error)) from None
        self.done = True
        self._embeddings = []
        return {"type": "result", "mode": "enroll", "state": "enrolled", "user": self.user_name,
                "clips": len(clips), "speech_seconds": round(self._speech, 2), "request_id": self.request_id}


# --------------------------------------------------------------------------- dictation

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
        """Verify the newest window of speech once a second; split off a change of voice."""
        utterance, policy = self._utterance, self.ctx.policy
        now = self._endpointer.position
        if (utterance.rejected or now - utterance.last_check < VERIFY_STEP * SAMPLE_RATE
                or self._endpointer.utterance_speech_seconds < policy.min_verify_speech):
            return []
        first = utterance.verified_until == utterance.start
        begin = utterance.start if first else max(utterance.start, now - int(VERIFY_WINDOW * SAMPLE_RATE))
        utterance.last_check = now
        score = self._score(begin, now)
        if score >= policy.threshold:
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
            if tail >= policy.threshold:
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
                               audio_seconds=_seconds(end - utterance.start))
        if state == "not_enough_speech":
            store.record(audit)
        else:
            store.record_attempt(self.user, state == "accept", policy.lockout_attempts, policy.lockout_seconds, audit)
        self._trim(end)
        return [{"type": "final", "utterance": utterance.index, "state": state, "text": text,
                 "score": None if utterance.score is None else round(utterance.score, 4),
                 "threshold": policy.threshold, "start": _seconds(utterance.start), "end": _seconds(end)}]

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

    def _score(self, begin: int, end: int) -> float:
        embedding = run_model(self.ctx, self.ctx.engines.speaker.embed, self._slice(begin, end))
        return voice.verify(embedding, self._enrolled, self.user, self.ctx.policy.threshold).score

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


# --------------------------------------------------------------------------- opening a session

MODES = ("enroll", "verify", "dictate")


def open_session(ctx: Context, start: dict, admin: bool = False):
    """Check a ``start`` request and return the session it asks for, or raise SessionError.

    ``start`` holds ``mode``; ``user`` (a claim; optional for verify, which then
    identifies); ``invite`` (enroll without an admin session); ``token`` (a session
    token from an accepted verification, naming the user for dictation).
    """
    mode = start.get("mode")
    if mode not in MODES:
        raise SessionError("bad_mode", f"mode must be one of {', '.join(MODES)}")
    user = start.get("user")
    if user is not None and (not isinstance(user, str) or not user.strip()):
        raise SessionError("bad_message", "user must be a non-empty string")
    if mode == "enroll":
        return _open_enrollment(ctx, user, start.get("invite"), admin)
    if start.get("token"):
        try:
            token_user = tokens.read(ctx.secret_key, str(start["token"]), ctx.policy.token_seconds)
        except tokens.TokenError as error:
            raise SessionError(error.code, str(error)) from None
        if user and user != token_user:
            raise SessionError("bad_token", "the session token belongs to another user")
        user = token_user
    if mode == "dictate" and not user:
        raise SessionError("user_required", "dictation needs a user (or a session token)")
    if user:
        problem = user_problem(ctx, user, new_request_id(), "transcribe" if mode == "dictate" else "verify")
        if problem:
            raise SessionError(problem, PROBLEM_MESSAGES[problem])
    return DictateSession(ctx, user) if mode == "dictate" else VerifySession(ctx, user)


def _open_enrollment(ctx: Context, user: str | None, invite_token: str | None, admin: bool) -> EnrollSession:
    from .models import EnrollmentInvite

    if invite_token:
        invite = EnrollmentInvite.find_valid(str(invite_token))
        if invite is None:
            raise SessionError("bad_invite", "this enrollment invite is unknown, used or expired")
        if user and user != invite.user.name:
            raise SessionError("bad_invite", "this enrollment invite is for another user")
        target, invite_id = invite.user, invite.id
    elif admin:
        target, invite_id = store.find_user(user) if user else None, None
        if target is None:
            raise SessionError("unknown_user", PROBLEM_MESSAGES["unknown_user"])
    else:
        raise SessionError("not_allowed", "enrollment needs an invite (or an admin session)")
    if not target.active:
        raise SessionError("disabled", PROBLEM_MESSAGES["disabled"])
    return EnrollSession(ctx, target.id, target.name, invite_id)
