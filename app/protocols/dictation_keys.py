"""Personal dictation keys: the secret a user's Kõnele URL carries instead of a sign-in.

A key is ``<user id>.<HMAC of the id, public id and key version under the app's secret key>``,
so it is never stored, can be shown again at any time, and is revoked by bumping the user's
version. The random public id in the MAC means a deleted user's key opens nothing, even when
SQLite gives a later user the same row id. Changing the app's secret key revokes every key.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote

from ..store.db import db
from ..store.models import User


def _mac(secret_key: str, user: User) -> str:
    message = f"dictation:{user.id}:{user.public_id}:{user.dictation_key_version}"
    digest = hmac.new(secret_key.encode(), message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


def key_for(user: User, secret_key: str) -> str:
    """Return ``user``'s current dictation key."""
    return f"{user.id}.{_mac(secret_key, user)}"


def user_for(key: str | None, secret_key: str) -> User | None:
    """Return the user whose current dictation key is ``key``, or None (also for a revoked key)."""
    user_id, _, mac = (key or "").partition(".")
    if not user_id.isdigit() or not mac:
        return None
    user = db.session.get(User, int(user_id))
    if user is None or not user.public_id or not hmac.compare_digest(mac, _mac(secret_key, user)):
        return None
    return user


def revoke(user: User) -> None:
    """Invalidate ``user``'s dictation key; the next key_for gives a new one. The caller commits."""
    user.dictation_key_version += 1


# Kõnele's endpoints (app/kaldi.py serves them; the paths are kaldi-gstreamer-server's own).
SPEECH_PATH = "/client/ws/speech"
STATUS_PATH = "/client/ws/status"
RECOGNIZE_PATH = "/client/dynamic/recognize"


def dictation_url(base_url: str, key: str) -> str:
    """Return the WebSocket URL to paste into Kõnele, e.g. ``wss://host/client/ws/speech?key=...``.

    ``base_url`` is the server's public http(s) address (``request.host_url`` in a view).
    Kõnele keeps the key because it appends its own parameters with ``&``.
    """
    base = base_url.rstrip("/")
    for plain, secure in (("http://", "ws://"), ("https://", "wss://")):
        if base.startswith(plain):
            base = secure + base[len(plain):]
    return f"{base}{SPEECH_PATH}?key={quote(key, safe='')}"


def personal_url(user: User, secret_key: str, base_url: str) -> str:
    """Return ``user``'s personal Kõnele URL on the server at ``base_url`` (the one builder pages and CLI use)."""
    return dictation_url(base_url, key_for(user, secret_key))


def recognize_url(base_url: str, key: str) -> str:
    """Return the HTTP URL that transcribes a whole recording for the key's user."""
    return f"{base_url.rstrip('/')}{RECOGNIZE_PATH}?key={quote(key, safe='')}"
