"""Flask extensions, and the one accessor for the process's models."""
from __future__ import annotations

import threading

from flask import Flask, current_app
from flask_migrate import Migrate
from flask_sock import Sock
from flask_wtf.csrf import CSRFProtect

csrf = CSRFProtect()
migrate = Migrate()
sock = Sock()

_ENGINES_KEY = "voicegate.engines"
_ERROR_KEY = "voicegate.engines_error"
_load_lock = threading.Lock()


def get_engines(app: Flask | None = None):
    """Return the process's loaded models, loading them on first use (thread-safe)."""
    app = app or current_app._get_current_object()
    engines = app.extensions.get(_ENGINES_KEY)
    if engines is not None:
        return engines
    with _load_lock:
        engines = app.extensions.get(_ENGINES_KEY)
        if engines is None:
            # Imported here: migrations and the CLI never load torch.
            from .runtime import load_engines

            try:
                engines = load_engines(
                    app.config["MODELS_DIR"],
                    app.config["WHISPER_MODEL"],
                    workers=int(app.config["INFERENCE_WORKERS"]),
                    queue=int(app.config["INFERENCE_QUEUE"]),
                    beam_size=int(app.config["WHISPER_BEAM_SIZE"]),
                    threads=int(app.config["INFERENCE_THREADS"]),
                    speaker_precision=app.config["SPEAKER_PRECISION"],
                    max_streams=app.config["MAX_STREAMS"],
                )
            except Exception as error:
                # Kept for /healthz; the caller still gets the exception.
                app.extensions[_ERROR_KEY] = f"{error.__class__.__name__}: {error}"
                raise
            app.extensions.pop(_ERROR_KEY, None)
            app.extensions[_ENGINES_KEY] = engines
    return engines


def set_engines(app: Flask, engines) -> None:
    """Hand already loaded models to ``app`` (tests share one set across apps)."""
    app.extensions[_ENGINES_KEY] = engines


def engines_loaded(app: Flask) -> bool:
    """Return True when the models are loaded in this process."""
    return app.extensions.get(_ENGINES_KEY) is not None


def engines_error(app: Flask) -> str | None:
    """Return why the last attempt to load the models failed, if it did."""
    return app.extensions.get(_ERROR_KEY)
