"""Log format: plain text (Python's and gunicorn's own) or, with ``LOG_FORMAT=json``, one JSON object a line."""
from __future__ import annotations

import logging
import sys

# Loggers that keep their own handlers (gunicorn's); the rest propagate to the root.
OWN_HANDLERS = ("gunicorn.error", "gunicorn.access")
FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"


def json_formatter() -> logging.Formatter:
    """Return a formatter writing time, level, logger and message (and any extras) as one JSON object."""
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(FIELDS, rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                         datefmt="%Y-%m-%dT%H:%M:%S%z", json_ensure_ascii=False)


def configure(log_format: str) -> None:
    """Write the process's logs as JSON lines when ``log_format`` is "json"; leave them alone otherwise."""
    if str(log_format).lower() != "json":
        return
    root = logging.getLogger()
    if any(getattr(handler, "voicegate_json", False) for handler in root.handlers):
        return  # once per process, however many apps are created
    formatter = json_formatter()
    handler = logging.StreamHandler(sys.stderr)
    handler.voicegate_json = True
    handler.setFormatter(formatter)
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    for name in OWN_HANDLERS:
        for own in logging.getLogger(name).handlers:
            own.setFormatter(formatter)
