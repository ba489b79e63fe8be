"""Voice login: decide whether an utterance is the claimed user's voice (1:1), or whose it is (1:N)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from ..engines.fused import PART_DIM, in_space
from . import calibration, decide, early, gallery, second_chance, store
from ..observe import metrics
from . import tokens
from ..errors import SessionError
from .base import PROBLEM_MESSAGES, ClipBuffer, Context, new_request_id, run_model, seconds, standing, start_model
from .challenge import Challenge, answered, new_challenge

logger = logging.getLogger(__name__)

# What a caller who is not an admin learns of a decision that was not an accept: the state,
# never the score or threshold (they would let someone tune a voice until it passes), and
# never whether the name exists (an unknown, disabled or unenrolled name answers ``reject``).
_HIDDEN = ("score", "threshold", "runner_up_score", "calibrated_score", "calibrated_threshold", "target_far")


def challenge_required(ctx: Context) -> bool:
    """Return True when a voice login must answer a spoken challenge (policy ``challenge``)."""
    return ctx.policy.challenge != "off"


@dataclass
class Attempts:
    """A WebSocket login that may be asked once more (second_chance.py): what its first attempt left."""

    first: decide.Match | None = None  # a near miss, to be decided with the next attempt
    short: np.ndarray | None = None  # too little speech: joined in front of the next attempt's audio
    asked: bool = False  # asked once already: the next answer is final


def verify_audio(ctx: Context, audio: np.ndarray, claimed: str | None, request_id: str | None = None,
                 kind: str = "verify", *, limit: bool = True, challenge: Challenge | None = None,
                 estimate: early.Estimate | None = None, attempts: Attempts | None = None) -> dict:
    """Decide whether ``audio`` is the claimed user's voice (1:1), or whose it is (1:N).

    Returns the result: state (accept, reject, replay, no_speech, not_enough_speech, locked
    with ``retry_after`` seconds; for admins also not_enrolled, disabled, unknown_user), request
    id, and on accept a signed session token and the score. ``limit=False`` (the caller is
    signed in as ``claimed``) skips the per-client limits and counts nothing against them.

    A login (kind verify) under the policy's challenge needs ``challenge``: it is accepted
    only when the voice verifies and the transcript of the same audio says the digits
    (else ``challenge_failed``; too late: ``challenge_expired``). Any other kind (transcribe)
    decides on the voice alone, and then issues no token while the challenge is on.

    ``estimate``: how to estimate the embedding from work done while the audio was said
    (early.py); a close call is then decided on the whole utterance's embedding.

    ``attempts``: a 1:1 login that may be asked for one more utterance (second_chance.py). Too
    little speech, or a near miss with the right digits, then answers state ``again`` (with a
    ``reason``) instead of a decision; the next call with the same ``attempts`` decides on both.
    """
    policy = ctx.policy
    request_id = request_id or new_request_id()
    login = kind == "verify"
    if login and challenge_required(ctx) and challenge is None:
        raise SessionError("challenge_required", "voice login needs a spoken challenge: ask for one first")
    kind = kind if claimed else "identify"
    result = {"type": "result", "mode": "verify", "request_id": request_id, "user": claimed,
              "score": None, "threshold": policy.threshold, "audio_seconds": seconds(audio.size)}
    # No threshold in the audit: the decision is on the calibrated score, and the raw cosine
    # beside the raw floor alone would read as the wrong reason.
    audit = ctx.audit(request_id, kind, "", claimed_user=claimed, threshold=None,
                      audio_seconds=result["audio_seconds"])
    hold = store.hold_attempt(claimed, ctx.client_addr, policy) if limit else None
    if hold is not None and hold.wait:
        store.record(replace(audit, decision="locked", reason="client_limited"))
        return _shown(ctx, {**result, "state": "locked", "retry_after": hold.wait,
                            "message": f"{PROBLEM_MESSAGES['locked']} (in {hold.wait} s)"})
    if attempts is not None and (not claimed or not login):
        attempts = None  # a second chance is for a 1:1 login only
    if attempts is not None and attempts.short is not None:
        # The first attempt had too little speech: decided as one utterance with this one.
        audio, estimate = np.concatenate([attempts.short, audio]), None
        attempts.short = None
        result["audio_seconds"] = seconds(audio.size)
        audit = replace(audit, audio_seconds=result["audio_seconds"])
    try:
        return _decide(ctx, audio, claimed, login, limit, challenge, result, audit, hold, estimate, attempts)
    finally:
        store.let_go(hold)  # ended without a decision on the voice (no speech, an error): no failure


def _decide(ctx: Context, audio: np.ndarray, claimed: str | None, login: bool, limit: bool,
            challenge: Challenge | None, result: dict, audit: store.Audit, hold: store.Hold | None,
            estimate: early.Estimate | None, attempts: Attempts | None) -> dict:
    """Decide a voice attempt let through the client's limits (``hold`` counts it as a failure until decided)."""
    policy = ctx.policy
    if login and challenge is not None and challenge.expired():
        store.record(replace(audit, decision="challenge_expired", reason="challenge_expired"))
        return _shown(ctx, {**result, "state": "challenge_expired",
                            "message": "the challenge has expired; ask for a new one and say it within a minute"})
    problem = standing(store.find_user(claimed)) if claimed else None
    if problem and ctx.admin:
        store.record(replace(audit, decision=problem, reason=problem,
                             claimed_user=None if problem == "unknown_user" else claimed))
        return {**result, "state": problem, "message": PROBLEM_MESSAGES[problem]}

    # A streamed login's estimate is the last work on the voice: started first, it runs while the
    # speech is measured (a core each), and is not waited for when there is too little speech.
    estimated = start_model(ctx, estimate.embed, audio) if estimate is not None else None
    speech = sum(s.seconds for s in ctx.engines.vad.segments(audio))
    quality = calibration.measure_quality(audio, speech)
    result["speech_seconds"] = round(speech, 2)
    state = decide.speech_state(speech, policy.min_verify_speech)
    if state and estimated is not None:
        estimated.cancel()
    if state and attempts is not None and not attempts.asked:
        # Not counted as a failure: nothing was decided. The same digits, said again, finish it.
        # Asked of a name that cannot log in too, so that the answer does not tell which names exist.
        attempts.asked, attempts.short = True, audio
        store.record(replace(audit, decision="again", reason=state))
        return _shown(ctx, {**result, "type": "again", "state": "again", "reason": state,
                            "message": "too little speech to decide: say the digits again, in full"})
    if state:
        store.record(replace(audit, decision=state, reason=state))
        return _shown(ctx, {**result, "state": state})

    embedding = estimated.result() if estimated is not None else run_model(ctx, ctx.engines.speaker.embed, audio)
    if problem:
        # Decided like a wrong voice, after the same work, so that a stranger cannot tell the two apart.
        store.record_attempt(claimed, False, policy.lockout_attempts, policy.lockout_seconds,
                             replace(audit, decision="reject", reason=problem,
                                     claimed_user=None if problem == "unknown_user" else claimed),
                             counted=limit, hold=hold)
        return _shown(ctx, {**result, "state": "reject"})
    match, account, copy = _judge(embedding, claimed, policy, quality)
    if estimate is not None and not early.settled(match, policy, estimate.bands, copy):
        # A refusal, or an accept near a threshold where the estimate's small error could be the
        # decision: decided on the whole utterance.
        metrics.count_login_embedding("redecided")
        embedding = run_model(ctx, ctx.engines.speaker.embed, audio)
        match, account, copy = _judge(embedding, claimed, policy, quality)
    elif estimate is not None:
        metrics.count_login_embedding("estimate")
    if attempts is not None and attempts.first is not None:
        # The second of two attempts: decided on both (second_chance.combined), the reason audited.
        match, attempts.first = second_chance.combined(attempts.first, match), None
        account = store.find_user(claimed) if match.state == "accept" else None
        copy = None if account is None else _replayed(embedding, account, policy)
        audit = replace(audit, reason="second_attempt")
    elif (attempts is not None and not attempts.asked
          and second_chance.near_miss(match, policy.second_chance_band)
          and (challenge is None or answered(challenge, run_model(ctx, ctx.engines.transcriber.transcribe, audio).text))):
        # Just under the threshold, with the right digits: one more utterance, decided with this one.
        # Counted as a failure until then, so that near misses cannot be tried for free.
        attempts.asked, attempts.first = True, match
        store.record_attempt(claimed, False, policy.lockout_attempts, policy.lockout_seconds,
                             replace(audit, decision="again", score=match.score, reason="near_miss"),
                             counted=limit, hold=hold)
        return _shown(ctx, {**result, "type": "again", "state": "again", "reason": "near_miss",
                            "score": round(match.score, 4), "calibrated_score": round(match.calibrated, 3),
                            "calibrated_threshold": round(match.calibrated_threshold, 3),
                            "message": "nearly: say the new digits once more to decide on both attempts"})
    if claimed:
        audit = replace(audit, decision=match.state, score=match.score,
                        matched_user=match.user if match.state == "accept" else None)
    else:
        audit = replace(audit, decision=match.state, score=match.score, matched_user=match.user,
                        reason=None if match.state == "accept" else "unknown_speaker")
    if account is not None:
        if copy >= policy.replay_similarity:
            # A near-copy of audio the user already gave: a recording of it, not the person.
            store.record_attempt(claimed, False, policy.lockout_attempts, policy.lockout_seconds,
                                 replace(audit, decision="replay", matched_user=None, reason=f"replay {copy:.3f}"),
                                 counted=limit, hold=hold)
            return _shown(ctx, {**result, "state": "replay", "score": round(match.score, 4),
                                "message": "this sounds like a recording of an earlier sign-in; speak live"})
        if login and challenge is not None and not answered(
                challenge, run_model(ctx, ctx.engines.transcriber.transcribe, audio).text):
            # The right voice saying other words: a recording made before the challenge existed.
            store.record_attempt(claimed, False, policy.lockout_attempts, policy.lockout_seconds,
                                 replace(audit, decision="challenge_failed", matched_user=None,
                                         reason="challenge_failed"), counted=limit, hold=hold)
            return _shown(ctx, {**result, "state": "challenge_failed", "score": round(match.score, 4),
                                "message": "the voice matched but the digits said were not the ones shown"})
        if policy.replay_seconds > 0:
            store.remember_voice(account.id, embedding, policy.replay_seconds)
    store.record_attempt(claimed, match.state == "accept", policy.lockout_attempts, policy.lockout_seconds, audit,
                         counted=limit, hold=hold)
    result.update(state=match.state, user=match.user if match.state == "accept" else claimed,
                  score=None if match.score is None else round(match.score, 4),
                  calibrated_score=None if match.calibrated is None else round(match.calibrated, 3),
                  calibrated_threshold=None if match.calibrated_threshold is None else round(match.calibrated_threshold, 3),
                  target_far=policy.target_far)
    if match.runner_up is not None:
        result["runner_up_score"] = round(match.runner_up, 4)
    if match.state == "accept" and (login or not challenge_required(ctx)):
        result["token"] = tokens.issue(ctx.secret_key, account.public_id, account.name, result["request_id"])
        result["token_expires_in"] = policy.token_seconds
    return _shown(ctx, result)


def _judge(embedding: np.ndarray, claimed: str | None, policy, quality: calibration.Quality):
    """Return the match of ``embedding`` (to ``claimed``, or 1:N), the account accepted (or None), and its replay similarity."""
    voices = gallery.current()
    if claimed:
        voiceprint = store.find_user(claimed).voiceprint
        match = decide.verify_among(embedding, voiceprint.centroid_vector(), claimed, voices.names, voices.columns,
                                    policy, quality, row=voices.rows.get(claimed), stats=voices.stats,
                                    channels=voiceprint.channel_vectors(), band_edge_db=voiceprint.band_edge_db)
    else:
        match = decide.identify_among(embedding, voices.names, voices.columns, policy, quality, stats=voices.stats)
    account = store.find_user(match.user) if match.state == "accept" else None
    if account is None:
        return match, None, None
    return match, account, _replayed(embedding, account, policy)


def _replayed(embedding: np.ndarray, account, policy) -> float:
    """Return how near ``embedding`` is to a copy of the audio ``account`` gave lately (replay_similarity)."""
    return replay_similarity(embedding, store.given_voices(account, policy.replay_seconds))


def replay_similarity(embedding: np.ndarray, given: np.ndarray) -> float:
    """Return the highest cosine of ``embedding``'s ECAPA part to that of the unit embeddings ``given`` (rows).

    ECAPA's, also where both are fused: the rule (policy.replay_similarity) was measured on it, and
    CAM++ finds a studio reader's different sentences nearly as alike as copies of one.
    """
    if given.size == 0:
        return -1.0
    embedding, given = in_space(embedding, PART_DIM), in_space(given, PART_DIM)
    return float(np.max(given @ embedding / np.linalg.norm(embedding)))


def _shown(ctx: Context, result: dict) -> dict:
    """Return ``result`` as the caller may see it: scores for admins, and for the user accepted."""
    if ctx.admin or result["state"] == "accept":
        return result
    return {k: v for k, v in result.items() if k not in _HIDDEN}


class VerifySession:
    """Voice login: collect one utterance, then decide on ``stop``.

    With ``second_chance`` (the client asked for it in ``start``), a 1:1 login with too little
    speech or a near miss answers ``again`` and takes one more utterance (second_chance.py).
    """

    mode = "verify"

    def __init__(self, ctx: Context, claimed: str | None, second_chance: bool = False):
        self.ctx, self.claimed = ctx, claimed
        self.request_id = new_request_id()
        self.done = False
        self._buffer = ClipBuffer(ctx.policy.max_clip_seconds, "an utterance")
        self._attempts = Attempts() if second_chance else None  # verify_audio keeps it to 1:1 logins
        self._early = self._early_frames()
        # Fresh for this session and used by its one decision: single-use and bound to it.
        self.challenge = new_challenge() if challenge_required(ctx) else None

    def _early_frames(self) -> early.EarlyFrames | None:
        """Return the voice's work while the person speaks, where the speaker model can split it (early.py)."""
        speaker = self.ctx.engines.speaker
        return early.EarlyFrames(speaker, self.ctx.engines.pool) if getattr(speaker, "streams", False) else None

    def opening(self) -> list[dict]:
        """Return what to send before ``ready``: the challenge to say, when the policy asks for one."""
        if self.challenge is None:
            return []
        return [{"type": "challenge", "text": self.challenge.text, "expires_in": self.challenge.expires_in()}]

    def audio(self, samples: np.ndarray) -> list[dict]:
        """Take more of the utterance."""
        self._buffer.add(samples)
        if self._early is not None:
            self._early.offer(self._buffer.peek, self._buffer.samples)
        return []

    def stop(self) -> list[dict]:
        """Decide on the utterance received and end the session."""
        self.done = True
        estimate = self._early.estimator(self._buffer.samples) if self._early is not None else None
        if self._early is not None and estimate is None:
            metrics.count_login_embedding("whole")
        result = verify_audio(self.ctx, self._buffer.take(), self.claimed, self.request_id, challenge=self.challenge,
                              estimate=estimate, attempts=self._attempts)
        if result["state"] != "again":
            return [result]
        self.done = False
        if self._early is not None:
            self._early.close()
            self._early = self._early_frames()
        if result["reason"] == "near_miss" and self.challenge is not None:
            # The digits were said once already, where anyone near could record them.
            self.challenge = new_challenge()
        return self.opening() + [result]

    def poll(self) -> list[dict]:
        """Nothing arrives between messages in a verification."""
        return []

    def close(self) -> None:
        """End an early pass still running."""
        if self._early is not None:
            self._early.close()
