"""What the voice sessions read from and write to the database, each write one transaction."""
from __future__ import annotations

import logging
import math
import secrets
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from ..engines.fused import in_space
from ..observe import metrics
from ..store import vault
from ..store.db import db
from ..store.models import AuditEvent, EnrollmentInvite, LoginChallenge, RecentVoice, User, Version, VoiceFailure, Voiceprint, utcnow
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
    """Return the centroid of every active, enrolled user, by name (for identification).

    A voiceprint whose key is gone is left out (that voice is accepted nowhere); an unreadable
    keystore raises VoiceprintUnavailable, so that nobody is identified.
    """
    rows = db.session.execute(
        select(User.name, Voiceprint.key_id, Voiceprint.centroid)
        .join(Voiceprint, Voiceprint.user_id == User.id).where(User.active)
    ).all()
    keys = vault.keys(key_id for _, key_id, _ in rows)
    voices = {name: np.frombuffer(vault.unseal(keys[key_id], key_id, "voiceprints.centroid", centroid), dtype="<f4")
              for name, key_id, centroid in rows if key_id in keys}
    if len(voices) < len(rows):
        logger.warning("%d enrolled voiceprints have no key in the keystore and cannot be matched",
                       len(rows) - len(voices))
    return voices


def find_account(public_id: str) -> User | None:
    """Return the user whose public id is ``public_id`` (what tokens name), or None."""
    return User.by_public_id(public_id)


@dataclass
class Hold:
    """A voice attempt let through the client's limits: its failure is counted before it is decided.

    ``record_attempt`` settles it (a failure keeps the row, an accept clears the count); any
    other end (no speech, an expired challenge, an error) lets it go (``let_go``).
    """

    wait: int = 0  # seconds the client must wait instead (nothing held then)
    failure_id: int | None = None
    settled: bool = False


def hold_attempt(claim: str | None, client_addr: str | None, policy: Policy) -> Hold:
    """Return the client's wait for ``claim`` (None: 1:N); when there is none, count a failure for this attempt now.

    The check and the count are one transaction, taken one at a time (a row lock on PostgreSQL,
    the write lock on SQLite): attempts sent at once, to one instance or to several, cannot all
    pass the check before any of them is counted.
    """
    address = client_addr or "?"
    db.session.commit()  # the lock below must be its transaction's first
    if db.session.get_bind().dialect.name != "sqlite":
        db.session.execute(select(Version.value).where(Version.name == "attempts").with_for_update())
    now = utcnow()
    # A write first (SQLite takes its write lock here); rows past every window count for nothing.
    db.session.execute(delete(VoiceFailure).where(VoiceFailure.created_at < now - timedelta(days=1)))
    wait = _wait(claim, address, policy, now)
    if wait:
        db.session.commit()
        return Hold(wait)
    failure = VoiceFailure(claim=claim, client_addr=address, created_at=now, pending=True)
    db.session.add(failure)
    db.session.flush()
    hold = Hold(0, failure.id)
    db.session.commit()
    return hold


def let_go(hold: Hold | None) -> None:
    """Uncount a held attempt that ended without a decision on the voice (it was not a failure)."""
    if hold is None or hold.failure_id is None or hold.settled:
        return
    hold.settled = True
    try:
        db.session.rollback()  # whatever an error left half done
        db.session.execute(delete(VoiceFailure).where(VoiceFailure.id == hold.failure_id))
        db.session.commit()
    except SQLAlchemyError:  # it then counts as a failure until it ages out: the safe side
        db.session.rollback()
        logger.exception("could not uncount a voice attempt")


def record_attempt(user_name: str | None, accepted: bool, attempts: int, lock_seconds: int, audit: Audit,
                   *, counted: bool = True, hold: Hold | None = None) -> bool:
    """Write a voice attempt's audit row and count it against its client address, together.

    A failure adds to the (claimed user, client address) count (``user_name`` None: 1:N), or
    keeps the one ``hold`` counted in advance; an accept clears that count. ``counted=False``
    (the audio of someone already signed in) writes the audit row only. Return True when that
    client is now refused for this user.
    """
    address = audit.client_addr or "?"
    now = utcnow()
    window_start = now - timedelta(seconds=lock_seconds)
    held = hold is not None and hold.failure_id is not None
    if hold is not None:
        hold.settled = True
    if counted and accepted:
        db.session.execute(delete(VoiceFailure).where(VoiceFailure.client_addr == address,
                                                      _same_claim(user_name)))
    elif counted and held:
        db.session.execute(update(VoiceFailure).where(VoiceFailure.id == hold.failure_id).values(pending=False))
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
    wait = _wait(claim, client_addr or "?", policy, utcnow())
    db.session.commit()  # ends the read: no connection held afterwards
    return wait


def _wait(claim: str | None, address: str, policy: Policy, now) -> int:
    window = timedelta(seconds=policy.lockout_seconds)
    rows = db.session.execute(
        select(VoiceFailure.claim, VoiceFailure.created_at, VoiceFailure.pending)
        .where(VoiceFailure.client_addr == address, VoiceFailure.created_at > now - window)
        .order_by(VoiceFailure.created_at.desc())
    ).all()
    by_claim: dict[str | None, list] = {}
    for row_claim, at, pending in rows:
        by_claim.setdefault(row_claim, []).append((at, pending))
    waits = [_until_limit([at for _, at, _ in rows], policy.lockout_client_attempts, window, now)]
    claims = by_claim if claim is None else {claim: by_claim.get(claim, [])}
    for attempts in claims.values():
        # Attempts still being decided count towards the limit; only decided failures add a delay.
        waits.append(_until_limit([at for at, _ in attempts], policy.lockout_attempts, window, now))
        failed = [at for at, pending in attempts if not pending]
        if 0 < len(attempts) < policy.lockout_attempts and failed and policy.lockout_delay > 0:
            delay = timedelta(seconds=policy.lockout_delay * 2 ** (len(failed) - 1))
            waits.append((failed[0] + delay - now).total_seconds())
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
    # Kept before the server's speaker models changed, some may be of another space: the one all share.
    given = [*clips, *user.voiceprint.open_recent(recent)]
    dim = min(vector.size for vector in given)
    return np.stack([in_space(vector, dim) for vector in given])


def remember_voice(user_id: int, embedding: np.ndarray, keep_seconds: int) -> None:
    """Keep an accepted attempt's embedding (never its audio) for ``keep_seconds``, to refuse its replay."""
    db.session.execute(delete(RecentVoice).where(RecentVoice.user_id == user_id,
                                                 RecentVoice.created_at <= utcnow() - timedelta(seconds=keep_seconds)))
    stale = select(RecentVoice.id).where(RecentVoice.user_id == user_id).order_by(
        RecentVoice.created_at.desc()).offset(MAX_RECENT_VOICES - 1)
    db.session.execute(delete(RecentVoice).where(RecentVoice.id.in_(stale)))
    voiceprint = db.session.scalar(select(Voiceprint).where(Voiceprint.user_id == user_id))
    if voiceprint is not None:  # erased meanwhile: nothing of this voice is kept
        db.session.add(RecentVoice(user_id=user_id, embedding=voiceprint.seal_recent(embedding)))
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
                    invite_id: int | None, audit: Audit, channels: dict[str, np.ndarray] | None = None,
                    band_edge_db: float | None = None) -> None:
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
        # The old voiceprint's key is destroyed, so the replaced voice is gone from old backups too.
        db.session.get(User, user_id).forget_voice()
        voiceprint = Voiceprint.from_embeddings(clips, model_id, speech_seconds, channels, band_edge_db)
        voiceprint.user_id = user_id
        db.session.add(voiceprint)
        db.session.add(audit.row())
        db.session.commit()
        audit.counted()
    except Exception:
        db.session.rollback()
        raise


def enrolled_keys() -> list[tuple[str, str]]:
    """Return (name, key id) of every active, enrolled user's voiceprint, decrypting nothing."""
    rows = db.session.execute(
        select(User.name, Voiceprint.key_id).join(Voiceprint, Voiceprint.user_id == User.id).where(User.active)
    ).all()
    return [(name, key_id) for name, key_id in rows]


def open_centroids(key_ids: list[str]) -> dict[str, np.ndarray]:
    """Return the centroids of the voiceprints sealed with ``key_ids``, by key id; those whose key is gone are left out.

    An unreadable keystore raises VoiceprintUnavailable.
    """
    if not key_ids:
        return {}
    keys = vault.keys(key_ids)
    rows = db.session.execute(select(Voiceprint.key_id, Voiceprint.centroid).where(
        Voiceprint.key_id.in_([key_id for key_id in key_ids if key_id in keys]))).all()
    return {key_id: np.frombuffer(vault.unseal(keys[key_id], key_id, "voiceprints.centroid", centroid), dtype="<f4")
            for key_id, centroid in rows}
