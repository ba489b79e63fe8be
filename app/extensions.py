"""Flask extensions, and the one accessor for the process's models."""
from __future__ import annotations

import logging
import threading

from flask import Flask, current_app
from flask_migrate import Migrate
from flask_wtf.csrf import CSRFProtect

from .serving.sockets import GuardedSock

csrf = CSRFProtect()
migrate = Migrate()
sock = GuardedSock()  # flask-sock, surviving broken clients (app/serving/sockets.py)

_ENGINES_KEY = "voicegate.engines"
_ERROR_KEY = "voicegate.engines_error"
_WHISPER_KEY = "voicegate.whisper_switch"
_load_lock = threading.Lock()
_switch_lock = threading.Lock()
logger = logging.getLogger(__name__)


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
            from .engines.runtime import load_engines

            try:
                engines = load_engines(
                    app.config["MODELS_DIR"],
                    _wanted_whisper(app),
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


def _wanted_whisper(app: Flask) -> str:
    """Return the Whisper model to load: an admin's choice in the database, else the configured one."""
    from .settings import whisper_model, whisper_present

    with app.app_context():
        name = whisper_model()
        if whisper_present(name) is False:
            # A stored choice whose files have gone must not keep the service from starting.
            logger.warning("Whisper %s is chosen in the settings but not on disk; loading %s",
                           name, app.config["WHISPER_MODEL"])
            return app.config["WHISPER_MODEL"]
        return name


def switch_whisper(app: Flask, name: str) -> None:
    """Load Whisper model ``name`` in the background and swap it in when ready.

    The current model keeps serving until then (a call already running finishes on it);
    a failure leaves it in place and is reported by whisper_status.
    """
    engines = app.extensions.get(_ENGINES_KEY)
    if engines is None:
        return  # not loaded yet: get_engines loads the stored choice
    with _switch_lock:
        status = app.extensions.setdefault(_WHISPER_KEY, {})
        status["wanted"] = name
        if status.get("state") == "loading":
            return  # the running loader takes the newest choice when it is done
        status.update(state="loading", name=name, error=None)
    threading.Thread(target=_load_whisper, args=(app, engines), name="whisper-loader", daemon=True).start()


def _load_whisper(app: Flask, engines) -> None:
    from .engines.runtime import load_transcriber

    while True:
        with _switch_lock:
            status = app.extensions[_WHISPER_KEY]
            name = status["wanted"]
            if engines.whisper_name == name:
                status.update(state="loaded", name=name, error=None)
                return
            status.update(state="loading", name=name, error=None)
        try:
            transcriber = load_transcriber(app.config["MODELS_DIR"], name, threads=int(app.config["INFERENCE_THREADS"]),
                                           beam_size=int(app.config["WHISPER_BEAM_SIZE"]), workers=engines.pool.workers)
        except Exception as error:  # any failure of a model load must reach the settings page
            logger.exception("loading Whisper %s failed", name)
            with _switch_lock:
                status.update(state="failed", error=f"{error.__class__.__name__}: {error}")
                if status["wanted"] == name:
                    return
            continue
        with _switch_lock:
            engines.transcriber, engines.whisper_name = transcriber, name
        logger.info("Whisper model switched to %s", name)


def whisper_status(app: Flask) -> dict:
    """Report the Whisper model in use and any switch: state loading, loaded or failed."""
    engines = app.extensions.get(_ENGINES_KEY)
    with _switch_lock:
        status = dict(app.extensions.get(_WHISPER_KEY, {}))
    active = engines.whisper_name if engines is not None else None
    if not status:
        error = engines_error(app)
        status = {"state": "failed" if error else "loaded" if engines is not None else "not_loaded",
                  "name": active, "error": error}
    status["active"] = active
    return status
