"""Build a session Context for the current request (the bridge from Flask to the sessions)."""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import current_app, request, session

from .engines.runtime import get_engines
from .models import AdminAccount
from .db import db
from .settings import current_policy
from .gate.base import Context


def session_context(protocol: str) -> Context:
    """Return the models, policy and client of the current request."""
    return Context(
        engines=get_engines(),
        policy=current_policy(),
        secret_key=current_app.config["SECRET_KEY"],
        protocol=protocol,
        client_addr=request.remote_addr,
    )


def is_admin() -> bool:
    """Return True when the request carries a signed-in admin's session cookie."""
    admin_id = session.get("admin_id")
    return admin_id is not None and db.session.get(AdminAccount, admin_id) is not None


def same_origin() -> bool:
    """Return False when a browser page of another origin made the request (its Origin header).

    A WebSocket handshake carries the site's cookies whichever page opens it, so a
    cookie may only authorize what a page of this site itself asks for.
    """
    origin = request.headers.get("Origin")
    return origin is None or urlsplit(origin).netloc == request.host
