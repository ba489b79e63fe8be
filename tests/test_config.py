"""Configuration precedence, and the generated secret key."""
from __future__ import annotations

import stat

from app import create_app


def test_defaults_then_environment_then_mapping(tmp_path, monkeypatch):
    monkeypatch.setenv("VOICEGATE_WHISPER_MODEL", "base")
    monkeypatch.setenv("VOICEGATE_MAX_AUDIO_SECONDS", "30")
    monkeypatch.setenv("VOICEGATE_INFERENCE_QUEUE", "3")
    app = create_app({"INSTANCE_PATH": str(tmp_path), "INFERENCE_QUEUE": 5})
    assert app.config["WHISPER_MODEL"] == "base"  # environment over default
    assert app.config["MAX_AUDIO_SECONDS"] == 30  # parsed, not a string
    assert app.config["INFERENCE_QUEUE"] == 5  # mapping over environment
    assert app.config["WHISPER_BEAM_SIZE"] == 5  # default


def test_database_defaults_to_sqlite_in_the_instance_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("VOICEGATE_DATABASE_URL", raising=False)
    app = create_app({"INSTANCE_PATH": str(tmp_path)})
    assert app.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path}/voicegate.db"
    monkeypatch.setenv("VOICEGATE_DATABASE_URL", "postgresql+psycopg://vg@db/voicegate")
    app = create_app({"INSTANCE_PATH": str(tmp_path)})
    assert app.config["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://vg@db/voicegate"


def test_secret_key_is_generated_once_and_kept_private(tmp_path, monkeypatch):
    monkeypatch.delenv("VOICEGATE_SECRET_KEY", raising=False)
    first = create_app({"INSTANCE_PATH": str(tmp_path)}).config["SECRET_KEY"]
    second = create_app({"INSTANCE_PATH": str(tmp_path)}).config["SECRET_KEY"]
    assert first == second and len(first) >= 32
    assert stat.S_IMODE((tmp_path / "secret_key").stat().st_mode) == 0o600
    monkeypatch.setenv("VOICEGATE_SECRET_KEY", "from-the-environment")
    assert create_app({"INSTANCE_PATH": str(tmp_path)}).config["SECRET_KEY"] == "from-the-environment"
