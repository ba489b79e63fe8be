"""The one error shape of VoiceGate: a stable machine-readable code and a message for people.

Each surface renders it its own way: ``{"error": {"code", "message"}}`` on the HTTP API,
``{"type": "error", "code", "message"}`` on the WebSocket, a status and message on Kõnele's.
"""
from __future__ import annotations


class VoiceGateError(Exception):
    """A refusal with a stable ``code`` and a ``message`` for people."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class SessionError(VoiceGateError):
    """A failure that ends the session; ``code`` is stable, ``message`` is for people."""
