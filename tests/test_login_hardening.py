"""Voice login under attack, against a real server with dev speech: fail closed, accounts not names,
per-client limits that never lock the owner out, no enumeration."""
from __future__ import annotations

import json
import re
import sqlite3

import pytest
from simple_websocket import ConnectionClosed
import requests
from simple_websocket import Client

from clients import voicegate as client
from app.store.db import db
from app.store.models import AuthSession, User
from app.protocols import dictation_keys

from .conftest import LJ_ENROLL, PCM16K, make_app, pcm, serve, serve_enrolled

QUIET = {"echo": lambda _line: None}
GENUINE = "wav/ljspeech/LJ001-0004.wav"
IMPOSTOR = "wav/vctk-p287/p287_003.wav"
# The test server trusts one proxy, so that X-Forwarded-For stands for the client address.
LIMITS = {"TRUSTED_PROXIES": ["127.0.0.1"], "POLICY_LOCKOUT_DELAY": 0, "POLICY_LOCKOUT_ATTEMPTS": 5,
          "POLICY_CHALLENGE": "off"}


@pytest.fixture(scope="module")
def gate(tmp_path_factory, engines, speech):
    """A server where the LJ Speech reader is enrolled as 'lj'; its database file beside it."""
    folder = tmp_path_factory.mktemp("hardening")
    live, stop = serve_enrolled(folder, engines, speech, **LIMITS)
    yield live, folder / "voicegate.db"
    stop()


def verify(live, speech, file: str, user: str | None = None, address: str = "10.1.0.1", token: str | None = None):
    """POST a dev file to /api/v1/verify as client ``address``; return the response."""
    headers = {"X-Forwarded-For": address}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    with open(speech.path(file), "rb") as handle:
        return requests.post(f"{live.url}/api/v1/verify", files={"audio": handle}, headers=headers,
                             data={"user": user} if user else {}, timeout=60)


def csrf(session: requests.Session, url: str) -> str:
    """Return the CSRF token of the page at ``url`` (its meta tag), fetched with ``session``'s cookie."""
    return re.search(r'name="csrf-token" content="([^"]+)"', session.get(url, timeout=30).text).group(1)


# --------------------------------------------------------------------------- fail closed

def test_unreadable_settings_accept_nothing(gate, speech):
    live, database = gate
    connection = sqlite3.connect(database)
    connection.execute("ALTER TABLE settings RENAME TO settings_away")
    connection.commit()
    try:
        refused = verify(live, speech, GENUINE, "lj", address="10.2.0.1")
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "busy", refused.text
        over_ws = client.run("verify", [speech.path(GENUINE)], live.ws_url, user="lj", **QUIET)
        assert (over_ws["type"], over_ws["code"]) == ("error", "busy"), over_ws
    finally:
        connection.execute("ALTER TABLE settings_away RENAME TO settings")
        connection.commit()
    # A stored value no version would write refuses decisions too, rather than using the default.
    connection.execute("INSERT INTO settings (key, value, updated_at) VALUES ('threshold', '\"high\"', '2026-01-01')")
    connection.commit()
    try:
        assert verify(live, speech, GENUINE, "lj", address="10.2.0.1").status_code == 503
    finally:
        connection.execute("DELETE FROM settings WHERE key = 'threshold'")
        connection.commit()
    assert verify(live, speech, GENUINE, "lj", address="10.2.0.1").json()["state"] == "accept"


def test_idle_websockets_hold_no_database_connection(tmp_path, engines, speech):
    # A pool of two connections, and four sockets waiting for audio: decisions still get a connection.
    pool = {"pool_size": 2, "max_overflow": 0, "pool_timeout": 5, "pool_pre_ping": True}
    live, stop = serve_enrolled(tmp_path, engines, speech, SQLALCHEMY_ENGINE_OPTIONS=pool, **LIMITS)
    sockets = []
    try:
        for _ in range(4):
            ws = Client.connect(live.ws_url)
            ws.send(json.dumps({"type": "start", "mode": "verify", "user": "lj", "format": PCM16K}))
            assert json.loads(ws.receive(timeout=30))["type"] == "ready"
            sockets.append(ws)
        assert verify(live, speech, GENUINE, "lj").json()["state"] == "accept"
        ws = sockets[0]
        ws.send(pcm(speech.load(GENUINE)))
        ws.send(json.dumps({"type": "stop"}))
        assert json.loads(ws.receive(timeout=60))["state"] == "accept"
    finally:
        for ws in sockets:
            try:
                ws.close()
            except ConnectionClosed:
                pass  # the server already closed the finished session
        stop()


# --------------------------------------------------------------------------- accounts, not names

def test_a_deleted_accounts_token_cookie_and_key_open_nothing_not_even_its_namesake(tmp_path, engines, speech):
    live, stop = serve_enrolled(tmp_path, engines, speech, name="ann", **LIMITS)
    try:
        login = verify(live, speech, GENUINE, "ann")
        assert login.json()["state"] == "accept"
        token = login.json()["token"]
        browser = requests.Session()
        assert browser.post(f"{live.url}/session", json={"token": token}, timeout=30,
                            headers={"X-CSRFToken": csrf(browser, f"{live.url}/login")}).status_code == 200
        assert "Signed in as ann" in browser.get(f"{live.url}/me", timeout=30).text
        with live.app.app_context():
            old_key = dictation_keys.key_for(User.by_name("ann"), live.app.config["SECRET_KEY"])
        runner = live.app.test_cli_runner()
        assert runner.invoke(args=["users", "delete", "ann", "--yes"]).exit_code == 0
        # Ann again, a new account: the same name and (SQLite reuses it) the same row id.
        enrolled = client.run("enroll", [speech.path(f) for f in LJ_ENROLL], live.ws_url, invite=live.invite("ann"),
                              **QUIET)
        assert enrolled["state"] == "enrolled"
        with live.app.app_context():
            assert dictation_keys.user_for(old_key, live.app.config["SECRET_KEY"]) is None
        assert browser.get(f"{live.url}/me", timeout=30, allow_redirects=False).status_code == 302
        bearer = {"Authorization": f"Bearer {token}", "X-Forwarded-For": "10.3.0.1"}
        with open(speech.path(GENUINE), "rb") as handle:
            old = requests.post(f"{live.url}/api/v1/transcribe", headers=bearer, files={"audio": handle}, timeout=60)
        assert old.status_code == 401 and old.json()["error"]["code"] == "bad_token"
        again = requests.Session()
        assert again.post(f"{live.url}/session", json={"token": token}, timeout=30,
                          headers={"X-CSRFToken": csrf(again, f"{live.url}/login")}).status_code == 401
        over_ws = client.run("verify", [speech.path(GENUINE)], live.ws_url, token=token, **QUIET)
        assert (over_ws["type"], over_ws["code"]) == ("error", "bad_token")
    finally:
        stop()


def test_signing_out_ends_the_session_on_the_server(gate, speech):
    live, _ = gate
    token = verify(live, speech, GENUINE, "lj", address="10.4.0.1").json()["token"]
    browser = requests.Session()
    assert browser.post(f"{live.url}/session", json={"token": token}, timeout=30,
                        headers={"X-CSRFToken": csrf(browser, f"{live.url}/login")}).status_code == 200
    cookie = browser.cookies.get("session")
    assert browser.post(f"{live.url}/logout", data={"csrf_token": csrf(browser, f"{live.url}/me")},
                        timeout=30).status_code == 200
    replayed = requests.get(f"{live.url}/me", cookies={"session": cookie}, timeout=30, allow_redirects=False)
    assert replayed.status_code == 302  # the copied cookie names a session that no longer exists


def test_admin_sign_out_and_password_change_end_sessions(gate):
    live, _ = gate
    live.app.test_cli_runner().invoke(args=["admin", "create", "root", "--password", "correct horse"])

    def signed_in() -> requests.Session:
        browser = requests.Session()
        browser.headers["X-Forwarded-For"] = "10.5.0.1"
        response = browser.post(f"{live.url}/admin/login", timeout=30, allow_redirects=False, data={
            "username": "root", "password": "correct horse", "csrf_token": csrf(browser, f"{live.url}/admin/login")})
        assert response.status_code == 302, response.text
        return browser

    def works(cookie: str) -> bool:
        return requests.get(f"{live.url}/admin/", cookies={"session": cookie}, timeout=30,
                            allow_redirects=False).status_code == 200

    first = signed_in()
    cookie = first.cookies.get("session")
    first.post(f"{live.url}/admin/logout", data={"csrf_token": csrf(first, f"{live.url}/admin/")}, timeout=30)
    assert not works(cookie)

    laptop, phone = signed_in(), signed_in()
    changed = laptop.post(f"{live.url}/admin/password", timeout=30, data={
        "current": "correct horse", "new": "battery staple", "confirm": "battery staple",
        "csrf_token": csrf(laptop, f"{live.url}/admin/password")})
    assert changed.status_code == 200 and "other sessions are signed out" in changed.text
    assert works(laptop.cookies.get("session")) and not works(phone.cookies.get("session"))
    with live.app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(AuthSession)) == 1


# --------------------------------------------------------------------------- limits per client

def test_failures_from_one_client_limit_that_client_only(gate, speech):
    live, _ = gate
    attacker, owner = "10.6.0.66", "10.6.0.7"
    states = [verify(live, speech, IMPOSTOR, "lj", attacker).json()["state"] for _ in range(5)]
    assert states == ["reject"] * 5
    # The owner's own voice, from the attacker's address: refused, with how long to wait.
    limited = verify(live, speech, GENUINE, "lj", attacker)
    assert limited.json()["state"] == "locked" and "token" not in limited.json()
    assert 0 < limited.json()["retry_after"] <= 300 and int(limited.headers["Retry-After"]) == limited.json()["retry_after"]
    # 1:N from that client is refused too, without a decision.
    anyone = verify(live, speech, GENUINE, None, attacker).json()
    assert anyone["state"] == "locked" and "token" not in anyone and anyone["retry_after"] > 0
    over_ws = client.run("verify", [speech.path(GENUINE)], live.ws_url, **QUIET)  # 127.0.0.1: not limited
    assert over_ws["state"] == "accept"
    # The owner, from their own address, is not stopped.
    assert verify(live, speech, GENUINE, "lj", owner).json()["state"] == "accept"


def test_a_client_failing_across_many_names_is_limited_everywhere(gate, speech, monkeypatch):
    live, _ = gate
    # The policy is read from the config for every request: tighter limits for this test only.
    monkeypatch.setitem(live.app.config, "POLICY_LOCKOUT_CLIENT_ATTEMPTS", 4)
    scanner = "10.7.0.9"
    for name in ("amy", "bob", "cy", "di"):  # names that do not exist count as much as wrong voices
        assert verify(live, speech, IMPOSTOR, name, scanner).json()["state"] == "reject"
    assert verify(live, speech, GENUINE, "lj", scanner).json()["state"] == "locked"
    assert verify(live, speech, GENUINE, "lj", "10.7.0.10").json()["state"] == "accept"


def test_growing_delay_between_failures_of_one_client(gate, speech, monkeypatch):
    live, _ = gate
    monkeypatch.setitem(live.app.config, "POLICY_LOCKOUT_DELAY", 30)
    assert verify(live, speech, IMPOSTOR, "lj", "10.8.0.1").json()["state"] == "reject"
    slowed = verify(live, speech, GENUINE, "lj", "10.8.0.1").json()
    assert slowed["state"] == "locked" and 25 <= slowed["retry_after"] <= 30
    assert verify(live, speech, GENUINE, "lj", "10.8.0.2").json()["state"] == "accept"


def test_five_wrong_admin_passwords_from_one_client_do_not_stop_another(tmp_path):
    app = make_app(tmp_path, TRUSTED_PROXIES=["127.0.0.1"], ADMIN_SIGNIN_DELAY=0, ADMIN_ADDRESS_ATTEMPTS=5)
    app.test_cli_runner().invoke(args=["admin", "create", "root", "--password", "correct horse"])
    live, stop = serve(app)
    try:
        def attempt(address: str, password: str) -> requests.Response:
            browser = requests.Session()
            browser.headers["X-Forwarded-For"] = address
            return browser.post(f"{live.url}/admin/login", timeout=30, allow_redirects=False, data={
                "username": "root", "password": password, "csrf_token": csrf(browser, f"{live.url}/admin/login")})

        assert [attempt("10.9.0.66", "guess").status_code for _ in range(5)] == [401] * 5
        refused = attempt("10.9.0.66", "correct horse")
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
        assert attempt("10.9.0.7", "correct horse").status_code == 302
    finally:
        stop()


# --------------------------------------------------------------------------- no enumeration

def test_an_unknown_name_answers_like_a_wrong_voice_and_strangers_see_no_scores(gate, speech):
    live, _ = gate
    live.app.test_cli_runner().invoke(args=["users", "create", "newcomer"])
    wrong_voice = verify(live, speech, IMPOSTOR, "lj", "10.10.0.1")
    unknown = verify(live, speech, IMPOSTOR, "nobody-here", "10.10.0.2")
    unenrolled = verify(live, speech, IMPOSTOR, "newcomer", "10.10.0.3")
    for response in (wrong_voice, unknown, unenrolled):
        assert response.status_code == 200 and response.json()["state"] == "reject"
        assert not {"score", "threshold", "runner_up_score"} & set(response.json())
    assert set(wrong_voice.json()) == set(unknown.json()) == set(unenrolled.json())
    over_ws = client.run("verify", [speech.path(IMPOSTOR)], live.ws_url, user="nobody-here", **QUIET)
    assert over_ws["type"] == "result" and over_ws["state"] == "reject"
    # The accepted user sees their own score.
    own = verify(live, speech, GENUINE, "lj", "10.10.0.4").json()
    assert own["state"] == "accept" and own["score"] >= own["threshold"]


def test_only_a_trusted_front_may_name_the_client_address():
    from app.serving.proxies import trust_proxies

    def echo(environ, start_response):
        start_response("200 OK", [])
        return [environ["REMOTE_ADDR"].encode()]

    app = trust_proxies(echo, ["10.0.0.1"])
    spoof = {"HTTP_X_FORWARDED_FOR": "10.9.9.9", "wsgi.url_scheme": "http"}
    assert b"".join(app({**spoof, "REMOTE_ADDR": "10.0.0.1"}, lambda *_: None)) == b"10.9.9.9"
    assert b"".join(app({**spoof, "REMOTE_ADDR": "10.0.0.2"}, lambda *_: None)) == b"10.0.0.2"
