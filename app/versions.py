"""Version counters in the database, and each instance following the settings by them.

Triggers (migration 0006_shared_state) bump ``voiceprints`` on any change to the enrolled
voices and ``settings`` on any change to the settings, in the same transaction, so an
instance that keeps a copy learns it is stale by reading one row.
"""
from __future__ import annotations

import logging
import threading
import time

from flask import Flask
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from .db import db
from .models import Version

logger = logging.getLogger(__name__)

# How often an instance at most looks whether another one changed the settings.
FOLLOW_SECONDS = 1.0
_FOLLOW_KEY = "voicegate.settings_follow"


def current(name: str) -> int | None:
    """Return the counter ``name`` (None before the migration that adds it). Ends the read."""
    value = db.session.scalar(select(Version.value).where(Version.name == name))
    db.session.commit()
    return value


class _Follow:
    def __init__(self):
        self.checked = 0.0
        self.seen: int | None = None
        self.lock = threading.Lock()


def follow_settings(app: Flask) -> None:
    """Switch the Whisper model when another instance changed it (looks at most once a second).

    The policy itself is read from the database for every session, so only what a process
    holds in memory (the loaded Whisper model) needs following.
    """
    from .engines.runtime import engines_loaded, get_engines, switch_whisper, whisper_status
    from .settings import whisper_model, whisper_present

    follow: _Follow = app.extensions.setdefault(_FOLLOW_KEY, _Follow())
    now = time.monotonic()
    if now - follow.checked < FOLLOW_SECONDS or not engines_loaded(app) or not follow.lock.acquire(blocking=False):
        return
    try:
        follow.checked = now
        try:
            version = current("settings")
        except SQLAlchemyError as error:  # looked at again on a later request
            db.session.rollback()
            logger.warning("could not read the settings version: %s", error)
            return
        if version == follow.seen:
            return
        follow.seen = version
        wanted = whisper_model()
        if whisper_present(wanted) is False:
            logger.warning("Whisper %s is chosen in the settings but not on disk here; keeping the one loaded", wanted)
            return
        status = whisper_status(app)
        if wanted != (status.get("wanted") or get_engines(app).whisper_name):
            logger.info("the settings changed elsewhere: switching Whisper to %s", wanted)
            switch_whisper(app, wanted)
    finally:
        follow.lock.release()
