"""Schema, migrations and the database's guarantees, checked on real SQLite files and PostgreSQL."""
from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect, select

from app import create_app
from app.store.db import db
from app.store.models import AuditEvent, User, Voiceprint

from .conftest import BACKENDS

TABLES = {"users", "voiceprints", "audit_events", "admin_accounts", "enrollment_invites"}


def _app(tmp_path, url):
    return create_app({"DATABASE_URL": url, "SECRET_KEY": "x", "INSTANCE_PATH": str(tmp_path)})


@pytest.mark.parametrize("db_backend", BACKENDS)
def test_migrations_upgrade_and_downgrade_an_empty_database(tmp_path, database_url):
    app = _app(tmp_path, database_url)
    with app.app_context():
        upgrade()
        assert TABLES <= set(inspect(db.engine).get_table_names())
        downgrade(revision="base")
        assert not TABLES & set(inspect(db.engine).get_table_names())
        upgrade()
        assert TABLES <= set(inspect(db.engine).get_table_names())


def test_sqlite_runs_in_wal_mode_with_foreign_keys(app):
    with app.app_context():
        connection = db.session.connection()
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def _enrolled_user(name: str) -> User:
    clips = np.eye(3, 192, dtype=np.float32)
    user = User(name=name, display_name=name)
    user.voiceprint = Voiceprint.from_embeddings(clips, "test-model", speech_seconds=12.5)
    db.session.add(user)
    db.session.commit()
    return user


@pytest.mark.parametrize("db_backend", BACKENDS)
def test_voiceprint_round_trips_as_float32_bytes(app):
    with app.app_context():
        _enrolled_user("ada")
        voiceprint = db.session.scalar(select(Voiceprint))
        assert voiceprint.clip_vectors().shape == (3, 192)
        assert np.isclose(np.linalg.norm(voiceprint.centroid_vector()), 1.0)
        # Stored sealed: a version byte, a nonce, the float32 bytes encrypted, a tag; never the plain vector.
        assert len(voiceprint.centroid) == 1 + 12 + 192 * 4 + 16
        assert voiceprint.centroid_vector().astype("<f4").tobytes() not in voiceprint.centroid
        assert np.eye(3, 192, dtype="<f4").tobytes()[:192 * 4] not in voiceprint.clip_embeddings
        # Enrolled before channel copies existed: no channels, scored against the centroid as before.
        assert voiceprint.channels is None and voiceprint.channel_vectors() == {}
        phone = np.roll(np.eye(3, 192, dtype=np.float32), 1, axis=1)
        user = User(name="bo", display_name="bo")
        user.voiceprint = Voiceprint.from_embeddings(np.eye(3, 192), "test-model", 12.5, {"phone": phone})
        db.session.add(user)
        db.session.commit()
        stored = User.by_name("bo").voiceprint.channel_vectors()
        assert set(stored) == {"phone"} and np.allclose(stored["phone"], phone.mean(axis=0) / np.linalg.norm(phone.mean(axis=0)))
        # Sealed like the other embeddings, never in the clear.
        assert stored["phone"].astype("<f4").tobytes() not in User.by_name("bo").voiceprint.channel_centroids


def test_deleting_a_user_deletes_the_voiceprint_in_the_file(app, tmp_path):
    with app.app_context():
        _enrolled_user("ada")
        _enrolled_user("bob")
        User.by_name("ada").erase()
        db.session.commit()
    # Read the file itself, not the session: the rows must be gone on disk.
    raw = sqlite3.connect(tmp_path / "voicegate.db")
    assert raw.execute("SELECT name FROM users").fetchall() == [("bob",)]
    assert raw.execute("SELECT COUNT(*) FROM voiceprints").fetchone() == (1,)


@pytest.mark.parametrize("db_backend", BACKENDS)
def test_foreign_keys_cascade_even_for_raw_sql_deletes(app):
    with app.app_context():
        user_id = _enrolled_user("ada").id
        db.session.execute(db.text("DELETE FROM users WHERE id = :id"), {"id": user_id})
        db.session.commit()
        assert db.session.scalar(select(Voiceprint)) is None


def _audit(**fields) -> AuditEvent:
    event = AuditEvent(request_id="r1", kind="verify", protocol="ws", decision="accept", **fields)
    db.session.add(event)
    db.session.commit()
    return event


@pytest.mark.parametrize("db_backend", BACKENDS)
def test_audit_log_is_append_only_but_names_can_be_erased(app, db_backend):
    with app.app_context():
        _enrolled_user("ada")
        event = _audit(claimed_user="ada", matched_user="ada", score=0.8, threshold=0.4)
        with pytest.raises(Exception, match="append-only"):
            db.session.execute(db.text("DELETE FROM audit_events"))
        db.session.rollback()
        if db_backend == "postgresql":
            with pytest.raises(Exception, match="append-only"):
                db.session.execute(db.text("TRUNCATE audit_events"))
            db.session.rollback()
        with pytest.raises(Exception, match="append-only"):
            db.session.execute(db.text("UPDATE audit_events SET decision = 'reject'"))
        db.session.rollback()
        with pytest.raises(Exception, match="append-only"):
            db.session.execute(db.text("UPDATE audit_events SET claimed_user = 'mallory'"))
        db.session.rollback()

        with pytest.raises(Exception, match="append-only"):
            db.session.execute(db.text("UPDATE audit_events SET claimed_user = NULL, score = 0.1"))
        db.session.rollback()

        User.by_name("ada").erase()
        db.session.commit()
        db.session.refresh(event)
        assert (event.claimed_user, event.matched_user, event.decision, event.score) == (None, None, "accept", 0.8)
    with app.app_context():
        assert db.session.scalar(select(AuditEvent.decision)) == "accept"  # every refused change left it as it was
