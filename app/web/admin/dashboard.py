"""The dashboard: enrolled users, today's attempts, accept and reject rates."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from flask import current_app, render_template
from sqlalchemy import func, select

from ...store.db import db
from ...engines.runtime import whisper_status
from ...store.models import AuditEvent, User, Voiceprint, utcnow
from .blueprint import bp

ATTEMPT_KINDS = ("enroll", "verify", "identify", "transcribe")


@dataclass(frozen=True)
class DayStats:
    """The voice attempts of one UTC day."""

    day: date
    attempts: int
    accepts: int
    rejects: int
    enrollments: int

    @property
    def decided(self) -> int:
        """Return the attempts that ended in accept or reject (not 'no speech' and the like)."""
        return self.accepts + self.rejects

    @property
    def accept_rate(self) -> float | None:
        """Return accepts over decided attempts, or None without any."""
        return self.accepts / self.decided if self.decided else None

    @property
    def reject_rate(self) -> float | None:
        """Return rejects over decided attempts, or None without any."""
        return self.rejects / self.decided if self.decided else None


def day_stats(days: int = 7) -> list[DayStats]:
    """Return the attempts of the last ``days`` UTC days, today first."""
    today = utcnow().date()
    since = datetime.combine(today - timedelta(days=days - 1), datetime.min.time())
    day = func.date(AuditEvent.created_at)
    rows = db.session.execute(
        select(day, AuditEvent.decision, func.count())
        .where(AuditEvent.kind.in_(ATTEMPT_KINDS), AuditEvent.created_at >= since)
        .group_by(day, AuditEvent.decision)).all()
    counts: dict[str, dict[str, int]] = {}
    for when, decision, count in rows:
        counts.setdefault(str(when), {})[decision] = count
    result = []
    for offset in range(days):
        current = today - timedelta(days=offset)
        by_decision = counts.get(current.isoformat(), {})
        # Only verification, identification and dictation decide accept or reject; enrollment
        # clips are clip_accepted or clip_refused, and a finished enrollment is 'enrolled'.
        result.append(DayStats(current, sum(by_decision.values()), by_decision.get("accept", 0),
                               by_decision.get("reject", 0), by_decision.get("enrolled", 0)))
    return result


@bp.get("/")
def dashboard():
    """Show the service at a glance."""
    users = db.session.scalar(select(func.count()).select_from(User))
    enrolled = db.session.scalar(select(func.count()).select_from(Voiceprint))
    disabled = db.session.scalar(select(func.count()).select_from(User).where(User.active.is_(False)))
    locked = db.session.scalar(select(func.count()).select_from(User).where(User.locked_until > utcnow()))
    return render_template("admin/dashboard.html", users=users, enrolled=enrolled, disabled=disabled, locked=locked,
                           days=day_stats(), whisper=whisper_status(current_app), requests=invite_requests())


def invite_requests() -> list[tuple[User, datetime]]:
    """Return the users who asked for a new enrollment link (on /lost-invite) and have not had one since."""
    asked = dict(db.session.execute(
        select(AuditEvent.claimed_user, func.max(AuditEvent.created_at))
        .where(AuditEvent.kind == "self", AuditEvent.decision == "invite_requested",
               AuditEvent.created_at >= utcnow() - timedelta(days=14))
        .group_by(AuditEvent.claimed_user)).all())
    if not asked:
        return []
    issued = dict(db.session.execute(
        select(AuditEvent.claimed_user, func.max(AuditEvent.created_at))
        .where(AuditEvent.kind == "admin", AuditEvent.decision == "invite_issued", AuditEvent.claimed_user.in_(asked))
        .group_by(AuditEvent.claimed_user)).all())
    users = {user.name: user for user in db.session.scalars(select(User).where(User.name.in_(asked)))}
    return sorted(((users[name], at) for name, at in asked.items()
                   if name in users and (name not in issued or issued[name] < at)), key=lambda pair: pair[1], reverse=True)
