"""What the voice sessions read from and write to the database, each write one transaction."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sqlalchemy import delete, select, update

from .. import metrics
from ..db import db
from ..models import AuditEvent, EnrollmentInvite, User, Voiceprint, utcnow

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


def record_attempt(user_name: str, accepted: bool, attempts: int, lock_seconds: int, audit: Audit) -> bool:
    """Count a 1:1 voice attempt and write its audit row together; return True if now locked."""
    user = find_user(user_name)
    if user is not None:
        user.record_attempt(accepted, attempts, lock_seconds)
    db.session.add(audit.row())
    db.session.commit()
    audit.counted()
    return bool(user and user.is_locked())


def save_voiceprint(user_id: int, clips: np.ndarray, model_id: str, speech_seconds: float,
                    invite_id: int | None, audit: Audit) -> None:
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
        voiceprint = Voiceprint.from_embeddings(clips, model_id, speech_seconds)
        voiceprint.user_id = user_id
        db.session.add(voiceprint)
        db.session.add(audit.row())
        db.session.commit()
        audit.counted()
    except Exception:
        db.session.rollback()
        raise
