"""What every benchmark does with its figures: log quietly, write them as JSON, show them."""
from __future__ import annotations

import json
import logging
from pathlib import Path

# Libraries whose INFO lines would bury the benchmark's own.
QUIET_LOGGERS = ("faster_whisper", "alembic", "speechbrain", "urllib3", "matplotlib")


def quiet_logging() -> None:
    """Log the benchmark's progress at INFO, and only warnings from the libraries it drives."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def save(results, out: Path, shown=None) -> None:
    """Write ``results`` to ``out`` as JSON (creating its folder); print ``shown`` as JSON when given."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if shown is not None:
        print(json.dumps(shown, indent=2))
    logging.getLogger("bench").info("wrote %s", out)
