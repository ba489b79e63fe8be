"""Erasure that holds on any database: voiceprints sealed with per-user keys kept outside the database.

A backup taken before a deletion is restored afterwards, with the server's own secret and
keystore, and still gives no voice back; a missing keystore or a wrong secret accepts nothing;
the secret is rotated by re-wrapping the keys; a database from before encryption is upgraded
in place and its users still log in.
"""
from __future__ import annotations

import logging
import os
import shutil
import sqlite3

import numpy as np
import pytest
from flask_migrate import downgrade, upgrade
from sqlalchemy import select, text

from app.store import vault
from app.store.db import db
from app.gate import store
from app.store.keystore import Keystore
from app.store.models import User, Voiceprint
from app.store.vault import VoiceprintUnavailable
from clients import voicegate

from .conftest import BACKENDS, LJ_ENROLL, make_app, serve
from .test_admin import add_admin, add_voiceprint, post, sign_in

SECRET = "test-secret"  # make_app's


def _backup(app, tmp_path, postgres_server=None) -> str:
    """Copy the app's database as an operator's backup would; return the URL it restores to."""
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    if url.startswith("sqlite:///"):
        # The file and its write-ahead log, as a plain file copy of a running server catches them.
        source = url.removeprefix("sqlite:///")
        folder = tmp_path / "backup"
        folder.mkdir()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(source + suffix):
                shutil.copy(source + suffix, folder / ("voicegate.db" + suffix))
        return f"sqlite:///{folder / 'voicegate.db'}"
    dump = tmp_path / "backup.dump"
    postgres_server.run("pg_dump", "--format=custom", "--file", str(dump), postgres_server.libpq_url(_name(url)))
    restored = postgres_server.create_database("restored")
    postgres_server.run("pg_restore", "--no-owner", "--dbname", postgres_server.libpq_url(_name(restored)), str(dump))
    return restored


def _name(url: str) -> str:
    return url.partition("?")[0].rsplit("/", 1)[1]


@pytest.mark.parametrize("db_backend", BACKENDS)
def test_a_backup_from_before_a_deletion_or_reset_gives_no_voice_back(app, client, tmp_path, request, db_backend):
    kept, deleted, reset = (add_voiceprint(app, name) for name in ("cy", "ada", "bob"))
    with app.app_context():
        ids = {name: User.by_name(name).id for name in ("ada", "bob")}
        plain = {name: User.by_name(name).voiceprint.centroid_vector().copy() for name in ("cy", "ada", "bob")}
    server = request.getfixturevalue("postgres_server") if db_backend == "postgresql" else None
    backup_url = _backup(app, tmp_path, server)
    keystore = vault.keystore_path(app.config, app.instance_path)
    with app.app_context(), sqlite3.connect(keystore) as raw:
        wrapped = [raw.execute("SELECT wrapped FROM keys WHERE id = ?",
                               (User.by_name(name).voiceprint.key_id,)).fetchone()[0] for name in ("cy", "ada", "bob")]

    add_admin(app)
    sign_in(client)
    post(client, f"/admin/users/{ids['ada']}/delete", confirm="yes")
    post(client, f"/admin/users/{ids['bob']}/reset", confirm="yes")

    # The backup, restored with the server's own secret and keystore: what an attacker holding
    # the backup and the server's secrets (not the deleted keys) would have.
    restored = make_app(tmp_path / "restored", DATABASE_URL=backup_url, SECRET_KEY=SECRET, KEYSTORE_PATH=str(keystore))
    with restored.app_context():
        rows = {user.name: user.voiceprint for user in db.session.scalars(select(User))}
        assert set(rows) == {"cy", "ada", "bob"}  # the backup does hold all three sealed voiceprints
        assert (rows["ada"].centroid, rows["bob"].centroid, rows["cy"].centroid) == (deleted, reset, kept)
        assert np.allclose(rows["cy"].centroid_vector(), plain["cy"])  # so it can be restored and used
        for name in ("ada", "bob"):
            with pytest.raises(VoiceprintUnavailable):
                rows[name].centroid_vector()
            with pytest.raises(VoiceprintUnavailable):
                rows[name].clip_vectors()
            assert plain[name].astype("<f4").tobytes() not in rows[name].centroid
            assert rows[name].key_id not in vault.keystore().ids()
        assert set(store.enrolled_voices()) == {"cy"}  # the others are matched nowhere
    # Nor do the wrapped keys survive in the keystore's file: overwritten, not left in a free page.
    files = [path.read_bytes() for path in keystore.parent.glob(keystore.name + "*")]
    assert any(wrapped[0] in content for content in files)  # the check can see a key that is there
    assert not any(key in content for key in wrapped[1:] for content in files)
    if server:
        server.drop_database(backup_url)


@pytest.fixture(scope="module")
def lj_embeddings(engines, speech) -> np.ndarray:
    """The LJ Speech reader's enrollment clips as real ECAPA embeddings (clips × 192), as older servers stored them."""
    return np.stack([engines.speaker.ecapa.embed(speech.load(f)) for f in LJ_ENROLL]).astype("<f4")


def test_without_the_keystore_or_with_another_secret_nothing_is_accepted(tmp_path, engines, speech, lj_embeddings):
    app = make_app(tmp_path, engines)
    client = app.test_client()
    clip = speech.path("wav/ljspeech/LJ001-0004.wav").read_bytes()
    with app.app_context():
        user = User(name="lj", display_name="lj")
        user.voiceprint = Voiceprint.from_embeddings(lj_embeddings, "ecapa", 20.0)
        db.session.add(user)
        db.session.commit()

    def verify(on=client, user="lj"):
        return on.post("/api/v1/verify" + (f"?user={user}" if user else ""), data=clip, content_type="audio/wav")

    accepted = verify().json
    assert accepted["state"] == "accept"
    token = {"Authorization": f"Bearer {accepted['token']}"}
    assert client.get("/healthz").json["keystore"] == {"ok": True, "voiceprints": 1, "unreadable": 0}

    keystore = vault.keystore_path(app.config, app.instance_path)
    keystore.rename(keystore.with_suffix(".away"))
    for user in ("lj", None):  # 1:1 and 1:N
        refused = verify(user=user)
        assert refused.status_code == 503 and refused.json["error"]["code"] == "voiceprint_unavailable"
    # Dictation, with the token of a login made before: nothing is transcribed.
    refused = client.post("/api/v1/transcribe", data=clip, content_type="audio/wav", headers=token)
    assert refused.status_code == 503 and refused.json["error"]["code"] == "voiceprint_unavailable"
    live, stop = serve(app)
    try:
        for mode, fields in (("verify", {"user": "lj"}), ("dictate", {"token": accepted["token"]})):
            answer = voicegate.run(mode, [speech.path("wav/ljspeech/LJ001-0004.wav")], live.ws_url, echo=lambda _: None,
                                   **fields)
            assert (answer["type"], answer["code"]) == ("error", "voiceprint_unavailable"), answer
    finally:
        stop()
    health = client.get("/healthz")
    assert health.status_code == 503 and health.json["keystore"]["error"] == "missing"
    keystore.with_suffix(".away").rename(keystore)
    assert verify().json["state"] == "accept"

    # The same database and keystore under another secret: the keys do not unwrap.
    other = make_app(tmp_path / "other", engines, DATABASE_URL=app.config["SQLALCHEMY_DATABASE_URI"],
                     SECRET_KEY="another-secret", KEYSTORE_PATH=str(keystore))
    refused = verify(other.test_client())
    assert refused.status_code == 503 and refused.json["error"]["code"] == "voiceprint_unavailable"
    health = other.test_client().get("/healthz").json
    assert health["status"] == "unavailable" and health["keystore"]["error"] == "another_secret"


def test_rotating_the_secret_rewraps_every_key_and_logs_no_secret(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    old_app = make_app(tmp_path)
    add_voiceprint(old_app, "ada")
    add_voiceprint(old_app, "bob")
    keystore = str(vault.keystore_path(old_app.config, old_app.instance_path))
    new_secret = "rotated-" + "9" * 40
    new_app = make_app(tmp_path / "new", DATABASE_URL=old_app.config["SQLALCHEMY_DATABASE_URI"],
                       SECRET_KEY=new_secret, KEYSTORE_PATH=keystore)
    runner = new_app.test_cli_runner()
    before = runner.invoke(args=["keys", "check"])
    assert before.exit_code == 1 and "another_secret" in before.output

    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-old-secret\n")
    refused = runner.invoke(args=["keys", "rewrap", "--old-secret-file", str(wrong)])
    assert refused.exit_code == 1 and "nothing was changed" in refused.output
    old_file = tmp_path / "old"
    old_file.write_text(SECRET + "\n")
    result = runner.invoke(args=["keys", "rewrap", "--old-secret-file", str(old_file)])
    assert result.exit_code == 0 and "re-wrapped 2 keys" in result.output, result.output
    assert runner.invoke(args=["keys", "rewrap", "--old-secret-file", str(old_file)]).output.startswith(
        "re-wrapped 0 keys")  # done again, it changes nothing

    after = runner.invoke(args=["keys", "check"])
    assert after.exit_code == 0 and "2 voiceprints, 0 without a readable key" in after.output
    with new_app.app_context():
        assert User.by_name("ada").voiceprint.centroid_vector().shape == (192,)
    with old_app.app_context():  # the old secret opens nothing any more
        with pytest.raises(VoiceprintUnavailable):
            User.by_name("ada").voiceprint.centroid_vector()
    outputs = before.output + refused.output + result.output + after.output + caplog.text
    for secret in (SECRET, new_secret, "not-the-old-secret"):
        assert secret not in outputs


def test_keys_left_by_rows_deleted_outside_voicegate_are_pruned_and_lost_ones_named(app, runner):
    add_voiceprint(app, "ada")
    with app.app_context():
        key_id = User.by_name("ada").voiceprint.key_id
        db.session.execute(text("DELETE FROM users"))  # e.g. by hand, in SQL
        db.session.commit()
    assert runner.invoke(args=["keys", "prune", "--min-age", "0"]).output.strip() == "destroyed 1 unused keys"
    add_voiceprint(app, "bob")
    add_voiceprint(app, "cy")
    with app.app_context():  # a key lost some other way: its user is named, to be invited again
        vault.keystore().destroy(User.by_name("bob").voiceprint.key_id)
    check = runner.invoke(args=["keys", "check"])
    assert check.exit_code == 1 and "2 voiceprints, 1 without a readable key" in check.output
    assert "to enroll again: bob\n" in check.output
    assert key_id not in Keystore(vault.keystore_path(app.config, app.instance_path), SECRET).ids()


@pytest.mark.parametrize("db_backend", BACKENDS)
def test_upgrading_seals_existing_plain_voiceprints_and_their_owner_still_logs_in(
        tmp_path, engines, speech, db_backend, database_url, lj_embeddings):
    from app import create_app

    config = {"TESTING": True, "SECRET_KEY": SECRET, "DATABASE_URL": database_url,
              "INSTANCE_PATH": str(tmp_path / "instance"), "POLICY_REPLAY_SECONDS": 600, "POLICY_CHALLENGE": "off"}
    app = create_app(config, engines=engines)
    centroid = lj_embeddings.mean(axis=0)
    centroid = (centroid / np.linalg.norm(centroid)).astype("<f4")
    with app.app_context():
        upgrade(revision="0004")  # the schema before encryption, voiceprints in plain float32 bytes
        db.session.execute(text(
            "INSERT INTO users (id, public_id, name, display_name, active, created_at, failed_attempts, "
            "dictation_key_version) VALUES (1, 'p1', 'lj', 'LJ', true, CURRENT_TIMESTAMP, 0, 1)"))
        db.session.execute(text(
            "INSERT INTO voiceprints (user_id, model_id, dim, clip_count, clip_embeddings, centroid, speech_seconds, "
            "created_at) VALUES (1, 'ecapa', 192, 3, :clips, :centroid, 20.0, CURRENT_TIMESTAMP)"),
            {"clips": lj_embeddings.tobytes(), "centroid": centroid.tobytes()})
        db.session.execute(text("INSERT INTO recent_voices (user_id, embedding, created_at) "
                                "VALUES (1, :e, CURRENT_TIMESTAMP)"), {"e": lj_embeddings[0].tobytes()})
        db.session.commit()
        upgrade()
        raw = db.session.execute(text("SELECT key_id, centroid, clip_embeddings FROM voiceprints")).one()
        recent = db.session.scalar(text("SELECT embedding FROM recent_voices"))
        assert raw.key_id in vault.keystore().ids()
        assert centroid.tobytes() not in bytes(raw.centroid)
        assert lj_embeddings.tobytes()[:768] not in bytes(raw.clip_embeddings)
        assert lj_embeddings[0].tobytes() not in bytes(recent)
        user = User.by_name("lj")
        assert np.allclose(user.voiceprint.centroid_vector(), centroid)
        assert np.allclose(store.given_voices(user, 600), np.vstack([lj_embeddings, lj_embeddings[:1]]))
    if db_backend == "sqlite":  # nor is the plain form left in the file or its write-ahead log
        for path in tmp_path.glob("voicegate.db*"):
            assert lj_embeddings[1].tobytes() not in path.read_bytes(), path
    clip = speech.path("wav/ljspeech/LJ001-0004.wav").read_bytes()
    answer = app.test_client().post("/api/v1/verify?user=lj", data=clip, content_type="audio/wav")
    assert answer.json["state"] == "accept", answer.json

    with app.app_context():  # and back: the downgrade decrypts, then destroys the keys
        key_id = raw.key_id
        downgrade(revision="0004")
        assert bytes(db.session.scalar(text("SELECT centroid FROM voiceprints"))) == centroid.tobytes()
        assert key_id not in vault.keystore().ids()
