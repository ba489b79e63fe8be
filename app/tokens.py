"""Signed, expiring session tokens issued when a voice is accepted."""
from __future__ import annotations

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from .errors import VoiceGateError

_SALT = "voicegate.voice-session"


class TokenError(VoiceGateError):
    """A token that is malformed, forged or expired; ``code`` says which."""


def issue(secret_key: str, user: str, request_id: str) -> str:
    """Return a token saying that ``user`` was verified by request ``request_id``."""
    return URLSafeTimedSerializer(secret_key, salt=_SALT).dumps({"user": user, "rid": request_id})


def read(secret_key: str, token: str, max_age: int) -> str:
    """Return the user a valid token names; raise TokenError otherwise."""
    try:
        payload = URLSafeTimedSerializer(secret_key, salt=_SALT).loads(token, max_age=max_age)
    except SignatureExpired:
        raise TokenError("token_expired", "the session token has expired; verify your voice again") from None
    except BadSignature:
        raise TokenError("bad_token", "the session token is not valid") from None
    return payload["user"]
