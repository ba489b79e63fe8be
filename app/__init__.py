"""VoiceGate: speaker verification and identity-gated transcription, as a Flask app."""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Mapping

from flask import Flask

from .config import ROOT, Config, database_url, secret_key

logger = logging.getLogger(__name__)


def create_app(test_config: Mapping[str, Any] | None = None, engines=None) -> Flask:
    """Build the app: defaults, then ``VOICEGATE_*`` variables, then ``test_config``."""
    instance_path = (test_config or {}).get("INSTANCE_PATH") or os.environ.get("VOICEGATE_INSTANCE_PATH")
    app = Flask(
        __name__,
        instance_path=str(Path(instance_path).resolve()) if instance_path else None,
        instance_relative_config=True,
        static_folder=str(ROOT / "static"),
    )
    app.config.from_object(Config)
    app.config.from_prefixed_env("VOICEGATE")
    if test_config:
        app.config.from_mapping(test_config)
    os.makedirs(app.instance_path, exist_ok=True)
    from .observe.logs import configure as configure_logs

    configure_logs(app.config["LOG_FORMAT"])
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url(app.config["DATABASE_URL"], app.instance_path)
    app.config["SECRET_KEY"] = secret_key(app.config["SECRET_KEY"], app.instance_path)
    # The weights are local files; a missing one must fail at once, not reach for a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from . import cli
    from .observe import health
    from .store import models  # noqa: F401  (models registers tables)
    from .protocols import http_api, voice_ws  # noqa: F401  (voice_ws registers a route)
    from .serving import uploads
    from .store.db import db
    from .engines.runtime import get_engines, set_engines
    from .serving.extensions import csrf, migrate, sock

    uploads.init_app(app)
    db.init_app(app)
    csrf.init_app(app)
    # The JSON API is called by programs with bearer tokens or voices, never by a form.
    csrf.exempt(http_api.bp)
    migrate.init_app(app, db, directory=str(ROOT / "migrations"), render_as_batch=True)
    sock.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(http_api.bp)
    from .web.admin import bp as admin_bp
    from .protocols.kaldi import bp as kaldi_bp  # Kõnele's endpoints (docs/konele.md)
    from .protocols.openapi import bp as openapi_bp  # /api/v1/openapi.json and /api/v1/docs
    from .observe.metrics import bp as metrics_bp  # /metrics
    from .web.pages import bp as pages_bp

    app.register_blueprint(kaldi_bp)
    app.register_blueprint(openapi_bp)
    app.register_blueprint(metrics_bp)
    app.register_blueprint(pages_bp)
    app.register_blueprint(admin_bp)
    cli.register(app)

    from .serving.proxies import trust_proxies

    # Behind nginx, the per-client limits must count the real client (docs/deployment.md).
    app.wsgi_app = trust_proxies(app.wsgi_app, app.config["TRUSTED_PROXIES"])

    from .engines.runtime import Wiring, wire
    from .gate.settings import follow_settings, whisper_to_load
    from .store.leases import shared_slots

    # The engines learn the stored Whisper choice and the shared dictation slots from here,
    # so that they import nothing above them.
    wire(app, Wiring(wanted_whisper=whisper_to_load, shared_slots=shared_slots))
    # Another instance on the same database may have switched the Whisper model.
    app.before_request(lambda: follow_settings(app))

    if engines is not None:
        set_engines(app, engines)
    elif app.config["PRELOAD_MODELS"]:
        # Load in the background so the server answers /healthz ("loading") at once.
        threading.Thread(target=get_engines, args=(app,), name="model-loader", daemon=True).start()
    return app
