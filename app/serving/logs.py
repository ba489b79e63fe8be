"""Logs without secrets: every log record, gunicorn's access and error lines and the app's own, redacted.

A Kõnele URL carries the user's dictation key (``?key=``), an enrollment link its invite token
(``/enroll/<token>``, ``?invite=``), and either can reach a log line: the request line, the
referer of the pages' own requests, or a message. The redaction happens where records are made
(a log record factory), so it holds whatever the handlers and formats are (text or the JSON of
app/observe/logs.py), tracebacks included. Used as gunicorn's ``--logger-class`` (scripts/serve.sh).
"""
from __future__ import annotations

import logging
import re
import sys

from gunicorn import glogging

REDACTED = "[redacted]"
_QUERY_SECRET = re.compile(r"(?i)(\b(?:key|invite|token)=)[^&\s\"'#]+")
_ENROLL_TOKEN = re.compile(r"(/enroll/)[^/\s?#\"']+")
_TEXT_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"


def redact(text: str) -> str:
    """Return ``text`` with dictation keys and invite tokens replaced by [redacted]."""
    return _ENROLL_TOKEN.sub(r"\1" + REDACTED, _QUERY_SECRET.sub(r"\1" + REDACTED, text))


def install_redaction() -> None:
    """Make every log record of this process carry its message (and traceback) redacted."""
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "redacts", False):
        return

    def redacting_record(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        message = record.getMessage()
        safe = redact(message)
        if safe != message:
            record.msg, record.args = safe, None
        if record.exc_info and record.exc_info[1] is not None:
            trace = logging.Formatter().formatException(record.exc_info)
            safe_trace = redact(trace)
            if safe_trace != trace:
                record.exc_info, record.exc_text = None, safe_trace
        return record

    redacting_record.redacts = True
    logging.setLogRecordFactory(redacting_record)


class RedactingLogger(glogging.Logger):
    """gunicorn's logger, in a process whose log records are redacted, that also shows the app's INFO lines."""

    def setup(self, cfg):
        """Set up gunicorn's logs, install the redaction, and give the app's lines a handler if none is set."""
        super().setup(cfg)
        install_redaction()
        root = logging.getLogger()
        if not root.handlers:  # plain text (JSON: scripts/logging-json.json gave the root its handler)
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter(_TEXT_FORMAT, "%Y-%m-%d %H:%M:%S %z"))
            root.addHandler(handler)
            root.setLevel(logging.WARNING)  # libraries (torch, speechbrain) say what matters at WARNING
        logging.getLogger("app").setLevel(logging.INFO)
