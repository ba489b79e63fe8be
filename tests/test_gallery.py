"""1:N identification against the matrix of enrolled voices, kept right across two app instances on one
database (SQLite and PostgreSQL) by the ``voiceprints`` version counter, with real embeddings.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from sqlalchemy import select

from app.store.db import db
from app.gate import decide, gallery
from app.gate.calibration import Quality, load_cohort
from app.gate.policy import Policy
from app.store.models import User, Voiceprint

from .conftest import BACKENDS, LJ_ENROLL, make_app

LJ_TEST = "wav/ljspeech/LJ001-0004.wav"
STRANGERS = 120  # random unit voices beside the real one: more than the shortlist scored in full
_addresses = (f"10.9.0.{n}" for n in itertools.count(1))


def _identify(app, speech) -> dict:
    """Identify the LJ test clip over app's HTTP API, each time from a new client address."""
    reply = app.test_client().post("/api/v1/verify", data=speech.path(LJ_TEST).read_bytes(),
                                   content_type="audio/wav", environ_base={"REMOTE_ADDR": next(_addresses)})
    assert reply.status_code == 200, reply.text
    return reply.get_json()


@pytest.mark.parametrize("db_backend", BACKENDS)
def test_an_enrollment_or_deletion_on_one_instance_reaches_the_others_matrix(tmp_path, engines, speech, database_url):
    shared = {"DATABASE_URL": database_url, "KEYSTORE_PATH": str(tmp_path / "keystore.db")}
    one = make_app(tmp_path / "one", engines, **shared)
    other = make_app(tmp_path / "other", engines, **shared)
    rng = np.random.default_rng(13)
    strangers = rng.normal(size=(STRANGERS, 192)).astype(np.float32)
    strangers /= np.linalg.norm(strangers, axis=1, keepdims=True)
    with one.app_context():
        for n, vector in enumerate(strangers):
            user = User(name=f"stranger{n}", display_name="")
            user.voiceprint = Voiceprint.from_embeddings(vector[None, :], "ecapa", 20.0)
            db.session.add(user)
        db.session.commit()

    assert _identify(other, speech)["state"] == "reject"  # the other instance now holds its matrix
    with other.app_context():
        held = gallery.current()
    assert len(held.names) == STRANGERS

    with one.app_context():  # one enrolls lj from real speech
        clips = np.stack([engines.speaker.embed(speech.load(f)) for f in LJ_ENROLL])
        user = User(name="lj", display_name="LJ")
        user.voiceprint = Voiceprint.from_embeddings(clips, "ecapa", 20.0)
        db.session.add(user)
        db.session.commit()
    with other.app_context():
        fresh = gallery.current()
    assert fresh.version != held.version and len(fresh.names) == STRANGERS + 1
    # Figures worked out for the first identification that lj's voice does not change are carried
    # over to the new matrix, and they are what working them out again gives.
    assert set(fresh.stats.values()) <= set(held.stats.values())
    again: dict = {}
    test = fresh.columns[:, 0]
    decide._score_rows(test, test @ fresh.columns, np.arange(len(fresh.names)), fresh.columns, list(fresh.stats),
                       fresh.names, Policy(), Quality(5.0, 30.0, -0.1), load_cohort(), again)
    assert all(np.allclose(fresh.stats[row][:2], again[row][:2]) for row in fresh.stats)
    found = _identify(other, speech)
    assert (found["state"], found["user"]) == ("accept", "lj"), found

    with one.app_context():  # one disables lj, then enables and deletes them
        lj = db.session.scalar(select(User).where(User.name == "lj"))
        lj.active = False
        db.session.commit()
    assert _identify(other, speech)["state"] == "reject"
    with one.app_context():
        lj = db.session.scalar(select(User).where(User.name == "lj"))
        lj.active = True
        db.session.commit()
    assert _identify(other, speech)["user"] == "lj"
    with one.app_context():
        db.session.scalar(select(User).where(User.name == "lj")).erase()
        db.session.commit()
    assert _identify(other, speech)["state"] == "reject"
    with other.app_context():
        assert "lj" not in gallery.current().names
