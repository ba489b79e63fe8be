"""Several instances on one database: two real gunicorn servers (scripts/serve.sh) on one PostgreSQL,
behind the real nginx (deploy/nginx.sh, round-robin, WebSocket upgrade), on loopback only.

Every limit holds across both: voice-login lockouts, admin sign-in limits, one use of an invite,
the dictation slots; a setting changed on one is in force on the other, and ``kill -9`` of one
leaves the other serving with everything committed kept.

Requests to an instance directly come from 127.0.0.1, which the instances trust as a proxy, so
``X-Forwarded-For`` picks the client address a test speaks for; through nginx it is 127.0.0.1.
The tests run in file order and share the servers: the last one kills instance A.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import websocket
from sqlalchemy import func, select

from app.store.db import db
from app.store.models import AdminAccount, AuditEvent, StreamLease, User, Voiceprint
from clients import voicegate as client

from .conftest import LJ_ENROLL, MODELS_DIR, PCM16K, ROOT, LiveServer, make_app
from .test_load import _free_port, _wait_until

PASSWORD = "correct horse battery"
LEASE_SECONDS = 3  # how soon a killed instance's dictation slots free themselves
SAS_ENROLL = [f"wav/librivox-sas01/sense_and_sensibility_01_austen_64kb-0{n}.wav" for n in (870, 880, 890, 920)]
LJ_TEST = "wav/ljspeech/LJ001-0004.wav"
STRANGER = "wav/librivox-sas01/sense_and_sensibility_01_austen_64kb-0930.wav"


@dataclass
class Cluster:
    """Two instances (a, b) of the app, nginx in front of both, and an in-process app on their database."""

    app: object
    a: str
    b: str
    proxied: str
    servers: dict[str, subprocess.Popen]
    logs: Path
    held: list = field(default_factory=list)  # open dictation sockets, closed at the end

    def ws(self, base: str) -> str:
        """Return the voice WebSocket's URL at ``base``."""
        return base.replace("http://", "ws://") + "/ws/voice"

    def invite(self, name: str) -> str:
        """Create ``name`` and return a fresh invite token (through the CLI, on the shared database)."""
        return LiveServer(self.app, self.a).invite(name)

    def count(self, query) -> int:
        """Return a count from the shared database."""
        with self.app.app_context():
            value = db.session.scalar(query)
            db.session.remove()
            return value


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, postgres_server):
    """Start instances a and b of scripts/serve.sh on one PostgreSQL database, and deploy/nginx.sh before both."""
    if shutil.which("nginx") is None:
        pytest.fail("nginx is not installed (scripts/test.sh installs Debian's package)")
    folder = tmp_path_factory.mktemp("instances")
    url = postgres_server.create_database()
    # Migrates the database; the instances are processes of their own, sharing its keystore.
    app = make_app(folder, DATABASE_URL=url, KEYSTORE_PATH=str(folder / "keystore.db"))
    with app.app_context():
        admin = AdminAccount(username="root")
        admin.set_password(PASSWORD)
        db.session.add(admin)
        db.session.commit()
        db.session.remove()
    ports = {"a": _free_port(), "b": _free_port()}
    nginx_port = _free_port()
    env = {**os.environ, "VOICEGATE_DATABASE_URL": url, "VOICEGATE_SECRET_KEY": app.config["SECRET_KEY"],
           "VOICEGATE_KEYSTORE_PATH": str(folder / "keystore.db"),  # the voiceprint keys, shared on one host
           "VOICEGATE_MODELS_DIR": str(MODELS_DIR), "VOICEGATE_INFERENCE_WORKERS": "1", "VOICEGATE_THREADS": "32",
           "VOICEGATE_TRUSTED_PROXIES": '["127.0.0.1"]',
           # Each instance admits 2 by configuration (not by its measured load, which a busy test machine
           # would lower), so that the shared total is what limits them.
           "VOICEGATE_MAX_STREAMS": "2",
           "VOICEGATE_MAX_STREAMS_TOTAL": "2", "VOICEGATE_STREAM_LEASE_SECONDS": str(LEASE_SECONDS),
           # Failures counted at once (no waits between them), and few of them, to keep the test short.
           "VOICEGATE_POLICY_LOCKOUT_DELAY": "0", "VOICEGATE_ADMIN_SIGNIN_DELAY": "0",
           "VOICEGATE_ADMIN_ADDRESS_ATTEMPTS": "4",
           "VOICEGATE_POLICY_CHALLENGE": "off", "VOICEGATE_POLICY_REPLAY_SECONDS": "0",
           # The dictations holding slots send no audio, some of them across tests; the idle limit
           # (15 s, tested in test_ws_bad_input.py) would end them and free their slots.
           "VOICEGATE_POLICY_IDLE_SECONDS": "600",
           "VOICEGATE_UPSTREAMS": f"127.0.0.1:{ports['a']} 127.0.0.1:{ports['b']}",
           "VOICEGATE_NGINX_LISTEN": f"127.0.0.1:{nginx_port}"}
    logs = folder / "logs"
    logs.mkdir()
    servers = {}
    try:
        for name, port in ports.items():
            with open(logs / f"{name}.log", "wb") as out:
                servers[name] = subprocess.Popen(
                    [str(ROOT / "scripts" / "serve.sh")], stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                    env={**env, "VOICEGATE_PORT": str(port), "VOICEGATE_INSTANCE_PATH": str(folder / name)})
        with open(logs / "nginx.log", "wb") as out:
            servers["nginx"] = subprocess.Popen([str(ROOT / "deploy" / "nginx.sh"), str(folder / "nginx")], env=env,
                                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        cluster = Cluster(app, f"http://127.0.0.1:{ports['a']}", f"http://127.0.0.1:{ports['b']}",
                          f"http://127.0.0.1:{nginx_port}", servers, logs)
        for base in (cluster.a, cluster.b):
            _wait_until(lambda: requests.get(base + "/healthz", timeout=2).json()["models"]["whisper"]["loaded"],
                        180, f"loading the models under gunicorn at {base}")
        _wait_until(lambda: requests.get(cluster.proxied + "/healthz", timeout=2).ok, 20, "nginx answering")
        yield cluster
    finally:
        for process in servers.values():
            if process.poll() is None:
                # Nothing is in flight; a graceful tear-down of the models would take seconds.
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        postgres_server.drop_database(url)


def _verify(base: str, wav: bytes, user: str | None, address: str) -> dict:
    """Verify ``wav`` against ``user`` (None: identify) at ``base``, as a client at ``address``."""
    reply = requests.post(base + "/api/v1/verify", params={"user": user} if user else {}, data=wav, timeout=60,
                          headers={"Content-Type": "audio/wav", "X-Forwarded-For": address})
    assert reply.status_code == 200, reply.text
    return reply.json()


def _dictation(base_ws: str, user: str) -> tuple[object, dict]:
    """Open a live dictation for ``user``; return the socket and the server's first answer (ready or error)."""
    ws = websocket.create_connection(base_ws, timeout=30)
    ws.send(json.dumps({"type": "start", "mode": "dictate", "user": user, "format": PCM16K}))
    while True:
        answer = json.loads(ws.recv())
        if answer["type"] in ("ready", "error"):
            return ws, answer


def _sign_in(base: str, address: str, password: str) -> requests.Response:
    session = requests.Session()
    session.headers["X-Forwarded-For"] = address
    page = session.get(base + "/admin/login", timeout=10).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    return session.post(base + "/admin/login", allow_redirects=False, timeout=10,
                        data={"username": "root", "password": password, "csrf_token": token})


def test_enrolled_through_one_instance_verified_and_identified_through_the_other(cluster, speech):
    wav = speech.path(LJ_TEST).read_bytes()
    # b holds its matrix of enrolled voices (none yet) before a enrolls anyone.
    assert _verify(cluster.b, wav, None, "10.0.1.1")["state"] == "reject"
    enrolled = client.run("enroll", [speech.path(f) for f in LJ_ENROLL], cluster.ws(cluster.a),
                          invite=cluster.invite("lj"), echo=lambda _: None)
    assert enrolled["state"] == "enrolled", enrolled
    identified = _verify(cluster.b, wav, None, "10.0.1.2")
    assert (identified["state"], identified["user"]) == ("accept", "lj"), identified
    assert _verify(cluster.b, wav, "lj", "10.0.1.3")["state"] == "accept"
    for _ in range(2):  # nginx takes the instances in turn
        assert _verify(cluster.proxied, wav, "lj", "10.0.1.4")["state"] == "accept"


def test_voice_login_failures_are_counted_across_instances(cluster, speech):
    wrong, right = speech.path(STRANGER).read_bytes(), speech.path(LJ_TEST).read_bytes()
    for attempt in range(5):  # the policy's lockout_attempts, half on each instance
        result = _verify(cluster.a if attempt % 2 else cluster.b, wrong, "lj", "10.0.2.1")
        assert result["state"] == "reject", (attempt, result)
    for base in (cluster.a, cluster.b):
        result = _verify(base, right, "lj", "10.0.2.1")
        assert result["state"] == "locked" and result["retry_after"] > 0, result
    # Only that client is refused: the owner elsewhere signs in on either instance.
    assert _verify(cluster.a, right, "lj", "10.0.2.2")["state"] == "accept"
    # Sent all at once to both, no more attempts are decided than the limit: each is counted
    # before it is decided, one check at a time across instances.
    states = []
    burst = [threading.Thread(target=lambda base=base: states.append(_verify(base, wrong, "lj", "10.0.2.3")["state"]))
             for base in [cluster.a, cluster.b] * 4]
    for thread in burst:
        thread.start()
    for thread in burst:
        thread.join(timeout=120)
    assert sorted(states) == ["locked"] * 3 + ["reject"] * 5, states


def test_admin_sign_in_limits_hold_across_instances(cluster):
    for attempt in range(4):  # ADMIN_ADDRESS_ATTEMPTS, half on each instance
        assert _sign_in(cluster.a if attempt % 2 else cluster.b, "10.0.3.1", "wrong password").status_code == 401
    for base in (cluster.a, cluster.b):
        refused = _sign_in(base, "10.0.3.1", PASSWORD)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert _sign_in(cluster.proxied, "10.0.3.2", PASSWORD).status_code == 302  # another address is not refused
    statuses = []
    burst = [threading.Thread(target=lambda base=base: statuses.append(_sign_in(base, "10.0.3.3", "guess").status_code))
             for base in [cluster.a, cluster.b] * 3]
    for thread in burst:
        thread.start()
    for thread in burst:
        thread.join(timeout=60)
    assert sorted(statuses) == [401] * 4 + [429] * 2, statuses  # guesses sent at once: no more than the limit


def test_an_invite_raced_by_both_instances_enrolls_once(cluster, speech):
    invite = cluster.invite("racer")
    files = [speech.path(f) for f in SAS_ENROLL]
    results = {}
    go = threading.Barrier(2)

    def enroll(base: str):
        go.wait()
        try:
            results[base] = client.run("enroll", files, cluster.ws(base), invite=invite, echo=lambda _: None)
        except Exception as error:  # a refusal may close the socket: that is an answer too
            results[base] = {"type": "error", "error": repr(error)}

    threads = [threading.Thread(target=enroll, args=(base,)) for base in (cluster.a, cluster.b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    states = sorted(str(r.get("state") or r.get("code") or r.get("error")) for r in results.values())
    assert len(states) == 2 and states.count("enrolled") == 1, results
    racer = select(User.id).where(User.name == "racer").scalar_subquery()
    assert cluster.count(select(func.count()).select_from(Voiceprint).where(Voiceprint.user_id == racer)) == 1
    assert cluster.count(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.claimed_user == "racer", AuditEvent.kind == "enroll", AuditEvent.decision == "enrolled")) == 1


def test_dictation_slots_are_counted_across_instances(cluster):
    # MAX_STREAMS_TOTAL is 2 for both together (each would admit 2 alone).
    for base in (cluster.a, cluster.b):
        ws, answer = _dictation(cluster.ws(base), "lj")
        cluster.held.append(ws)
        assert answer["type"] == "ready", answer
    for base in (cluster.a, cluster.b, cluster.proxied):
        ws, answer = _dictation(cluster.ws(base), "lj")
        ws.close()
        assert answer["type"] == "error" and answer["code"] == "busy", answer
    cluster.held.pop(0).close()  # a's slot comes back, for anyone
    _wait_until(lambda: cluster.count(select(func.count()).select_from(StreamLease)) == 1, 10, "a's lease dropped")
    ws, answer = _dictation(cluster.ws(cluster.b), "lj")
    ws.close()
    assert answer["type"] == "ready", answer


def test_a_setting_changed_on_one_instance_is_in_force_on_the_other(cluster, speech):
    session = requests.Session()
    signed_in = session.post(cluster.a + "/admin/login", allow_redirects=False, timeout=10, data={
        "username": "root", "password": PASSWORD,
        "csrf_token": re.search(r'name="csrf_token" value="([^"]+)"', session.get(cluster.a + "/admin/login").text)[1]})
    assert signed_in.status_code == 302
    token = re.search(r'name="csrf_token" value="([^"]+)"', session.get(cluster.a + "/admin/settings").text)[1]
    saved = session.post(cluster.a + "/admin/settings", allow_redirects=False, timeout=10,
                         data={"csrf_token": token, "min_verify_speech": "10", "whisper_model": "base"})
    assert saved.status_code == 302
    wav = speech.path(LJ_TEST).read_bytes()  # under 10 s of speech
    assert _verify(cluster.b, wav, "lj", "10.0.4.1")["state"] == "not_enough_speech"

    def switched():
        status = session.get(cluster.b + "/admin/api/whisper", timeout=10).json()
        assert status["state"] != "failed", status
        return status["active"] == "base"

    _wait_until(switched, 90, "instance b switching to Whisper base")
    session.post(cluster.b + "/admin/settings", allow_redirects=False, timeout=10,
                 data={"csrf_token": token, "min_verify_speech": "0.8"})
    assert _verify(cluster.a, wav, "lj", "10.0.4.1")["state"] == "accept"


def test_kill_9_of_one_instance_leaves_the_other_serving_and_loses_nothing(cluster, speech):
    enrolled = client.run("enroll", [speech.path(f) for f in LJ_ENROLL], cluster.ws(cluster.a),
                          invite=cluster.invite("late"), echo=lambda _: None)
    assert enrolled["state"] == "enrolled"
    while cluster.held:
        cluster.held.pop().close()
    _wait_until(lambda: cluster.count(select(func.count()).select_from(StreamLease)) == 0, 10, "the leases dropped")
    held, answer = _dictation(cluster.ws(cluster.b), "lj")  # b holds a slot, a the other: all taken
    cluster.held.append(held)
    assert answer["type"] == "ready", answer
    ws, answer = _dictation(cluster.ws(cluster.a), "lj")
    assert answer["type"] == "ready", answer
    audited = cluster.count(select(func.count()).select_from(AuditEvent))

    os.killpg(cluster.servers["a"].pid, signal.SIGKILL)
    cluster.servers["a"].wait(timeout=10)
    ws.close()

    wav = speech.path(LJ_TEST).read_bytes()
    for _ in range(3):  # nginx finds a gone and sends everything to b
        assert requests.get(cluster.proxied + "/healthz", timeout=10).ok
        assert _verify(cluster.proxied, wav, "late", "10.0.5.1")["state"] == "accept"
    assert cluster.count(select(func.count()).select_from(AuditEvent)) >= audited + 3
    assert cluster.count(select(func.count()).select_from(Voiceprint)) == 3  # lj, racer, late

    # a's lease runs out, so its slot is free again; b's is still counted.
    def admitted():
        ws, answer = _dictation(cluster.ws(cluster.proxied), "lj")
        cluster.held.append(ws)
        return answer["type"] == "ready"

    _wait_until(admitted, LEASE_SECONDS * 4, "a's dictation slot expiring")
    ws, answer = _dictation(cluster.ws(cluster.proxied), "lj")
    ws.close()
    assert answer["code"] == "busy", answer
    for ws in cluster.held:
        ws.close()
