"""Signed, expiring session tokens issued when a voice is accepted.

A token names the account by its public id (never reused, unlike a name or a row id) and
carries the name too, for messages; readers must look the account up by the id.
"""
from __future__ import annotations

from typing import NamedTuple

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from ..errors import VoiceGateError

_SALT = "voicegate.voice-session"


class TokenError(VoiceGateError):
    """A token that is malformed, forged or expired; ``code`` says which."""


class Claim(NamedTuple):
    """Who a valid token names: the account's public id and its name when issued."""

    account: str
    user: str


def issue(secret_key: str, account: str, user: str, request_id: str) -> str:
    """Return a token saying that account ``account`` (named ``user``) was verified by ``request_id``."""
    return URLSafeTimedSerializer(secret_key, salt=_SALT).dumps({"uid": account, "user": user, "rid": request_id})


def read(secret_key: str, token: str, max_age: int) -> Claim:
    """Return whom a valid token names; raise TokenError otherwise."""
    try:
        payload = URLSafeTimedSerializer(secret_key, salt=_SALT).loads(token, max_age=max_age)
    except SignatureExpired:
        raise TokenError("token_expired", "the session token has expired; verify your voice again") from None
    except BadSignature:
        raise TokenError("bad_token", "the session token is not valid") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("uid"), str) or not isinstance(payload.get("user"), str):
        # Tokens of older versions named only the user, whose name a new account may reuse.
        raise TokenError("bad_token", "the session token is not valid")
    return Claim(payload["uid"], payload["user"])
