"""Request bodies are read into memory, up to the size cap, and never spooled to a file.

Werkzeug's form parser writes any multipart file over 500 KB to a temporary file: for an
audio upload that is raw audio on disk, which VoiceGate never keeps. The app's request class
keeps every uploaded part in memory instead; MAX_CONTENT_LENGTH bounds how much that can be.
A body that does not arrive within its time limit (app/serving/worker.py) is answered 408.
"""
from __future__ import annotations

import io
import logging

from flask import Flask, Request, jsonify, request
from werkzeug.exceptions import ClientDisconnected

logger = logging.getLogger(__name__)


class InMemoryRequest(Request):
    """A request whose uploaded files are held in memory, never in a temporary file."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        """Return an in-memory buffer for one uploaded file (werkzeug's hook for where parts go)."""
        return io.BytesIO()


def read_body() -> bytes:
    """Return the raw request body, read into memory (MAX_CONTENT_LENGTH refuses a larger one with 413)."""
    return request.get_data(cache=False)


def _read_body_first() -> None:
    """Take a request's whole body into memory before any view (or database session) sees it.

    So a slow upload holds a thread of its own for at most BODY_SECONDS, and never a database
    connection or an inference slot while it trickles in. Views read the cached bytes.
    """
    if request.content_length:
        request.get_data(parse_form_data=False)
    elif request.headers.get("Transfer-Encoding", "").lower() == "chunked":
        request.get_data(parse_form_data=False)
        # Werkzeug stops a chunked body at MAX_CONTENT_LENGTH without a word; reading on says 413.
        request.stream.read(1)


def _too_slow(error: Exception):
    """Answer a body that did not arrive in time with 408 (the worker then closes the connection).

    Werkzeug reports a failed body read as ClientDisconnected, with the timeout as its context.
    """
    if isinstance(error, ClientDisconnected) and not isinstance(error.__context__, TimeoutError):
        return error  # the client really went away: werkzeug's 400, which no one reads
    logger.info("%s %s: the body did not arrive in time", request.method, request.path)
    response = jsonify(error={"code": "too_slow", "message": "the request body did not arrive in time"})
    return response, 408


def init_app(app: Flask) -> None:
    """Make ``app`` read bodies first and into memory, and answer slow ones with 408 (call before other extensions)."""
    app.request_class = InMemoryRequest
    app.before_request(_read_body_first)
    app.register_error_handler(TimeoutError, _too_slow)
    app.register_error_handler(ClientDisconnected, _too_slow)
