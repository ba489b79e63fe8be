"""The audit log: every decision, filterable by user, kind, decision and date; paginated; CSV."""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from flask import Response, render_template, request, stream_with_context, url_for
from sqlalchemy import Select, func, or_, select

from ...store.db import db
from ...store.models import AuditEvent, User, utcnow
from .. import labels
from .blueprint import bp

bp.add_app_template_global(labels.describe, "describe_event")

PAGE_SIZE = 50
KINDS = ("enroll", "verify", "identify", "transcribe", "meeting", "admin", "self")
COLUMNS = ("created_at", "kind", "protocol", "claimed_user", "matched_user", "decision", "score", "threshold",
           "reason", "audio_seconds", "client_addr", "request_id")
# The same event in words, after the raw columns (programs read the codes, people these).
WORDS = ("what", "result", "why")


@dataclass(frozen=True)
class AuditFilter:
    """The filters of the audit log, read from a query string (invalid values are ignored)."""

    user: str = ""
    kind: str = ""
    decision: str = ""
    since: date | None = None
    until: date | None = None

    @classmethod
    def from_args(cls, args) -> AuditFilter:
        """Read ``user``, ``kind``, ``decision``, ``from`` and ``to`` (YYYY-MM-DD, UTC, inclusive)."""
        kind = args.get("kind", "")
        return cls(user=args.get("user", "").strip(), kind=kind if kind in KINDS else "",
                   decision=args.get("decision", "").strip()[:24],
                   since=_day(args.get("from")), until=_day(args.get("to")))

    def apply(self, statement: Select) -> Select:
        """Return ``statement`` restricted to the matching events."""
        if self.user:
            statement = statement.where(or_(AuditEvent.claimed_user == self.user, AuditEvent.matched_user == self.user))
        if self.kind:
            statement = statement.where(AuditEvent.kind == self.kind)
        if self.decision:
            statement = statement.where(AuditEvent.decision == self.decision)
        if self.since:
            statement = statement.where(AuditEvent.created_at >= datetime.combine(self.since, datetime.min.time()))
        if self.until:
            statement = statement.where(
                AuditEvent.created_at < datetime.combine(self.until + timedelta(days=1), datetime.min.time()))
        return statement

    def args(self) -> dict[str, str]:
        """Return the filters as query-string arguments (for links and the CSV export)."""
        values = {"user": self.user, "kind": self.kind, "decision": self.decision,
                  "from": self.since.isoformat() if self.since else "",
                  "to": self.until.isoformat() if self.until else ""}
        return {key: value for key, value in values.items() if value}


def _day(value: str | None) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


@bp.get("/audit")
def audit():
    """Show the audit log, newest first, a page at a time."""
    filters = AuditFilter.from_args(request.args)
    total = db.session.scalar(filters.apply(select(func.count()).select_from(AuditEvent)))
    pages = max(1, math.ceil(total / PAGE_SIZE))
    page = min(max(request.args.get("page", 1, type=int) or 1, 1), pages)
    events = db.session.scalars(
        filters.apply(select(AuditEvent)).order_by(AuditEvent.id.desc()).offset((page - 1) * PAGE_SIZE).limit(PAGE_SIZE)
    ).all()
    decisions = db.session.scalars(select(AuditEvent.decision).distinct().order_by(AuditEvent.decision)).all()
    users = db.session.scalars(select(User.name).order_by(User.name)).all()
    return render_template(
        "admin/audit.html", events=[(event, labels.describe(event)) for event in events], filters=filters,
        page=page, pages=pages, total=total, users=users,
        decisions=[(code, labels.decision_label(code)) for code in decisions],
        kinds=[(code, labels.kind_label(code)) for code in KINDS],
        page_url=lambda number: url_for("admin.audit", page=number, **filters.args()),
        csv_url=url_for("admin.audit_csv", **filters.args()),
    )


def _cell(value) -> str | float | None:
    # A text cell starting with = + - @ is a formula to a spreadsheet: quote it (OWASP CSV injection).
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds") + "Z"
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


@bp.get("/api/audit.csv")
def audit_csv():
    """Export the filtered audit log as CSV (all pages, newest first like the page)."""
    filters = AuditFilter.from_args(request.args)
    statement = filters.apply(select(AuditEvent)).order_by(AuditEvent.id.desc()).execution_options(yield_per=500)

    def rows():
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(COLUMNS + WORDS)
        for event in db.session.scalars(statement):
            said = labels.describe(event)
            writer.writerow([_cell(getattr(event, column)) for column in COLUMNS]
                            + [_cell(said.kind), _cell(said.decision), _cell(said.reason)])
            if buffer.tell() > 64 * 1024:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    filename = f"voicegate-audit-{utcnow():%Y%m%d-%H%M}.csv"
    return Response(stream_with_context(rows()), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})
