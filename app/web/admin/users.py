"""Users: the searchable list, one user's page, invites, and the actions on a user."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urljoin

from flask import abort, current_app, flash, redirect, render_template, request, session, url_for
from sqlalchemy import func, or_, select, text

from ...protocols import dictation_keys
from ...store.db import db
from ...store.models import AuditEvent, EnrollmentInvite, User, utcnow
from ...gate import store
from .blueprint import bp
from .common import note

NAME = re.compile(r"^[\w.@-]{1,64}$")
# Attempts whose rejects count as a user's recent failures.
VOICE_KINDS = ("verify", "identify", "transcribe")
FAILURE_WINDOW = timedelta(hours=24)


@dataclass
class UserRow:
    """One line of the users list."""

    user: User
    last_login: datetime | None
    recent_failures: int

    @property
    def state(self) -> str:
        """Return the user's state in a word: disabled, locked, enrolled or invited."""
        if not self.user.active:
            return "disabled"
        if self.user.is_locked():
            return "locked"
        return "enrolled" if self.user.voiceprint else "not enrolled"


def _last_logins(names: list[str]) -> dict[str, datetime]:
    rows = db.session.execute(
        select(AuditEvent.matched_user, func.max(AuditEvent.created_at))
        .where(AuditEvent.kind.in_(("verify", "identify")), AuditEvent.decision == "accept",
               AuditEvent.matched_user.in_(names))
        .group_by(AuditEvent.matched_user))
    return dict(rows.all())


def _recent_failures(names: list[str]) -> dict[str, int]:
    rows = db.session.execute(
        select(AuditEvent.claimed_user, func.count())
        .where(AuditEvent.kind.in_(VOICE_KINDS), AuditEvent.decision == "reject",
               AuditEvent.created_at >= utcnow() - FAILURE_WINDOW, AuditEvent.claimed_user.in_(names))
        .group_by(AuditEvent.claimed_user))
    return dict(rows.all())


def user_rows(users: list[User]) -> list[UserRow]:
    """Return the list lines of ``users``, with their last voice login and recent rejects."""
    names = [user.name for user in users]
    logins, failures = _last_logins(names), _recent_failures(names)
    return [UserRow(user, logins.get(user.name), failures.get(user.name, 0)) for user in users]


STATES = ("enrolled", "not enrolled", "locked", "disabled")


@bp.get("/users")
def users():
    """List the users, searchable by name and filterable by state."""
    query = request.args.get("q", "").strip()
    state = request.args.get("state", "")
    statement = select(User).order_by(User.name)
    if query:
        # LIKE wildcards typed by the admin are taken literally.
        words = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{words}%"
        statement = statement.where(or_(User.name.ilike(pattern, escape="\\"),
                                        User.display_name.ilike(pattern, escape="\\")))
    rows = user_rows(list(db.session.scalars(statement)))
    if state in STATES:
        rows = [row for row in rows if row.state == state]
    return render_template("admin/users.html", rows=rows, query=query, state=state, states=STATES,
                           invite_hours=current_app.config["INVITE_HOURS"])


@bp.post("/users")
def create_user():
    """Create a user and a one-time enrollment invite, shown once on the user's page."""
    name = request.form.get("name", "").strip()
    display_name = request.form.get("display_name", "").strip()[:128]
    if not NAME.match(name):
        flash("A user name is 1 to 64 letters, digits, '.', '_', '-' or '@', without spaces.", "error")
        return redirect(url_for("admin.users"))
    if User.by_name(name) is not None:
        flash(f"There is already a user called {name}.", "error")
        return redirect(url_for("admin.users", q=name))
    user = User(name=name, display_name=display_name or name)
    db.session.add(user)
    db.session.commit()
    note("user_created", user.name)
    _issue_invite(user)
    flash(f"Created {user.name}. Send them the enrollment link below.", "success")
    return redirect(url_for("admin.user", user_id=user.id))


def _issue_invite(user: User) -> None:
    hours = float(current_app.config["INVITE_HOURS"])
    invite, token = EnrollmentInvite.issue(user, timedelta(hours=hours))
    db.session.commit()
    note("invite_issued", user.name)
    # The token exists only here: shown once on the next page, then gone from the session.
    session["new_invite"] = {"user_id": user.id, "url": urljoin(request.host_url, f"enroll/{token}"),
                             "expires_at": invite.expires_at.strftime("%Y-%m-%d %H:%M")}


def _user_or_404(user_id: int) -> User:
    user = db.session.get(User, user_id)
    if user is None:
        abort(404)
    return user


def dictation_url(user: User) -> str:
    """Return the user's personal Kõnele WebSocket URL, with their dictation key."""
    return dictation_keys.personal_url(user, current_app.config["SECRET_KEY"], request.host_url)


@bp.get("/users/<int:user_id>")
def user(user_id: int):
    """Show one user: state, voiceprint, invites, dictation key, recent attempts and actions."""
    user = _user_or_404(user_id)
    invite = session.get("new_invite")
    if invite and invite.get("user_id") == user.id:
        session.pop("new_invite")
    else:
        invite = None
    row = user_rows([user])[0]
    pending = db.session.scalar(
        select(func.count()).select_from(EnrollmentInvite)
        .where(EnrollmentInvite.user_id == user.id, EnrollmentInvite.used_at.is_(None),
               EnrollmentInvite.expires_at > utcnow()))
    events = db.session.scalars(
        select(AuditEvent).where(or_(AuditEvent.claimed_user == user.name, AuditEvent.matched_user == user.name))
        .order_by(AuditEvent.id.desc()).limit(10)).all()
    return render_template("admin/user.html", row=row, user=user, invite=invite, pending_invites=pending,
                           events=events, dictation_url=dictation_url(user))


@bp.post("/users/<int:user_id>/invite")
def invite(user_id: int):
    """Issue a new one-time enrollment link for the user."""
    user = _user_or_404(user_id)
    _issue_invite(user)
    flash("A new enrollment link is below. It works once.", "success")
    return redirect(url_for("admin.user", user_id=user.id))


@bp.post("/users/<int:user_id>/disable")
def disable(user_id: int):
    """Stop the user from enrolling, logging in or dictating (reversible)."""
    return _set_active(_user_or_404(user_id), False)


@bp.post("/users/<int:user_id>/enable")
def enable(user_id: int):
    """Let a disabled user in again."""
    return _set_active(_user_or_404(user_id), True)


def _set_active(user: User, active: bool):
    user.active = active
    db.session.commit()
    note("user_enabled" if active else "user_disabled", user.name)
    flash(f"{user.name} is {'enabled' if active else 'disabled'}.", "success")
    return redirect(url_for("admin.user", user_id=user.id))


@bp.post("/users/<int:user_id>/unlock")
def unlock(user_id: int):
    """Lift the per-client limits on this user's voice login now, for every client address."""
    user = _user_or_404(user_id)
    user.failed_attempts, user.locked_until = 0, None
    store.clear_failures(user.name)
    db.session.commit()
    note("user_unlocked", user.name)
    flash(f"{user.name} is unlocked.", "success")
    return redirect(url_for("admin.user", user_id=user.id))


# Destructive actions: a GET shows what will happen and asks; only the confirmation's POST acts.
CONFIRM = {
    "reset": ("Reset enrollment",
              "The voiceprint of {name} is erased now. They cannot log in or dictate by voice until they enroll "
              "again with a new enrollment link.", "Erase voiceprint"),
    "revoke-key": ("Revoke dictation key",
                   "The personal dictation URL of {name} stops working now; a new one is shown on their page.",
                   "Revoke key"),
    "delete": ("Delete user",
               "{name} is deleted and their voiceprint erased at once. Their audit events stay, without their name. "
               "This cannot be undone.", "Delete user"),
}


@bp.route("/users/<int:user_id>/<any(reset, 'revoke-key', delete):action>", methods=["GET", "POST"])
def confirm(user_id: int, action: str):
    """Ask before a destructive action (GET); do it on the confirmation's POST."""
    user = _user_or_404(user_id)
    title, text, button = CONFIRM[action]
    if request.method == "GET" or request.form.get("confirm") != "yes":
        return render_template("admin/confirm.html", user=user, title=title, text=text.format(name=user.name),
                               button=button, action=action)
    if action == "reset":
        user.forget_voice()  # its key first: no backup can give the voice back
        user.failed_attempts, user.locked_until = 0, None
        db.session.commit()
        _scrub()
        note("enrollment_reset", user.name)
        flash(f"The voiceprint of {user.name} is erased. Issue an enrollment link so they can enroll again.", "success")
        return redirect(url_for("admin.user", user_id=user.id))
    if action == "revoke-key":
        dictation_keys.revoke(user)
        db.session.commit()
        note("dictation_key_revoked", user.name)
        flash(f"The old dictation key of {user.name} no longer works.", "success")
        return redirect(url_for("admin.user", user_id=user.id))
    name, user_id = user.name, user.id
    user.erase()
    db.session.commit()
    _scrub()
    # No name: the deleted person's name leaves the audit log with them; the account number stays.
    note("user_deleted", detail=f"user #{user_id} deleted")
    flash(f"Deleted {name}; their voiceprint is erased.", "success")
    return redirect(url_for("admin.users"))


def _scrub() -> None:
    """Push deleted voiceprint pages out of SQLite's write-ahead log into the (zeroed) database file.

    With secure_delete (app/store/db.py) SQLite overwrites freed content; the checkpoint makes the WAL,
    which still holds the old pages, empty, so the embeddings are gone from disk at once.
    """
    if db.engine.dialect.name == "sqlite":
        db.session.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
        db.session.commit()
