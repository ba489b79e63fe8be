"""Audit events in plain words: what happened, how it ended, and why, for people to read."""
from __future__ import annotations

from dataclasses import dataclass

KINDS = {
    "enroll": "Enrollment",
    "verify": "Voice login",
    "identify": "Voice login (who is it?)",
    "transcribe": "Dictation",
    "meeting": "Meeting line",
    "command": "Voice command (Home Assistant)",
    "admin": "Admin action",
    "self": "Own account",
}

DECISIONS = {
    "accept": "Accepted",
    "reject": "Rejected",
    "enrolled": "Enrolled",
    "clip_accepted": "Clip accepted",
    "clip_refused": "Clip refused",
    "no_speech": "No speech heard",
    "not_enough_speech": "Too little speech",
    "unknown_user": "Unknown user",
    "not_enrolled": "Not enrolled",
    "disabled": "Account disabled",
    "locked": "Voice login locked",
    "replay": "Replay refused",
    "challenge_failed": "Wrong digits",
    "challenge_expired": "Challenge expired",
    "again": "Asked to say it once more",
    "bad_key": "Wrong dictation key",
    "no_key": "No dictation key",
    # Admin and self-service actions.
    "user_created": "User created",
    "user_deleted": "User deleted",
    "user_enabled": "User enabled",
    "user_disabled": "User disabled",
    "user_unlocked": "User unlocked",
    "invite_issued": "Enrollment link issued",
    "enrollment_reset": "Voiceprint erased",
    "dictation_key_revoked": "Dictation key revoked",
    "settings_changed": "Settings changed",
    "settings_reset": "Settings reset to defaults",
    "invite_requested": "New enrollment link requested",
    "reenroll_started": "Re-enrollment started",
}

REASONS = {
    "no_speech": "no speech was heard",
    "too_short": "too little speech in the clip",
    "broken_audio": "the audio arrived broken (lost or late on the way)",
    "not_enough_speech": "too little speech to decide",
    "too_quiet": "the voice was too quiet",
    "clipped": "the recording was distorted (too loud)",
    "inconsistent_voice": "did not sound like the earlier clips",
    "unknown_speaker": "the voice matched nobody enrolled",
    "unknown_user": "nobody has that user name",
    "not_enrolled": "the user has no voiceprint yet",
    "disabled": "the account is disabled",
    "locked": "too many failed attempts from this client address",
    "client_limited": "too many failed attempts from this client address",
    "challenge_failed": "the voice matched, the digits said were not the ones shown",
    "challenge_expired": "answered after the challenge's minute was up",
    "bad_key": "the dictation URL's key is wrong or revoked",
    "no_key": "the dictation URL carries no key",
    "reject": "the voice did not match",
    "other_voice": "another voice than the user's",
    "client_left": "the client left mid-utterance after seeing partial text",
    "near_miss": "the voice came just short of the threshold: decided with one more attempt",
    "second_attempt": "decided on two attempts together (a near miss, then one more)",
}

GOOD = {"accept", "enrolled", "clip_accepted"}
BAD = {"reject", "clip_refused", "locked", "disabled", "unknown_user", "bad_key", "no_key", "replay", "challenge_failed",
       "challenge_expired"}


@dataclass(frozen=True)
class Described:
    """One audit event in words: kind, decision, reason, and what its score measures."""

    kind: str
    decision: str
    reason: str
    score_label: str  # "voice match", "voice consistency" or ""
    tone: str  # ok, bad or ""


def kind_label(kind: str) -> str:
    """Return a kind in words."""
    return KINDS.get(kind, kind.replace("_", " ").capitalize())


def decision_label(decision: str) -> str:
    """Return a decision in words."""
    return DECISIONS.get(decision, decision.replace("_", " ").capitalize())


def _vs(score: float | None, threshold: float | None) -> str:
    """Return "(0.62 ≥ 0.40)" or "(0.21 < 0.40)", or "" without both numbers."""
    if score is None or threshold is None:
        return ""
    return f"({score:.2f} {'≥' if score >= threshold else '<'} {threshold:.2f})"


def _join(text: str, numbers: str) -> str:
    return f"{text} {numbers}" if numbers else text


def reason_text(event) -> str:
    """Return why ``event`` (an AuditEvent) ended as it did, in a short sentence; never empty."""
    kind, decision, reason = event.kind, event.decision, event.reason
    numbers = _vs(event.score, event.threshold)
    if kind in ("admin", "self"):
        return reason or ("by the user" if kind == "self" else "by an admin")
    if kind == "enroll":
        if decision == "clip_accepted":
            return _join("sounds like the earlier clips", numbers) if event.score is not None else "first clip"
        if decision == "enrolled":
            return "enough good clips: voiceprint stored"
        if reason == "inconsistent_voice":
            return _join(REASONS[reason], numbers)
    if kind == "meeting" and reason in (None, "unknown_speaker"):
        return "a roster member's voice" if decision == "accept" else "nobody on the roster: not transcribed"
    if kind == "command" and reason in (None, "unknown_speaker"):
        return "a household member's voice" if decision == "accept" else "nobody in the household: not transcribed"
    if decision == "accept":
        if reason in REASONS:
            return REASONS[reason]
        return _join("voice matched", numbers)
    if decision == "replay":
        similarity = (reason or "").partition(" ")[2]
        return "a near-copy of audio the user gave before" + (f" (similarity {similarity})" if similarity else "")
    if decision == "reject":
        if event.score is None and kind == "identify":
            return "nobody has enrolled a voice yet"
        return _join(REASONS.get(reason or "reject", REASONS["reject"]), numbers)
    if reason:
        return REASONS.get(reason, reason.replace("_", " "))
    return REASONS.get(decision, decision_label(decision).lower())


def describe(event) -> Described:
    """Return ``event`` (an AuditEvent) in words."""
    score_label = ""
    if event.score is not None:
        score_label = "voice consistency" if event.kind == "enroll" else "voice match"
    tone = "ok" if event.decision in GOOD else "bad" if event.decision in BAD else ""
    return Described(kind_label(event.kind), decision_label(event.decision), reason_text(event), score_label, tone)
