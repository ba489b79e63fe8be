"""Build a session Context for the current request (the bridge from Flask to the sessions),
and find who the request's cookie signs in as (server-side sessions, app.store.models.AuthSession)."""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import current_app, g, request, session

from ..store.db import db
from ..engines.runtime import get_engines
from ..gate.base import Context
from ..store.models import AdminAccount, AuthSession, User
from ..gate.settings import current_policy

# Cookie keys holding the token of a server-side session: an admin's and a user's, kept apart.
ADMIN_SESSION_KEY, USER_SESSION_KEY = "admin_session", "user_session"


def session_context(protocol: str) -> Context:
    """Return the models, policy and client of the current request.

    Raises SettingsUnavailable (a ``busy`` SessionError) when the policy cannot be read.
    """
    context = Context(
        engines=get_engines(),
        policy=current_policy(),
        secret_key=current_app.config["SECRET_KEY"],
        protocol=protocol,
        client_addr=request.remote_addr,
        admin=is_admin() and same_origin(),
        signed_in_user=_signed_in_name() if same_origin() else None,
    )
    release_db()
    return context


def _signed_in_name() -> str | None:
    user = current_user()
    return user.name if user is not None else None


def release_db() -> None:
    """Give this request's database connection back to the pool (a long WebSocket must not hold one)."""
    db.session.close()


def current_admin() -> AdminAccount | None:
    """Return the admin whose live server-side session this request's cookie holds, or None."""
    if "voicegate_admin" not in g:
        row = AuthSession.find(session.get(ADMIN_SESSION_KEY))
        g.voicegate_admin = db.session.get(AdminAccount, row.admin_id) if row and row.admin_id else None
    return g.voicegate_admin


def current_user() -> User | None:
    """Return the active user whose live server-side session this request's cookie holds, or None."""
    row = AuthSession.find(session.get(USER_SESSION_KEY))
    user = db.session.get(User, row.user_id) if row and row.user_id else None
    return user if user is not None and user.active else None


def is_admin() -> bool:
    """Return True when the request carries a signed-in admin's session cookie."""
    return current_admin() is not None


def same_origin() -> bool:
    """Return False when a browser page of another origin made the request (its Origin header).

    A WebSocket handshake carries the site's cookies whichever page opens it, so a
    cookie may only authorize what a page of this site itself asks for.
    """
    origin = request.headers.get("Origin")
    return origin is None or urlsplit(origin).netloc == request.host
