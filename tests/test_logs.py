"""VOICEGATE_LOG_FORMAT=json: the server's log lines are JSON objects, one a line."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import logging
from app import create_app
app = create_app({"TESTING": True, "SECRET_KEY": "k", "DATABASE_URL": "sqlite://", "INSTANCE_PATH": %r})
logging.getLogger("app.web.pages").info("user %%s signed in by voice", "ada")
logging.getLogger("app.gate").warning("a voice with ünïcode")
"""


def run(tmp_path: Path, **env) -> list[str]:
    result = subprocess.run([sys.executable, "-c", SCRIPT % str(tmp_path / "instance")], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_json_logs_are_one_object_a_line(tmp_path):
    lines = run(tmp_path, VOICEGATE_LOG_FORMAT="json")
    records = [json.loads(line) for line in lines]  # every line parses
    signed_in = next(r for r in records if r["logger"] == "app.web.pages")
    assert signed_in["message"] == "user ada signed in by voice" and signed_in["level"] == "INFO"
    assert signed_in["time"][:2] == "20" and "T" in signed_in["time"]
    assert any(r["message"] == "a voice with ünïcode" and r["level"] == "WARNING" for r in records)


def test_text_logs_stay_the_default():
    from app.observe import logs

    root = logging.getLogger()
    handlers = list(root.handlers)
    logs.configure("text")
    assert root.handlers == handlers
