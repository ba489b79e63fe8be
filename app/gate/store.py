"""What the voice sessions read from and write to the database, each write one transaction."""
from __future__ import annotations

import logging
import math
import secrets
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from sqlalchemy import delete, func, select, update

from .. import metrics
from ..db import db
from ..models import (AuditEvent, EnrollmentInvite, LoginChallenge, RecentVoice, User, VoiceFailure, Voiceprint,
                      utcnow)
from .challenge import Challenge, new_challenge
from .policy import Policy

logger = logging.getLogger(__name__)


class InviteUsed(RuntimeError):
    """The enrollment invite was used (or expired) while this enrollment was running."""


@dataclass(frozen=True)
class Audit:
    """The fields of one audit row, filled in by a session as it decides."""

    request_id: str
    kind: str
    protocol: str
    decision: str
    claimed_user: str | None = None
    matched_user: str | None = None
    score: float | None = None
    threshold: float | None = None
    reason: str | None = None
    audio_seconds: float | None = None
    client_addr: str | None = None

    def row(self) -> AuditEvent:
        """Return the ORM row for these fields."""
        return AuditEvent(**{k: _plain(v) for k, v in self.__dict__.items()})

    def counted(self) -> None:
        """Count this decision in the metrics (once its row is committed)."""
        metrics.count_decision(self.kind, self.protocol, self.decision)


def _plain(value):
    # numpy floats would be stored as blobs by the sqlite3 driver.
    return float(value) if isinstance(value, np.floating) else value


def record(audit: Audit) -> None:
    """Append one audit row in its own transaction."""
    db.session.add(audit.row())
    db.session.commit()
    audit.counted()


def find_user(name: str) -> User | None:
    """Return the user called ``name``, or None."""
    return User.by_name(name)


def enrolled_voices() -> dict[str, np.ndarray]:
    """Return the centroid of every active, enrolled user, by name (for identification)."""
    rows = db.session.execute(
        select(User.name, Voiceprint.centroid).join(Voiceprint, Voiceprint.user_id == User.id).where(User.active)
    )
    return {name: np.frombuffer(centroid, dtype="<f4") for name, centroid in rows}


def find_account(public_id: str) -> User | None:
    """Return the user whose public id is ``public_id`` (what tokens name), or None."""
    return User.by_public_id(public_id)


def record_attempt(user_name: str | None, accepted: bool, attempts: int, lock_seconds: int, audit: Audit,
                   *, counted: bool = True) -> bool:
    """Write a voice attempt's audit row and count it against its client address, together.

    A failure adds to the (claimed user, client address) count (``user_name`` None: 1:N);
    an accept clears that count. ``counted=False`` (the audio of someone already signed in)
    writes the audit row only. Return True when that client is now refused for this user.
    """
    address = audit.client_addr or "?"
    now = utcnow()
    window_start = now - timedelta(seconds=lock_seconds)
    if counted and accepted:
        db.session.execute(delete(VoiceFailure).where(VoiceFailure.client_addr == address,
                                                      _same_claim(user_name)))
    elif counted:
        # Rows past the window count for nothing; dropping them here keeps the table small.
        db.session.execute(delete(VoiceFailure).where(VoiceFailure.created_at < now - timedelta(days=1)))
        db.session.add(VoiceFailure(claim=user_name, client_addr=address, created_at=now))
    db.session.add(audit.row())
    db.session.commit()
    audit.counted()
    if not counted or accepted:
        return False
    recent = db.session.scalar(select(func.count()).select_from(VoiceFailure).where(
        VoiceFailure.client_addr == address, _same_claim(user_name), VoiceFailure.created_at > window_start))
    db.session.commit()
    return recent >= attempts


def clear_failures(claim: str) -> None:
    """Forget every client's failures for ``claim`` (an admin's unlock). The caller commits."""
    db.session.execute(delete(VoiceFailure).where(VoiceFailure.claim == claim))


def _same_claim(claim: str | None):
    return VoiceFailure.claim.is_(None) if claim is None else VoiceFailure.claim == claim


def client_wait(claim: str | None, client_addr: str | None, policy: Policy) -> int:
    """Return the seconds this client address must wait before trying ``claim`` (None: 1:N), 0 if none.

    Per (claim, address): each failure in the window makes the next attempt wait
    ``lockout_delay`` seconds, doubling, and ``lockout_attempts`` failures refuse it until
    the oldest of them leaves the window. Per address, ``lockout_client_attempts`` failures
    across all claims refuse everything. A 1:N attempt could match any user, so it waits
    for the longest of every claim's waits from that address.
    """
    address = client_addr or "?"
    now = utcnow()
    window = timedelta(seconds=policy.lockout_seconds)
    rows = db.session.execute(
        select(VoiceFailure.claim, VoiceFailure.created_at)
        .where(VoiceFailure.client_addr == address, VoiceFailure.created_at > now - window)
        .order_by(VoiceFailure.created_at.desc())
    ).all()
    db.session.commit()  # ends the read: no connection held afterwards
    by_claim: dict[str | None, list] = {}
    for row_claim, at in rows:
        by_claim.setdefault(row_claim, []).append(at)
    waits = [_until_limit([at for _, at in rows], policy.lockout_client_attempts, window, now)]
    claims = by_claim if claim is None else {claim: by_claim.get(claim, [])}
    for times in claims.values():
        waits.append(_until_limit(times, policy.lockout_attempts, window, now))
        if times and 0 < len(times) < policy.lockout_attempts and policy.lockout_delay > 0:
            delay = timedelta(seconds=policy.lockout_delay * 2 ** (len(times) - 1))
            waits.append((times[0] + delay - now).total_seconds())
    return max(0, math.ceil(max(waits)))


def _until_limit(times: list, limit: int, window: timedelta, now) -> float:
    """Return the seconds until fewer than ``limit`` of ``times`` (newest first) are in the window."""
    if limit <= 0 or len(times) < limit:
        return 0.0
    return (times[limit - 1] + window - now).total_seconds()


# Accepted-attempt embeddings kept per user for replay refusal (the newest; older ones age out anyway).
MAX_RECENT_VOICES = 50


def given_voices(user: User, keep_seconds: int) -> np.ndarray:
    """Return the embeddings of audio ``user`` already gave: enrollment clips and recent accepts (rows × dim)."""
    clips = user.voiceprint.clip_vectors()
    if keep_seconds <= 0:
        return clips
    recent = db.session.scalars(select(RecentVoice.embedding).where(
        RecentVoice.user_id == user.id, RecentVoice.created_at > utcnow() - timedelta(seconds=keep_seconds))).all()
    db.session.commit()
    if not recent:
        return clips
    return np.vstack([clips, np.stack([np.frombuffer(row, dtype="<f4") for row in recent])])


def remember_voice(user_id: int, embedding: np.ndarray, keep_seconds: int) -> None:
    """Keep an accepted attempt's embedding (never its audio) for ``keep_seconds``, to refuse its replay."""
    db.session.execute(delete(RecentVoice).where(RecentVoice.user_id == user_id,
                                                 RecentVoice.created_at <= utcnow() - timedelta(seconds=keep_seconds)))
    stale = select(RecentVoice.id).where(RecentVoice.user_id == user_id).order_by(
        RecentVoice.created_at.desc()).offset(MAX_RECENT_VOICES - 1)
    db.session.execute(delete(RecentVoice).where(RecentVoice.id.in_(stale)))
    db.session.add(RecentVoice(user_id=user_id, embedding=np.asarray(embedding, dtype="<f4").tobytes()))
    db.session.commit()


def issue_challenge(claim: str | None, client_addr: str | None) -> Challenge:
    """Store a fresh challenge for ``claim`` (None: any user) from ``client_addr``, and return it."""
    challenge = new_challenge(secrets.token_urlsafe(16))
    db.session.execute(delete(LoginChallenge).where(LoginChallenge.expires_at < utcnow() - timedelta(hours=1)))
    db.session.add(LoginChallenge(id=challenge.id, digits=challenge.digits, claim=claim, client_addr=client_addr,
                                  expires_at=challenge.expires_at))
    db.session.commit()
    return challenge


def take_challenge(challenge_id: str, claim: str | None, client_addr: str | None) -> Challenge | None:
    """Use up the challenge ``challenge_id`` and return it, or None if unknown, used, or not for this attempt.

    An expired challenge is returned (and used up) all the same, so that the answer can say so.
    """
    row = db.session.get(LoginChallenge, challenge_id)
    if (row is None or row.used_at is not None or (row.claim is not None and row.claim != claim)
            or row.client_addr != client_addr):
        db.session.commit()
        return None
    taken = db.session.execute(update(LoginChallenge).where(LoginChallenge.id == challenge_id,
                                                            LoginChallenge.used_at.is_(None)).values(used_at=utcnow()))
    db.session.commit()
    return Challenge(row.digits, row.expires_at, row.id) if taken.rowcount == 1 else None


def save_voiceprint(user_id: int, clips: np.ndarray, model_id: str, speech_seconds: float,
                    invite_id: int | None, audit: Audit, channels: dict[str, np.ndarray] | None = None) -> None:
    """Replace the user's voiceprint, use up the invite and audit it, all in one transaction."""
    try:
        if invite_id is not None:
            used = db.session.execute(
                update(EnrollmentInvite)
                .where(EnrollmentInvite.id == invite_id, EnrollmentInvite.used_at.is_(None),
                       EnrollmentInvite.expires_at > utcnow())
                .values(used_at=utcnow())
            )
            if used.rowcount != 1:
                raise InviteUsed("this enrollment invite has been used or has expired")
        db.session.execute(delete(Voiceprint).where(Voiceprint.user_id == user_id))
        voiceprint = Voiceprint.from_embeddings(clips, model_id, speech_seconds, channels)
        voiceprint.user_id = user_id
        db.session.add(voiceprint)
        db.session.add(audit.row())
        db.session.commit()
        audit.counted()
    except Exception:
        db.session.rollback()
        raise
