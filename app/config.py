"""Configuration: one set of defaults, overridden by ``VOICEGATE_*`` environment variables.

``create_app`` applies, in order: ``Config`` below, then ``VOICEGATE_<NAME>`` from the
environment (values are parsed as JSON when they can be, so ``VOICEGATE_MAX_AUDIO_SECONDS=30``
is a number), then the mapping a caller (a test) hands in.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Config:
    """The defaults; every name can be set as ``VOICEGATE_<NAME>``."""

    # Any SQLAlchemy URL; None means an SQLite file in the instance folder.
    DATABASE_URL: str | None = None
    # None means: generated once and kept in the instance folder. It also wraps the voiceprint keys.
    SECRET_KEY: str | None = None
    # The voiceprint keys, outside the database and its backups (app/store/keystore.py says why);
    # None means keystore.db in the instance folder. Server processes on one host share it.
    KEYSTORE_PATH: str | None = None

    MODELS_DIR = str(ROOT / "pretrained_models")
    # "tiny.en" or "base" (verified local copies), a CTranslate2 directory, or a hub name.
    WHISPER_MODEL = "tiny.en"
    WHISPER_BEAM_SIZE = 5
    # Load the models when the app starts rather than on the first request.
    PRELOAD_MODELS = False

    # Inference: one worker per core, and a short queue before callers hear "busy".
    INFERENCE_WORKERS = os.cpu_count() or 1
    INFERENCE_QUEUE = 8
    # Live dictations at once; the next is told "busy" at its start instead of every
    # stream falling behind. None follows the measured load of the inference pool (one per
    # worker always, more while the workers are busy less than 70% of the time, 8 per worker at most).
    MAX_STREAMS: int | None = None
    # Several instances on one database: live dictations at once across all of them (each also
    # keeps its own MAX_STREAMS), counted as lease rows that a killed instance stops renewing,
    # so its slots free themselves after STREAM_LEASE_SECONDS. None: each instance counts alone.
    MAX_STREAMS_TOTAL: int | None = None
    STREAM_LEASE_SECONDS = 30.0
    # Threads inside one model call (see runtime.load_engines for why one).
    INFERENCE_THREADS = 1
    # ECAPA's arithmetic: "auto" is bfloat16 on CPUs that compute it natively, else float32.
    SPEAKER_PRECISION = "auto"
    # Who runs ECAPA: "auto" is ONNX Runtime on the export `flask models fetch` makes (same
    # scores, faster: docs/benchmarks.md, "Runtimes"), else PyTorch; "onnx" or "torch" to force.
    SPEAKER_RUNTIME = "auto"
    # The speaker models whose voices are enrolled and compared: "ecapa+campplus" (both, fused:
    # app/engines/fused.py) or "ecapa" (ECAPA alone, as before). Voiceprints enrolled either
    # way keep working under both: a pair is compared in the space both have.
    SPEAKER_MODELS = "ecapa+campplus"

    # Limits on one piece of incoming audio.
    MAX_AUDIO_BYTES = 32 * 1024 * 1024
    MAX_AUDIO_SECONDS = 120.0

    # Uploads beyond this are refused before they are read.
    MAX_CONTENT_LENGTH = 40 * 1024 * 1024
    # The WebSocket transport's own cap; sessions refuse frames over POLICY_MAX_FRAME_BYTES
    # with a clear error well before this, and ping keeps idle proxies from cutting sessions.
    SOCK_SERVER_OPTIONS = {"max_message_size": 4 * 1024 * 1024, "ping_interval": 25}
    # What one client may hold (app/serving/worker.py, docs/deployment.md): connections at once
    # per address (a trusted proxy's own address, such as nginx's, is not counted; requests from
    # it take the client's address from X-Forwarded-For, app/serving/proxies.py), and time
    # limits on a request's headers, on its whole body, and on any one read of either.
    CONNECTIONS_PER_ADDRESS = 32
    TRUSTED_PROXIES: list[str] = []
    HEADER_SECONDS = 10.0
    BODY_SECONDS = 60.0
    READ_IDLE_SECONDS = 10.0
    # The Wyoming speech-to-text server for Home Assistant (docs/home-assistant.md): off unless a
    # port is set (10300 is Wyoming's usual one). It runs inside the server process beside the
    # HTTP side, on the same models and dictation slots. 0.0.0.0 to reach it from another machine.
    WYOMING_PORT: int | None = None
    WYOMING_HOST = "127.0.0.1"
    # Enrollment invites expire after this many hours.
    INVITE_HOURS = 72
    # Decision rules (thresholds, speech minimums, lockout, limits) are app.gate.policy.Policy's
    # fields, set as POLICY_<FIELD>, e.g. VOICEGATE_POLICY_THRESHOLD=0.45.

    SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}

    # Session cookies (user and admin sign-in): never readable by scripts, not sent on
    # cross-site requests; set VOICEGATE_SESSION_COOKIE_SECURE=true behind HTTPS.
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    SESSION_COOKIE_SECURE = False
    PERMANENT_SESSION_LIFETIME = 12 * 3600
    # CSRF tokens (Flask-WTF) on every form post; the JSON API authenticates otherwise.
    WTF_CSRF_TIME_LIMIT = None

    # Admin sign-in throttling, per client address only (never an account-wide lock), counted in
    # the database (so across instances): after each wrong password that address waits
    # ADMIN_SIGNIN_DELAY s, doubling, and this many failures within the window refuse it until
    # they age out.
    ADMIN_SIGNIN_DELAY = 1.0
    ADMIN_ADDRESS_ATTEMPTS = 10
    ADMIN_ADDRESS_WINDOW_SECONDS = 900

    # GET /metrics (Prometheus): served to loopback clients only, unless a token is set; then to
    # anyone sending "Authorization: Bearer <token>", and to no one without it.
    METRICS_TOKEN: str | None = None
    # "text" (the default) or "json": one JSON object per log line, for log shippers.
    LOG_FORMAT = "text"


def database_url(configured: str | None, instance_path: str) -> str:
    """Return the configured database URL, or the default SQLite file in ``instance_path``."""
    if configured:
        return configured
    return "sqlite:///" + str(Path(instance_path) / "voicegate.db")


def secret_key(configured: str | None, instance_path: str) -> str:
    """Return the configured secret key, or one generated once and kept in ``instance_path``."""
    if configured:
        return configured
    path = Path(instance_path) / "secret_key"
    if path.exists():
        return path.read_text().strip()
    key = secrets.token_hex(32)
    # Created with owner-only permissions, and never overwritten by a concurrent start.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key
