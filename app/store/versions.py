"""Version counters in the database: how an instance learns that its copy of something is stale.

Triggers (migration 0006_shared_state) bump ``voiceprints`` on any change to the enrolled
voices and ``settings`` on any change to the settings, in the same transaction, so an
instance that keeps a copy learns it is stale by reading one row.
"""
from __future__ import annotations

from sqlalchemy import select

from .db import db
from .models import Version


def current(name: str) -> int | None:
    """Return the counter ``name`` (None before the migration that adds it). Ends the read."""
    value = db.session.scalar(select(Version.value).where(Version.name == name))
    db.session.commit()
    return value
