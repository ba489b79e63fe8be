"""Configuration precedence, and the generated secret key."""
from __future__ import annotations

import stat
import subprocess
import sys

from app import create_app

from .conftest import ROOT


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


def test_the_app_factory_and_the_clients_import_no_model_library(tmp_path):
    # Migrations, the CLI and /healthz must start without torch, PyAV or faster-whisper;
    # the command-line clients must not need Flask at all.
    heavy = ("torch", "torchaudio", "av", "faster_whisper", "ctranslate2", "speechbrain", "onnxruntime")
    script = (
        "import sys\n"
        "from app import create_app\n"
        f"create_app({{'INSTANCE_PATH': {str(tmp_path)!r}, 'PRELOAD_MODELS': False}})\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})))\n"
    )
    app_side = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert app_side.returncode == 0, app_side.stderr
    assert app_side.stdout.strip().splitlines()[-1] == "[]", app_side.stdout
    clients = "import sys, clients.voicegate, clients.kaldi; print(sorted({m.split('.')[0] for m in sys.modules} & {'flask', 'app'}))"
    client_side = subprocess.run([sys.executable, "-c", clients], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert client_side.returncode == 0 and client_side.stdout.strip() == "[]", client_side.stdout + client_side.stderr
