"""The service under test: a real gunicorn server started on a free port of 127.0.0.1, or one given by URL.

A started server runs scripts/serve.sh with a fresh SQLite database and instance folder in a
temporary directory (removed afterwards) and the policy the suite asks for. Users and
invites are made with the app's own ``flask users`` commands, run in this process against
the server's database.
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from .paths import ROOT

logger = logging.getLogger(__name__)

# Trial lists enroll on one to three short clips, fewer than the default policy asks for, and
# impostor trials would lock users out: these minimums let every list stand as a user. The
# trials verify dev sentences (no spoken challenge) and the latency checks send the same
# utterance again and again (which the replay memory would refuse); bench/challenge.py
# measures those two apart.
RELAXED_POLICY = {
    "VOICEGATE_POLICY_ENROLL_MIN_CLIPS": "1",
    "VOICEGATE_POLICY_ENROLL_MIN_CLIP_SPEECH": "0.8",
    "VOICEGATE_POLICY_ENROLL_MIN_TOTAL_SPEECH": "0.8",
    "VOICEGATE_POLICY_LOCKOUT_ATTEMPTS": "100000",
    "VOICEGATE_POLICY_LOCKOUT_CLIENT_ATTEMPTS": "100000",
    "VOICEGATE_POLICY_LOCKOUT_DELAY": "0",
    "VOICEGATE_POLICY_CHALLENGE": "off",
    "VOICEGATE_POLICY_REPLAY_SECONDS": "0",
}
READY_TIMEOUT = 300.0


class ServiceError(RuntimeError):
    """The service could not be started or reached."""


@dataclass(frozen=True)
class AdminSignIn:
    """A signed-in admin's session cookie and the Origin of the server's own pages, for HTTP and WebSocket calls."""

    cookie: str
    origin: str

    @property
    def headers(self) -> dict[str, str]:
        """Return the HTTP headers that make a request the admin's."""
        return {"Cookie": self.cookie, "Origin": self.origin}


class Service:
    """A running VoiceGate reachable over HTTP and WebSocket, plus a way to invite users to it."""

    def __init__(self, url: str, database_url: str, instance_path: str, pid: int | None = None,
                 policy: dict[str, str] | None = None, scratch: Path | None = None):
        self.url = url.rstrip("/")
        self.pid = pid
        self.policy = policy
        self.scratch = scratch
        self._admin = _admin_app(database_url, instance_path)

    @property
    def ws_url(self) -> str:
        """Return the voice WebSocket's URL."""
        return self.url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/ws/voice"

    def health(self) -> dict:
        """Return the server's /healthz answer."""
        response = requests.get(f"{self.url}/healthz", timeout=10)
        return response.json()

    def invite(self, name: str) -> str:
        """Create user ``name`` and return a fresh enrollment invite token (``flask users create/invite``)."""
        runner = self._admin.test_cli_runner()
        created = runner.invoke(args=["users", "create", name])
        if created.exit_code != 0:
            raise ServiceError(f"flask users create {name} failed: {created.output.strip()}")
        invited = runner.invoke(args=["users", "invite", name])
        if invited.exit_code != 0:
            raise ServiceError(f"flask users invite {name} failed: {invited.output.strip()}")
        return invited.output.strip().splitlines()[-1]

    def sign_in_admin(self, username: str = "bench-admin") -> AdminSignIn:
        """Create an admin account (``flask admin create``, a fresh random password) and sign in as it over HTTP.

        An admin is shown the score of every decision, rejects included (callers who are not
        admins see none on a reject): the benchmark needs them for EER and DET curves.
        """
        password = secrets.token_urlsafe(18)
        runner = self._admin.test_cli_runner()
        created = runner.invoke(args=["admin", "create", username, "--password", password])
        if created.exit_code != 0 and "already exists" not in created.output:
            raise ServiceError(f"flask admin create {username} failed: {created.output.strip()}")
        if created.exit_code != 0:
            username = f"{username}-{secrets.token_hex(3)}"
            created = runner.invoke(args=["admin", "create", username, "--password", password])
            if created.exit_code != 0:
                raise ServiceError(f"flask admin create {username} failed: {created.output.strip()}")
        with requests.Session() as http:
            page = http.get(f"{self.url}/admin/login", timeout=30)
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
            if page.status_code != 200 or token is None:
                raise ServiceError(f"GET /admin/login answered {page.status_code} without a sign-in form")
            signed = http.post(f"{self.url}/admin/login", timeout=30, allow_redirects=False, headers={"Origin": self.url},
                               data={"username": username, "password": password, "csrf_token": token.group(1)})
            if signed.status_code != 302:
                raise ServiceError(f"the admin sign-in answered {signed.status_code}")
            cookie = "; ".join(f"{name}={value}" for name, value in http.cookies.items())
        logger.info("signed in as admin %s", username)
        return AdminSignIn(cookie, self.url)

    def delete(self, name: str) -> None:
        """Delete user ``name`` and their voiceprint (``flask users delete``)."""
        deleted = self._admin.test_cli_runner().invoke(args=["users", "delete", name, "--yes"])
        if deleted.exit_code != 0:
            raise ServiceError(f"flask users delete {name} failed: {deleted.output.strip()}")

    def set_setting(self, name: str, value) -> None:
        """Store one admin setting in the server's database (sessions read settings as they start)."""
        from app.store.db import db
        from app.store.models import Setting

        with self._admin.app_context():
            Setting.put(name, value, "bench")
            db.session.commit()

    def memory(self) -> dict | None:
        """Return the server's resident memory in MB (the worker that holds the models), if it is ours."""
        if self.pid is None:
            return None
        workers = _children(self.pid)
        status = {pid: _status(pid) for pid in [self.pid, *workers]}
        worker = status[workers[0]] if workers else status[self.pid]
        return {
            "rss_mb": worker.get("VmRSS"),
            "peak_rss_mb": worker.get("VmHWM"),
            "master_rss_mb": status[self.pid].get("VmRSS") if workers else None,
            "total_rss_mb": round(sum(s.get("VmRSS") or 0 for s in status.values()), 1),
        }

    def wait_ready(self) -> None:
        """Return at once: a server given by URL is up already."""

    def close(self) -> None:
        """Remove the suite's scratch folder (a started server also stops the server)."""
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


class StartedServer(Service):
    """scripts/serve.sh on a free port with a fresh database; ``wait_ready`` before use, ``close`` to stop."""

    def __init__(self, env: dict[str, str] | None = None, log_path: Path | None = None):
        self.scratch = Path(tempfile.mkdtemp(prefix="voicegate-bench-"))
        self.port = _free_port()
        self.database_url = f"sqlite:///{self.scratch / 'voicegate.db'}"
        self.instance = self.scratch / "instance"
        self.env = {
            **os.environ,
            "FLASK_APP": "app",
            "VOICEGATE_HOST": "127.0.0.1",
            "VOICEGATE_PORT": str(self.port),
            "VOICEGATE_DATABASE_URL": self.database_url,
            "VOICEGATE_INSTANCE_PATH": str(self.instance),
            **RELAXED_POLICY,
            **(env or {}),
        }
        self.log_path = log_path or self.scratch / "server.log"
        self._process: subprocess.Popen | None = None
        self._log = None
        try:
            migrated = subprocess.run([sys.executable, "-m", "flask", "db", "upgrade"], cwd=ROOT, env=self.env,
                                      capture_output=True, text=True, timeout=300)
            if migrated.returncode != 0:
                raise ServiceError(f"flask db upgrade failed:\n{migrated.stderr[-2000:]}")
            self._log = open(self.log_path, "w")
            # The server loads its models in the background; the caller may work meanwhile.
            self._process = subprocess.Popen([str(ROOT / "scripts" / "serve.sh")], cwd=ROOT, env=self.env,
                                             stdout=self._log, stderr=subprocess.STDOUT)
        except BaseException:
            self.close()
            raise

    def wait_ready(self) -> None:
        """Wait until the server answers /healthz with its models loaded."""
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServiceError(f"the server exited with {self._process.returncode}:\n{self.log_tail()}")
            try:
                response = requests.get(f"{url}/healthz", timeout=5)
                body = response.json()
            except (requests.ConnectionError, requests.Timeout, ValueError):
                body = None  # not listening yet
            if body is not None:
                if body.get("models", {}).get("error"):
                    raise ServiceError(f"the server failed to load its models: {body['models']['error']}")
                if response.status_code == 200 and body["models"]["speaker"]["loaded"]:
                    super().__init__(url, self.database_url, str(self.instance), self._process.pid,
                                     {k: v for k, v in self.env.items() if k.startswith("VOICEGATE_POLICY_")},
                                     scratch=self.scratch)
                    return
            time.sleep(0.5)
        raise ServiceError(f"the server was not ready within {READY_TIMEOUT:g} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        """Return the end of the server's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        """Stop the server (gracefully, then by force) and remove its database and instance folder."""
        process = self._process
        if process is not None and process.poll() is None:
            workers = _children(process.pid)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                logger.warning("the server did not stop within 20 s; killing pid %d and its workers", process.pid)
                for pid in [process.pid, *workers]:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                process.wait(timeout=10)
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.scratch, ignore_errors=True)


def connect(url: str, database_url: str | None) -> Service:
    """Return the service already running at ``url``, inviting users through ``database_url``."""
    if not database_url:
        raise ServiceError("with --url, give --database-url (or VOICEGATE_DATABASE_URL): the server's database, "
                           "where the suite creates its users and invites")
    scratch = Path(tempfile.mkdtemp(prefix="voicegate-bench-admin-"))
    service = Service(url, database_url, str(scratch), scratch=scratch)
    try:
        service.health()
    except (requests.ConnectionError, requests.Timeout, ValueError) as error:
        service.close()
        raise ServiceError(f"no VoiceGate answers at {url}: {error}") from None
    return service


def _admin_app(database_url: str, instance_path: str):
    """Return an app on the server's database, for its ``flask users`` commands (never loads models)."""
    from app import create_app

    return create_app({"DATABASE_URL": database_url, "INSTANCE_PATH": instance_path, "PRELOAD_MODELS": False})


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _status(pid: int) -> dict[str, float]:
    """Return VmRSS and VmHWM of a process, in MB."""
    values = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = round(int(rest.split()[0]) / 1024, 1)
    except OSError:
        pass
    return values
