"""GET /healthz, in-process and from the real gunicorn server that the run command starts."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request

from .conftest import ROOT, make_app


def test_healthz_reports_database_and_models(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok" and body["database"]["ok"] is True
    speaker = body["models"]["speaker"]
    assert {k: speaker[k] for k in ("name", "present", "loaded")} == {"name": "ecapa", "present": True, "loaded": True}
    assert speaker["runtime"] in ("onnx float32", "torch float32", "torch bfloat16")
    assert body["models"]["whisper"]["name"] == "tiny.en" and body["models"]["whisper"]["present"] is True
    assert body["models"]["vad"] == {"name": "silero", "loaded": True}
    # Fused with ECAPA (the default SPEAKER_MODELS): needed for the service to be available.
    assert body["models"]["campplus"] == {"name": "campplus", "present": True, "used": True}


def test_healthz_is_503_without_model_files(tmp_path):
    client = make_app(tmp_path, MODELS_DIR=str(tmp_path / "no-models")).test_client()
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["models"]["speaker"]["present"] is False
    assert response.get_json()["models"]["campplus"]["present"] is False


def test_healthz_is_503_when_the_database_is_unreachable(tmp_path, engines):
    from app import create_app

    app = create_app(
        {"DATABASE_URL": f"sqlite:///{tmp_path}/missing-dir/x.db", "SECRET_KEY": "x", "INSTANCE_PATH": str(tmp_path)},
        engines=engines,
    )
    response = app.test_client().get("/healthz")
    assert response.status_code == 503 and response.get_json()["database"]["ok"] is False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_script_starts_gunicorn_with_models_loaded(tmp_path):
    make_app(tmp_path)  # migrate the database the server will use
    port = _free_port()
    env = {
        **os.environ,
        "VOICEGATE_PORT": str(port),
        "VOICEGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'voicegate.db'}",
        "VOICEGATE_INSTANCE_PATH": str(tmp_path / "instance"),
    }
    server = subprocess.Popen([str(ROOT / "scripts" / "serve.sh")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        body, deadline = None, time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
                    body = json.load(response)
                if body["models"]["speaker"]["loaded"]:
                    break
            except OSError:  # not listening yet (URLError), or still loading the models on a busy machine (timeout)
                pass
            assert server.poll() is None, server.stdout.read().decode()
            time.sleep(0.5)
        assert body is not None and body["status"] == "ok"
        assert body["models"]["speaker"]["loaded"] and body["models"]["whisper"]["loaded"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_every_error_under_the_api_is_json(client):
    unknown = client.get("/api/v1/nope")
    wrong_method = client.get("/api/v1/verify")
    assert unknown.status_code == 404 and unknown.json["error"]["code"] == "not_found"
    assert wrong_method.status_code == 405 and wrong_method.json["error"]["code"] == "method_not_allowed"
    assert "<html" not in unknown.get_data(as_text=True).lower()
    assert client.get("/no-such-page").mimetype == "text/html"  # pages keep their HTML errors
