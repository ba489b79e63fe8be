"""What the admin views share: the signed-in admin, safe redirects, audit rows of admin actions."""
from __future__ import annotations

import logging
from urllib.parse import urlsplit

from flask import g, request

from ...protocols import context
from ...store.models import AdminAccount
from ...gate.base import new_request_id
from ...gate.store import Audit, record

logger = logging.getLogger(__name__)

API_PREFIX = "/admin/api/"


def current_admin() -> AdminAccount | None:
    """Return the admin account of this request's live server-side session, or None."""
    return context.current_admin()


def safe_next(target: str | None, default: str = "/admin/") -> str:
    """Return ``target`` if it is a path on this site, else ``default`` (no open redirects)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return default
    return target


def note(action: str, user_name: str | None = None, detail: str | None = None) -> None:
    """Write an audit row (kind ``admin``) for an admin action on a user or the settings.

    ``detail`` leads the reason, e.g. "user #12" for a deleted user whose name is gone.
    """
    admin = g.admin.username if g.get("admin") else "?"
    logger.info("admin %s: %s %s", admin, action, user_name or detail or "")
    reason = f"{detail}, by admin {admin}" if detail else f"by admin {admin}"
    record(Audit(new_request_id(), "admin", "web", action, claimed_user=user_name,
                 reason=reason[:64], client_addr=request.remote_addr))
