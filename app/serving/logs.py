"""Logs without secrets: gunicorn's access and error logs and the app's own, with keys and invites redacted.

A Kõnele URL carries the user's dictation key (``?key=``), an enrollment link its invite token
(``/enroll/<token>``, ``?invite=``), and either can reach a log line: the request line, the
referer of the pages' own requests, or a message. Every handler's formatter redacts them,
tracebacks included. Used as gunicorn's ``--logger-class`` (scripts/serve.sh).
"""
from __future__ import annotations

import logging
import re
import sys

from gunicorn import glogging

REDACTED = "[redacted]"
_QUERY_SECRET = re.compile(r"(?i)(\b(?:key|invite|token)=)[^&\s\"'#]+")
_ENROLL_TOKEN = re.compile(r"(/enroll/)[^/\s?#\"']+")


def redact(text: str) -> str:
    """Return ``text`` with dictation keys and invite tokens replaced by [redacted]."""
    return _ENROLL_TOKEN.sub(r"\1" + REDACTED, _QUERY_SECRET.sub(r"\1" + REDACTED, text))


class RedactingFormatter(logging.Formatter):
    """Format as ``inner`` does, then redact the whole line (message, arguments and traceback)."""

    def __init__(self, inner: logging.Formatter | None = None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        """Return the redacted line."""
        return redact(self.inner.format(record))


class RedactingLogger(glogging.Logger):
    """gunicorn's logger with redacting handlers; the app's loggers write through one too."""

    def setup(self, cfg):
        """Set up gunicorn's handlers, then make every one of them, and the app's, redact."""
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if not isinstance(handler.formatter, RedactingFormatter):
                    handler.setFormatter(RedactingFormatter(handler.formatter))
        app_log = logging.getLogger("app")
        if not any(isinstance(h.formatter, RedactingFormatter) for h in app_log.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(RedactingFormatter(logging.Formatter(
                "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S %z")))
            app_log.addHandler(handler)
            app_log.setLevel(logging.INFO)
            app_log.propagate = False
        # Libraries (torch, speechbrain, werkzeug) only say what matters at WARNING and above.
        root = logging.getLogger()
        if not any(isinstance(h.formatter, RedactingFormatter) for h in root.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(RedactingFormatter(logging.Formatter(
                "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S %z")))
            root.addHandler(handler)
            root.setLevel(logging.WARNING)
