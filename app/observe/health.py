"""GET /healthz: the database reachable, the voiceprint keys readable, the models present, loaded or failing."""
from __future__ import annotations

import logging

from flask import Blueprint, current_app, jsonify
from sqlalchemy import select, text
from sqlalchemy.exc import SQLAlchemyError

from ..store import vault
from ..engines import modelstore
from ..store.db import db
from ..store.models import Voiceprint
from ..engines.runtime import engines_error, engines_loaded, get_engines, whisper_status

logger = logging.getLogger(__name__)
bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """Report database and model status; 200 when usable, 503 otherwise."""
    try:
        db.session.execute(text("SELECT 1"))
        database = {"ok": True}
    except SQLAlchemyError as error:
        logger.warning("health check: database unreachable: %s", error)
        database = {"ok": False, "error": error.__class__.__name__}

    models_dir = current_app.config["MODELS_DIR"]
    loaded = engines_loaded(current_app)
    # The model in use (an admin may have switched it), else the one that will be loaded.
    whisper = whisper_status(current_app)["active"] or current_app.config["WHISPER_MODEL"]
    fused = current_app.config.get("SPEAKER_MODELS", "ecapa+campplus") != "ecapa"
    models = {
        "speaker": {"name": "ecapa", "present": modelstore.is_complete(models_dir, "ecapa"), "loaded": loaded,
                    # onnx or torch, and the arithmetic: which runtime decides (docs/benchmarks.md, "Runtimes").
                    "runtime": f"{get_engines(current_app).speaker.runtime} {get_engines(current_app).speaker.precision}"
                    if loaded else None},
        "whisper": {
            "name": whisper,
            # A hub name or a directory of the user's own cannot be checked file by file.
            "present": modelstore.is_complete(models_dir, whisper) if whisper in modelstore.WHISPER_MODELS else None,
            "loaded": loaded,
        },
        # The second speaker model, fused with ECAPA (app/engines/fused.py) unless SPEAKER_MODELS is "ecapa":
        # needed then, so its absence makes the service unavailable.
        "campplus": {"name": "campplus", "present": modelstore.is_complete(models_dir, "campplus"), "used": fused},
        # Silero ships inside faster-whisper's wheel: present whenever the package is installed.
        "vad": {"name": "silero", "loaded": loaded and get_engines(current_app).vad is not None},
    }
    error = engines_error(current_app)
    if error:
        models["error"] = error
    keys = _keystore() if database["ok"] else {"ok": False, "error": "database"}
    ok = (database["ok"] and keys["ok"] and models["speaker"]["present"] and models["whisper"]["present"] is not False
          and (models["campplus"]["present"] or not fused) and not error)
    return (jsonify(status="ok" if ok else "unavailable", database=database, keystore=keys, models=models),
            200 if ok else 503)


def _keystore() -> dict:
    """Report whether the voiceprints' keys can be read (app/store/vault.py): without them nothing is accepted."""
    try:
        key_ids = set(db.session.scalars(select(Voiceprint.key_id)))
        db.session.commit()
    except SQLAlchemyError as error:
        logger.warning("health check: voiceprints unreadable: %s", error)
        return {"ok": False, "error": "database"}
    return vault.report(key_ids)
