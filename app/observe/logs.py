"""Log format: plain text (Python's and gunicorn's own) or, with ``LOG_FORMAT=json``, one JSON object a line.

scripts/serve.sh hands gunicorn scripts/logging-json.json in that case, so its own lines from
before the app is loaded are JSON too; ``configure`` then finds that set-up and leaves it.
"""
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
    from pythonjsonlogger.json import JsonFormatter

    root = logging.getLogger()
    if any(isinstance(handler.formatter, JsonFormatter) for handler in root.handlers):
        return  # once per process, however many apps are created, and not over gunicorn's JSON set-up
    formatter = json_formatter()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    for name in OWN_HANDLERS:
        for own in logging.getLogger(name).handlers:
            own.setFormatter(formatter)
