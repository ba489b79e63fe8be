"""Shared fixtures: the real models (loaded once), the dev speech set, an app per test."""
from __future__ import annotations

import csv
import fcntl
import hashlib
import os
import sqlite3
import threading
import wave
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from flask_migrate import upgrade
from werkzeug.serving import make_server

from app import create_app

from .postgres import postgres_database, postgres_server  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]
SPEECH_DEV = Path(os.environ.get("VOICEGATE_SPEECH_DEV", ROOT.parent / "shared" / "data" / "speech-dev"))
SPEECH_MORE = Path(os.environ.get("VOICEGATE_SPEECH_MORE", ROOT.parent / "shared" / "data" / "speech-more"))
MODELS_DIR = Path(os.environ.get("VOICEGATE_MODELS_DIR", ROOT / "pretrained_models"))


@dataclass(frozen=True)
class Utterance:
    """One file of the dev set with its speaker and transcript."""

    file: str
    speaker: str
    transcript: str
    language: str


class SpeechSet:
    """A directory in the speech-dev format: speakers.tsv, trials.tsv and wav/."""

    def __init__(self, root: Path):
        self.root = root
        with open(root / "speakers.tsv", newline="") as handle:
            self.utterances = [
                Utterance(row["file"], row["speaker"], row["transcript"], row.get("language") or "en")
                for row in csv.DictReader(handle, delimiter="\t")
            ]
        with open(root / "trials.tsv", newline="") as handle:
            self.trials = [
                (row["enroll_files"].split(","), row["test_file"], row["label"] == "1")
                for row in csv.DictReader(handle, delimiter="\t")
            ]

    def path(self, file: str) -> Path:
        """Return the absolute path of a file named relative to the set."""
        return self.root / file

    def load(self, file: str) -> np.ndarray:
        """Return a 16 kHz mono 16-bit WAV of the set as float32."""
        with wave.open(str(self.path(file))) as handle:
            assert handle.getframerate() == 16000 and handle.getnchannels() == 1
            return np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2").astype(np.float32) / 32768

    def by_speaker(self) -> dict[str, list[Utterance]]:
        """Return the utterances grouped by speaker."""
        groups: dict[str, list[Utterance]] = {}
        for utterance in self.utterances:
            groups.setdefault(utterance.speaker, []).append(utterance)
        return groups


@pytest.fixture(scope="session")
def speech() -> SpeechSet:
    """The dev speech set (VOICEGATE_SPEECH_DEV overrides where it is)."""
    if not (SPEECH_DEV / "trials.tsv").is_file():
        pytest.fail(f"the dev speech set is not at {SPEECH_DEV}; set VOICEGATE_SPEECH_DEV")
    return SpeechSet(SPEECH_DEV)


@pytest.fixture(scope="session")
def more() -> SpeechSet:
    """speech-more: many more real speakers and languages (VOICEGATE_SPEECH_MORE overrides where it is)."""
    if not (SPEECH_MORE / "speakers.tsv").is_file():
        pytest.fail(f"speech-more is not at {SPEECH_MORE}; set VOICEGATE_SPEECH_MORE")
    return SpeechSet(SPEECH_MORE)


@pytest.fixture(scope="session")
def engines():
    """The real ECAPA and tiny.en models, loaded once for the whole run."""
    from app.engines.runtime import load_engines

    engines = load_engines(MODELS_DIR, "tiny.en", workers=2, queue=8)
    yield engines
    engines.pool.shutdown()


def make_app(tmp_path: Path, engines=None, **overrides):
    """Create an app with its own SQLite file under ``tmp_path``, migrated to head."""
    config = {
        "TESTING": True,
        "SECRET_KEY": "test-secret",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'voicegate.db'}",
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "MODELS_DIR": str(MODELS_DIR),
        # Most tests log in with the same dev sentences again and again, which the replay memory
        # of accepted attempts would rightly refuse; tests of replay and the challenge turn them on.
        "POLICY_REPLAY_SECONDS": 0,
        "POLICY_CHALLENGE": "off",
    }
    config.update(overrides)
    app = create_app(config, engines=engines)
    with app.app_context():
        upgrade()
    return app


# Tests (or modules, through pytestmark) that must hold on every database parametrize this:
# @pytest.mark.parametrize("db_backend", BACKENDS). Everything else runs on SQLite only.
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture
def db_backend() -> str:
    """The database the test's ``app`` runs on: "sqlite" unless the test parametrizes it."""
    return "sqlite"


@pytest.fixture
def database_url(db_backend, tmp_path, request) -> str:
    """The URL of a fresh database of the ``db_backend`` kind, for this test alone."""
    if db_backend == "sqlite":
        return f"sqlite:///{tmp_path / 'voicegate.db'}"
    assert db_backend == "postgresql", db_backend
    # Looked up only here, so an SQLite-only run never starts PostgreSQL.
    return request.getfixturevalue("postgres_database")


def module_database_url(request, folder: Path) -> str:
    """Return a fresh database URL for a module-scoped fixture parametrized by backend ("sqlite"/"postgresql")."""
    if request.param == "sqlite":
        return f"sqlite:///{folder / 'voicegate.db'}"
    server = request.getfixturevalue("postgres_server")
    url = server.create_database()
    request.addfinalizer(lambda: server.drop_database(url))
    return url


@pytest.fixture
def app(tmp_path, engines, database_url):
    """An app on a fresh database (SQLite unless ``db_backend`` says otherwise), sharing the real models."""
    return make_app(tmp_path, engines, DATABASE_URL=database_url)


@pytest.fixture
def client(app):
    """A test client for ``app``."""
    return app.test_client()


@pytest.fixture
def runner(app):
    """A CLI runner for ``app``."""
    return app.test_cli_runner()


@dataclass
class LiveServer:
    """A real threaded HTTP/WebSocket server on 127.0.0.1 around one app."""

    app: object
    url: str

    @property
    def ws_url(self) -> str:
        """Return the voice WebSocket's URL."""
        return self.url.replace("http://", "ws://") + "/ws/voice"

    def invite(self, name: str) -> str:
        """Create user ``name`` if needed and return a fresh enrollment invite token (via the CLI)."""
        runner = self.app.test_cli_runner()
        runner.invoke(args=["users", "create", name])
        result = runner.invoke(args=["users", "invite", name])
        assert result.exit_code == 0, result.output
        return result.output.strip().splitlines()[-1]


def serve(app):
    """Start ``app`` on a free port of 127.0.0.1; return (LiveServer, stop function)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        thread.join(timeout=10)

    return LiveServer(app, f"http://127.0.0.1:{server.server_port}"), stop


@pytest.fixture
def live(app):
    """A real server on 127.0.0.1 with a fresh database and the session's models."""
    server, stop = serve(app)
    yield server
    stop()


# The LJ Speech reader's enrollment clips, shared by the modules that need an enrolled user.
LJ_ENROLL = ["wav/ljspeech/LJ001-0003.wav", "wav/ljspeech/LJ001-0005.wav", "wav/ljspeech/LJ001-0007.wav"]


def serve_enrolled(folder: Path, engines, speech: SpeechSet, name: str = "lj", files: list[str] = LJ_ENROLL,
                   enroll_here: bool = False, **overrides):
    """Start a server on a fresh database where ``name`` enrolled from ``files`` over the WebSocket.

    The first such server of the run enrolls for real; later ones with the same name, clips and
    enrollment settings start on a copy of its database and keystore, taken right after, unless
    ``enroll_here`` (a test that counts the enrollment itself).
    Returns (LiveServer, stop function), as ``serve`` does.
    """
    from clients import voicegate as client

    snapshot = None if enroll_here else _enrolled_snapshot(name, files, overrides)
    with _locked(snapshot):
        if snapshot is not None and (snapshot / "done").exists():
            _copy_databases(snapshot, folder)
            return serve(make_app(folder, engines, **overrides))
        live, stop = serve(make_app(folder, engines, **overrides))
        enrolled = client.run("enroll", [speech.path(f) for f in files], live.ws_url, invite=live.invite(name),
                              echo=lambda _: None)
        assert enrolled["state"] == "enrolled", enrolled
        if snapshot is not None:
            _copy_databases(folder, snapshot)
            (snapshot / "done").touch()
    return live, stop


# A dozen modules start a server where the LJ Speech reader is enrolled on the same three clips,
# seconds of model work each time (every clip is embedded as heard and through the telephone
# channel). The enrollment itself is tested where it is the subject (test_voice_login,
# test_enrollment, test_pages); elsewhere it is the starting state, so it is made once a run.
_SNAPSHOTS: dict[str, Path] = {}
# Settings that change what an enrollment stores, or where: these servers enroll for themselves.
_OWN_ENROLLMENT = ("POLICY_ENROLL", "DATABASE_URL", "SECRET_KEY", "KEYSTORE_PATH", "INSTANCE_PATH")


@pytest.fixture(scope="session", autouse=True)
def _enrolled_snapshots(tmp_path_factory):
    """Keep copies of enrolled databases in a folder that every xdist worker of this run shares."""
    root = tmp_path_factory.getbasetemp()
    _SNAPSHOTS["root"] = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "enrolled"
    _SNAPSHOTS["root"].mkdir(exist_ok=True)


def _enrolled_snapshot(name: str, files: list[str], overrides: dict) -> Path | None:
    """Return the folder for a copy of the database where ``name`` enrolled on ``files``, if one may be shared."""
    if "root" not in _SNAPSHOTS or any(key.startswith(_OWN_ENROLLMENT) for key in overrides):
        return None
    return _SNAPSHOTS["root"] / hashlib.sha256(repr((name, list(files))).encode()).hexdigest()[:16]


@contextmanager
def _locked(snapshot: Path | None):
    """Hold the snapshot's lock across xdist workers, so that one enrolls while the others wait for its copy."""
    if snapshot is None:
        yield
        return
    snapshot.mkdir(exist_ok=True)
    with open(snapshot / "lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _copy_databases(source: Path, target: Path) -> None:
    """Copy the SQLite database and the instance folder's keystore through SQLite's backup API (safe under WAL)."""
    for relative in ("voicegate.db", "instance/keystore.db"):
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(source / relative)) as src, closing(sqlite3.connect(target / relative)) as dst:
            src.backup(dst)


def pcm(audio: np.ndarray) -> bytes:
    """Return float32 audio as 16-bit little-endian PCM bytes."""
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


PCM16K = {"encoding": "pcm_s16le", "sample_rate": 16000, "channels": 1}


def metric(url: str, series: str) -> float:
    """Return one series' value on the server's /metrics (``name{label="value"}``), 0 when it has none yet."""
    import re

    import requests

    text = requests.get(f"{url}/metrics", timeout=10).text
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def pause_decodes(url: str, outcome: str) -> float:
    """Return the server's count of texts decoded at a pause and then ``used`` or ``dropped`` unseen."""
    return metric(url, f'voicegate_pause_decodes_total{{outcome="{outcome}"}}')
