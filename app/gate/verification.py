"""Voice login: decide whether an utterance is the claimed user's voice (1:1), or whose it is (1:N)."""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from . import calibration, decide, store
from .. import tokens
from .base import PROBLEM_MESSAGES, ClipBuffer, Context, new_request_id, run_model, seconds, user_problem

logger = logging.getLogger(__name__)


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
              "score": None, "threshold": policy.threshold, "audio_seconds": seconds(audio.size)}
    if claimed:
        problem = user_problem(ctx, claimed, request_id, kind)
        if problem:
            return {**result, "state": problem, "message": PROBLEM_MESSAGES[problem]}

    speech = sum(s.seconds for s in ctx.engines.vad.segments(audio))
    quality = calibration.measure_quality(audio, speech)
    result["speech_seconds"] = round(speech, 2)
    state = decide.speech_state(speech, policy.min_verify_speech)
    # No threshold in the audit: the decision is on the calibrated score, and the raw cosine
    # beside the raw floor alone would read as the wrong reason.
    audit = ctx.audit(request_id, kind, "", claimed_user=claimed, threshold=None,
                      audio_seconds=result["audio_seconds"])
    if state:
        store.record(replace(audit, decision=state, reason=state))
        return {**result, "state": state}

    embedding = run_model(ctx, ctx.engines.speaker.embed, audio)
    if claimed:
        enrolled = store.find_user(claimed).voiceprint.centroid_vector()
        others = [v for name, v in store.enrolled_voices().items() if name != claimed]
        match = decide.verify(embedding, enrolled, claimed, policy, quality, others)
        audit = replace(audit, decision=match.state, score=match.score, matched_user=match.user if match.state == "accept" else None)
        store.record_attempt(claimed, match.state == "accept", policy.lockout_attempts, policy.lockout_seconds, audit)
    else:
        match = decide.identify(embedding, store.enrolled_voices(), policy, quality)
        store.record(replace(audit, decision=match.state, score=match.score, matched_user=match.user,
                             reason=None if match.state == "accept" else "unknown_speaker"))
    result.update(state=match.state, user=match.user if match.state == "accept" else claimed,
                  score=None if match.score is None else round(match.score, 4),
                  calibrated_score=None if match.calibrated is None else round(match.calibrated, 3),
                  calibrated_threshold=None if match.calibrated_threshold is None else round(match.calibrated_threshold, 3),
                  target_far=policy.target_far)
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
