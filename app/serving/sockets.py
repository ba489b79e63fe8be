"""WebSocket routes that survive malformed and vanishing clients without a traceback.

flask-sock hands a route the socket as it is: a client that sends a broken handshake, resets
the connection or closes it mid-send makes ``send`` raise a plain OSError, which the sessions
do not expect, and the socket's reader thread can race the server closing the connection.
:class:`GuardedSock` is flask-sock's ``Sock`` whose routes get a :class:`SafeSocket` (transport
failures read as ConnectionClosed, which every session already handles as "the client left"),
wait for the reader thread before the server closes the connection, and answer a malformed
handshake with 400.
"""
from __future__ import annotations

import logging
import time
from functools import wraps

from flask import Flask, current_app, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed
from simple_websocket import ConnectionError as HandshakeFailed
from wsproto.utilities import RemoteProtocolError

logger = logging.getLogger(__name__)

# How long a finished route waits for the socket's reader thread to see the close.
_READER_JOIN_SECONDS = 1.0
# How long empty frames alone (keep-alives) may hold a session open without a real message.
KEEPALIVE_SECONDS = 120.0


class SafeSocket:
    """A flask-sock socket whose transport failures (OSError) raise ConnectionClosed instead."""

    def __init__(self, ws):
        self.ws = ws
        self._last_message = time.monotonic()

    def send(self, data) -> None:
        """Send a text (str) or binary (bytes) message."""
        try:
            self.ws.send(data)
        except OSError:
            raise ConnectionClosed(1006, "the client went away") from None

    def receive(self, timeout: float | None = None):
        """Return the next message, or None after ``timeout`` seconds; no database connection is held meanwhile.

        An empty frame is a keep-alive (the enrollment page sends one every 5 s between clips).
        Keep-alives alone hold a session for at most KEEPALIVE_SECONDS: after that they read as
        nothing, and the session's own idle limit ends it.
        """
        _release_database()
        try:
            message = self.ws.receive(timeout=timeout)
        except OSError:
            raise ConnectionClosed(1006, "the client went away") from None
        if message:
            self._last_message = time.monotonic()
        elif message is not None and time.monotonic() - self._last_message > KEEPALIVE_SECONDS:
            return None
        return message

    def close(self, reason: int | None = None, message: str | None = None) -> None:
        """Send a close frame (raises ConnectionClosed when the connection is gone already)."""
        try:
            self.ws.close(reason=reason, message=message)
        except OSError:
            raise ConnectionClosed(1006, "the client went away") from None

    def finish(self) -> None:
        """Close if still open, and let the reader thread end before the server closes the connection."""
        try:
            self.ws.close()
        except (ConnectionClosed, OSError):
            pass
        thread = getattr(self.ws, "thread", None)
        if thread is not None:
            thread.join(timeout=_READER_JOIN_SECONDS)


class GuardedSock(Sock):
    """flask-sock's ``Sock`` whose routes get a SafeSocket and whose bad handshakes get 400."""

    def init_app(self, app: Flask) -> None:
        """Register the WebSocket routes and the answers to broken handshakes."""
        super().init_app(app)
        app.register_error_handler(RemoteProtocolError, _bad_handshake)
        app.register_error_handler(HandshakeFailed, _bad_handshake)
        app.register_error_handler(ConnectionError, _client_gone)

    def route(self, path, bp=None, **kwargs):
        """Register ``f(ws, ...)`` as a WebSocket route, as flask-sock does, with ``ws`` a SafeSocket."""
        def decorator(f):
            @wraps(f)
            def guarded(ws, *args, **route_kwargs):
                conn = SafeSocket(ws)
                try:
                    f(conn, *args, **route_kwargs)
                finally:
                    conn.finish()
            return super(GuardedSock, self).route(path, bp=bp, **kwargs)(guarded)
        return decorator


def _release_database() -> None:
    """End the request's read-only database transaction, so that waiting for a client holds no pooled connection.

    The pool is small (15 connections by default): sockets that each held one while their clients
    stayed idle would leave none for anyone else. Sessions commit what they write at once, so
    a transaction with pending changes is left alone.
    """
    extension = current_app.extensions.get("sqlalchemy")
    if extension is None:
        return
    session = extension.session()  # this thread's session behind the scoped proxy
    if session.in_transaction() and not (session.new or session.dirty or session.deleted):
        session.rollback()


def _bad_handshake(error: Exception):
    """Answer a WebSocket handshake that is not one with 400."""
    logger.info("%s: not a WebSocket handshake: %s", request.path, error)
    return {"error": {"code": "bad_handshake", "message": "this address speaks WebSocket only"}}, 400


def _client_gone(error: ConnectionError):
    """Note a WebSocket client that went away during its handshake (nothing is left to answer)."""
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise error  # elsewhere it is an error of ours, and Flask logs it as one
    logger.info("%s: the client went away: %s", request.path, error.__class__.__name__)
    return "", 400
