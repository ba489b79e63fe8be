"""Admin screens over HTTP: sign-in and its throttling, CSRF, access control, users, audit, settings."""
from __future__ import annotations

import csv
import dataclasses
import io
import re
import sqlite3
import time
from datetime import timedelta

import numpy as np
import pytest

from app.gate.policy import DEFAULT_TARGET_FAR
from app.store.db import db
from app.engines.runtime import whisper_status
from app.gate.settings import whisper_to_load
from app.store.models import AdminAccount, AuditEvent, EnrollmentInvite, Setting, User, Voiceprint, utcnow
from app.gate.settings import SettingsUnavailable, current_policy

from .conftest import BACKENDS, make_app

PASSWORD = "correct horse battery"
PAGES = ["/admin/", "/admin/users", "/admin/users/1", "/admin/users/1/delete", "/admin/audit", "/admin/settings"]
APIS = ["/admin/api/audit.csv", "/admin/api/scores", "/admin/api/whisper"]
POSTS = ["/admin/users", "/admin/users/1/disable", "/admin/users/1/delete", "/admin/settings", "/admin/logout"]


def csrf_token(client, url: str = "/admin/login") -> str:
    """Return the CSRF token of the form on ``url``."""
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get(url).text).group(1)


def add_admin(app, username: str = "root", password: str = PASSWORD) -> None:
    with app.app_context():
        account = AdminAccount(username=username)
        account.set_password(password)
        db.session.add(account)
        db.session.commit()


def sign_in(client, username: str = "root", password: str = PASSWORD, **extra):
    return client.post("/admin/login", data={"username": username, "password": password,
                                             "csrf_token": csrf_token(client), **extra})


def post(client, url: str, **data):
    """Post a form the way the admin pages do, with the session's CSRF token."""
    return client.post(url, data={"csrf_token": csrf_token(client, "/admin/users"), **data})


def add_voiceprint(app, name: str) -> bytes:
    """Create ``name`` with a voiceprint of random unit embeddings; return its centroid bytes."""
    clips = np.random.default_rng(abs(hash(name)) % 2**32).normal(size=(3, 192)).astype(np.float32)
    clips /= np.linalg.norm(clips, axis=1, keepdims=True)
    with app.app_context():
        user = User.by_name(name) or User(name=name, display_name=name)
        db.session.add(user)
        voiceprint = Voiceprint.from_embeddings(clips, "ecapa", 16.5)
        user.voiceprint = voiceprint
        db.session.commit()
        return voiceprint.centroid


@pytest.fixture
def signed_in(app, client):
    add_admin(app)
    assert sign_in(client).status_code == 302
    return client


def test_without_a_session_pages_redirect_to_sign_in_and_apis_answer_401(app, client):
    add_voiceprint(app, "ada")
    for url in PAGES:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response.headers["Location"] == f"/admin/login?next={url}", url
    for url in APIS:
        response = client.get(url)
        assert response.status_code == 401, url
        assert response.json == {"error": {"code": "not_signed_in", "message": "sign in as an admin first"}}
    token = csrf_token(client)
    for url in POSTS:
        response = client.post(url, data={"csrf_token": token, "confirm": "yes", "name": "eve"})
        assert response.status_code == 302 and response.headers["Location"].startswith("/admin/login"), url
    with app.app_context():
        assert User.by_name("eve") is None and User.by_name("ada").active and User.by_name("ada").voiceprint


def test_a_form_post_without_a_csrf_token_is_refused(app, signed_in):
    assert app.config["TESTING"] and app.config.get("WTF_CSRF_ENABLED", True)
    response = signed_in.post("/admin/users", data={"name": "mallory"})
    assert response.status_code == 400 and "security token" in response.text
    response = signed_in.post("/admin/users", data={"name": "mallory", "csrf_token": "forged"})
    assert response.status_code == 400
    with app.app_context():
        assert User.by_name("mallory") is None
    assert post(signed_in, "/admin/users", name="mallory").status_code == 302
    with app.app_context():
        assert User.by_name("mallory") is not None


def test_sign_in_starts_a_fresh_session_follows_only_local_next_and_signs_out_by_post(app, client):
    add_admin(app)
    with client.session_transaction() as session:
        session["planted"] = "by someone else"
    response = sign_in(client, next="/admin/audit?user=ada")
    assert response.headers["Location"] == "/admin/audit?user=ada"
    with client.session_transaction() as session:
        assert "planted" not in session and isinstance(session["admin_session"], str)
    cookie = client.get_cookie("session")
    assert cookie.http_only and cookie.same_site == "Lax"
    client.post("/admin/logout", data={"csrf_token": csrf_token(client, "/admin/")})
    for evil in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:alert(1)"):
        assert sign_in(client, next=evil).headers["Location"] == "/admin/", evil
        client.post("/admin/logout", data={"csrf_token": csrf_token(client, "/admin/")})
    assert client.get("/admin/logout").status_code == 405  # signing out is a POST
    assert client.get("/admin/").status_code == 302


def test_wrong_passwords_slow_down_only_the_client_that_sent_them(app, client):
    add_admin(app)
    assert sign_in(client, password="wrong").status_code == 401
    slowed = sign_in(client)  # the right password, but before the growing delay has passed
    assert slowed.status_code == 429 and "Try again in" in slowed.text and int(slowed.headers["Retry-After"]) >= 1
    with app.app_context():
        assert db.session.scalar(db.select(AdminAccount)).locked_until is None  # no account-wide lock
    other = app.test_client()
    assert other.post("/admin/login", environ_base={"REMOTE_ADDR": "10.0.0.2"},
                      data={"username": "root", "password": PASSWORD, "csrf_token": csrf_token(other)}).status_code == 302


def test_one_address_failing_many_times_is_refused_even_with_a_right_password(tmp_path):
    app = make_app(tmp_path, ADMIN_ADDRESS_ATTEMPTS=4, ADMIN_SIGNIN_DELAY=0)
    add_admin(app)
    client = app.test_client()
    for name in ("a", "b", "c", "d"):  # unknown names: no account to lock, the address counts
        assert sign_in(client, username=name, password="guess").status_code == 401
    assert sign_in(client).status_code == 429
    other = app.test_client()
    assert other.post("/admin/login", environ_base={"REMOTE_ADDR": "10.0.0.2"},
                      data={"username": "root", "password": PASSWORD, "csrf_token": csrf_token(other)}).status_code == 302


@pytest.mark.parametrize("db_backend", BACKENDS)
def test_create_user_shows_a_one_time_invite_link_once(app, signed_in):
    response = post(signed_in, "/admin/users", name="ada", display_name="Ada Lovelace")
    page = signed_in.get(response.headers["Location"])
    url = re.search(r'id="invite-url" value="([^"]+)"', page.text).group(1)
    assert url.startswith("http://localhost/enroll/")
    with app.app_context():
        invite = EnrollmentInvite.find_valid(url.rsplit("/", 1)[1])
        assert invite is not None and invite.user.name == "ada"
        assert timedelta(hours=71) < invite.expires_at - utcnow() <= timedelta(hours=72)
        assert EnrollmentInvite.hash_token(url.rsplit("/", 1)[1]) == invite.token_hash  # only the hash is kept
    assert "invite-url" not in signed_in.get(response.headers["Location"]).text  # shown once
    assert "already a user" in signed_in.get(post(signed_in, "/admin/users", name="ada").headers["Location"]).text
    assert "without spaces" in signed_in.get(post(signed_in, "/admin/users", name="a b").headers["Location"]).text


@pytest.mark.parametrize("db_backend", BACKENDS)
def test_user_list_search_and_state(app, signed_in):
    add_voiceprint(app, "ada_l")
    post(signed_in, "/admin/users", name="bob")
    with app.app_context():
        db.session.add_all([
            AuditEvent(request_id="r1", kind="verify", protocol="ws", decision="accept", claimed_user="ada_l",
                       matched_user="ada_l", score=0.7, threshold=0.4),
            AuditEvent(request_id="r2", kind="verify", protocol="ws", decision="reject", claimed_user="ada_l",
                       score=0.1, threshold=0.4),
        ])
        db.session.commit()
    listing = signed_in.get("/admin/users").text
    assert "ada_l" in listing and "bob" in listing and "16.5 s" in listing and "not enrolled" in listing
    assert "ada_l" in signed_in.get("/admin/users?q=A_L").text
    assert "ada_l" not in signed_in.get("/admin/users?q=a%25l").text  # % is not a wildcard
    enrolled = signed_in.get("/admin/users?state=enrolled").text
    assert "ada_l" in enrolled and ">bob<" not in enrolled


@pytest.mark.parametrize("db_backend", BACKENDS)
def test_disable_enable_unlock_reset_and_revoke(app, signed_in):
    add_voiceprint(app, "ada")
    with app.app_context():
        user = User.by_name("ada")
        user.locked_until, user_id = utcnow() + timedelta(minutes=5), user.id
        db.session.commit()
    from app.protocols import dictation_keys
    with app.app_context():
        old_key = dictation_keys.key_for(User.by_name("ada"), app.config["SECRET_KEY"])
    assert old_key in signed_in.get(f"/admin/users/{user_id}").text

    post(signed_in, f"/admin/users/{user_id}/disable")
    with app.app_context():
        assert not User.by_name("ada").active
    post(signed_in, f"/admin/users/{user_id}/enable")
    post(signed_in, f"/admin/users/{user_id}/unlock")
    with app.app_context():
        user = User.by_name("ada")
        assert user.active and not user.is_locked()

    for action in ("reset", "revoke-key", "delete"):  # a GET, or a POST without the confirmation, only asks
        assert "Cancel" in signed_in.get(f"/admin/users/{user_id}/{action}").text
        assert post(signed_in, f"/admin/users/{user_id}/{action}").status_code == 200
    with app.app_context():
        assert User.by_name("ada").voiceprint is not None

    post(signed_in, f"/admin/users/{user_id}/reset", confirm="yes")
    post(signed_in, f"/admin/users/{user_id}/revoke-key", confirm="yes")
    with app.app_context():
        user = User.by_name("ada")
        assert user.voiceprint is None
        assert dictation_keys.user_for(old_key, app.config["SECRET_KEY"]) is None
        actions = db.session.scalars(db.select(AuditEvent.decision).where(AuditEvent.kind == "admin")).all()
    assert actions == ["user_disabled", "user_enabled", "user_unlocked", "enrollment_reset", "dictation_key_revoked"]


def test_deleting_a_user_erases_the_voiceprint_from_the_database_file(app, signed_in, tmp_path):
    centroid = add_voiceprint(app, "ada")
    with app.app_context():
        user_id = User.by_name("ada").id
        db.session.add(AuditEvent(request_id="r", kind="verify", protocol="ws", decision="accept",
                                  claimed_user="ada", matched_user="ada", score=0.8, threshold=0.4))
        db.session.commit()
    database = tmp_path / "voicegate.db"
    files = (database, database.with_name("voicegate.db-wal"))
    assert sqlite3.connect(database).execute("SELECT COUNT(*) FROM voiceprints").fetchone() == (1,)
    assert any(centroid in path.read_bytes() for path in files if path.exists())  # the check below can see it

    response = post(signed_in, f"/admin/users/{user_id}/delete", confirm="yes")
    assert response.headers["Location"] == "/admin/users"
    connection = sqlite3.connect(database)
    assert connection.execute("SELECT COUNT(*) FROM voiceprints").fetchone() == (0,)
    assert connection.execute("SELECT COUNT(*) FROM users").fetchone() == (0,)
    assert connection.execute("SELECT claimed_user, matched_user FROM audit_events WHERE kind = 'verify'").fetchall() == [(None, None)]
    connection.close()
    # Not even in free pages or the write-ahead log.
    for path in files:
        if path.exists():
            assert centroid not in path.read_bytes(), path


def _events(app, count: int, **fields) -> None:
    with app.app_context():
        for i in range(count):
            values = {"request_id": f"r{i}", "kind": "verify", "protocol": "ws", "decision": "reject", **fields}
            db.session.add(AuditEvent(**values))
        db.session.commit()


@pytest.mark.parametrize("db_backend", BACKENDS)
def test_audit_log_filters_paginates_and_exports_csv(app, signed_in):
    _events(app, 60, claimed_user="ada", decision="accept", matched_user="ada", score=0.71, threshold=0.4)
    _events(app, 5, claimed_user="=cmd|' /C calc'!A0", score=-0.05, threshold=0.4)
    old = utcnow() - timedelta(days=10)
    _events(app, 3, claimed_user="bob", created_at=old, reason="not_enough_speech", decision="not_enough_speech")

    first = signed_in.get("/admin/audit").text
    assert "68 events, page 1 of 2" in first and "0.710" in first
    assert signed_in.get("/admin/audit?page=2").text.count("<tr>") == 68 - 50 + 1  # plus the header row
    only_ada = signed_in.get("/admin/audit?user=ada&decision=accept").text
    assert "60 events" in only_ada and "page=2&amp;user=ada&amp;decision=accept" in only_ada
    assert "3 events" in signed_in.get(f"/admin/audit?to={(old.date()).isoformat()}").text
    assert "65 events" in signed_in.get(f"/admin/audit?from={utcnow().date().isoformat()}").text
    assert "68 events" in signed_in.get("/admin/audit?from=garbage&kind=nonsense").text

    response = signed_in.get("/admin/api/audit.csv?decision=reject")
    assert response.mimetype == "text/csv" and "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 5 and {r["decision"] for r in rows} == {"reject"}
    assert rows[0]["claimed_user"].startswith("'=")  # never a spreadsheet formula
    assert rows[0]["score"] == "-0.05"
    assert "transcript" not in response.text.splitlines()[0] and "audio," not in response.text.splitlines()[0]
    assert len(list(csv.DictReader(io.StringIO(signed_in.get("/admin/api/audit.csv").text)))) == 68


@pytest.mark.parametrize("db_backend", BACKENDS)
def test_settings_are_validated_stored_and_in_force_without_restart(app, signed_in):
    response = post(signed_in, "/admin/settings", threshold="1.5", enroll_min_clips="2.5", min_verify_speech="2")
    assert response.status_code == 400
    assert "Raw cosine floor: must be between 0.05 and 0.99" in response.text and "whole number" in response.text
    assert 'value="1.5"' in response.text  # the refused value is shown again
    with app.test_request_context():
        assert current_policy().threshold == pytest.approx(0.25) and current_policy().min_verify_speech == 0.8

    post(signed_in, "/admin/settings", threshold="0.55", min_verify_speech="2", enroll_min_clips="4",
         enroll_min_clip_speech="3", enroll_min_total_speech="15", whisper_model="tiny.en")
    with app.test_request_context():
        policy = current_policy()
        assert (policy.threshold, policy.min_verify_speech, policy.enroll_min_clips) == (0.55, 2.0, 4)
        # Only what differs from the configured defaults is stored.
        assert set(Setting.stored()) == {"threshold", "min_verify_speech", "enroll_min_clips"}
        assert db.session.get(Setting, "threshold").updated_by == "root"
    page = signed_in.get("/admin/settings").text
    assert 'value="0.55"' in page and "Changed by root" in page

    post(signed_in, "/admin/settings", reset="yes")
    with app.test_request_context():
        assert current_policy() == dataclasses.replace(current_policy(), threshold=0.25, enroll_min_clips=3)
        assert Setting.stored() == {}


def test_the_spoken_challenge_is_chosen_in_the_settings(app, signed_in):
    assert 'name="challenge"' in signed_in.get("/admin/settings").text
    refused = post(signed_in, "/admin/settings", challenge="maybe")
    assert refused.status_code == 400 and "Spoken challenge: choose one of digits, off" in refused.text
    post(signed_in, "/admin/settings", challenge="digits")  # the tests' configured default is off
    with app.test_request_context():
        assert current_policy().challenge == "digits"
    post(signed_in, "/admin/settings", challenge="off")
    with app.test_request_context():
        assert current_policy().challenge == "off" and "challenge" not in Setting.stored()


def test_the_languages_spoken_here_are_checked_stored_and_fail_closed_when_unreadable(app, signed_in):
    refused = post(signed_in, "/admin/settings", languages="cs, klingon")
    assert refused.status_code == 400 and "klingon is not a code Whisper knows" in refused.text
    post(signed_in, "/admin/settings", languages="CS nl,it, cs")
    with app.test_request_context():
        assert current_policy().detect_among == ("cs", "nl", "it")
    assert 'value="cs,nl,it"' in signed_in.get("/admin/settings").text
    with app.app_context():
        Setting.put("languages", ["cs"], "hand")  # not a string: written by hand, or by another version
        db.session.commit()
    with app.test_request_context():
        with pytest.raises(SettingsUnavailable):
            current_policy()
        assert current_policy(strict=False).detect_among == ()
    post(signed_in, "/admin/settings", languages="")
    with app.test_request_context():
        assert current_policy().detect_among == () and "languages" not in Setting.stored()


def test_a_stored_value_out_of_range_refuses_decisions_but_the_settings_screen_opens(app):
    with app.app_context():
        Setting.put("threshold", 7, "hand")
        Setting.put("enroll_min_clips", 2, "hand")
        db.session.commit()
    with app.test_request_context():
        with pytest.raises(SettingsUnavailable):
            current_policy()  # never the configured default in its place
        lenient = current_policy(strict=False)
        assert lenient.threshold == pytest.approx(0.25) and lenient.enroll_min_clips == 2
    add_admin(app)
    client = app.test_client()
    sign_in(client)
    assert client.get("/admin/settings").status_code == 200


def test_a_whisper_model_not_on_disk_is_refused_with_a_clear_error(tmp_path, engines):
    app = make_app(tmp_path, engines, MODELS_DIR=str(tmp_path / "empty"))
    add_admin(app)
    client = app.test_client()
    sign_in(client)
    page = client.get("/admin/settings").text
    assert "base (not downloaded)" in page
    response = post(client, "/admin/settings", whisper_model="base")
    assert response.status_code == 400 and "run &#39;flask models fetch base&#39; first" in response.text
    assert whisper_status(app)["active"] == "tiny.en"
    # A stored choice whose files are missing never keeps the models from loading.
    with app.app_context():
        Setting.put("whisper_model", "base", "hand")
        db.session.commit()
    assert whisper_to_load(app) == "tiny.en"
    other = make_app(tmp_path / "other", engines)  # the real models folder, with base in it
    with other.app_context():
        Setting.put("whisper_model", "base", "hand")
        db.session.commit()
    assert whisper_to_load(other) == "base"


def test_switching_the_whisper_model_takes_effect_without_restart(tmp_path, engines, speech):
    # Its own Engines object around the shared models, so the other tests keep tiny.en.
    own = dataclasses.replace(engines)
    app = make_app(tmp_path, own)
    add_admin(app)
    client = app.test_client()
    sign_in(client)
    post(client, "/admin/settings", whisper_model="base")
    deadline = time.monotonic() + 120
    while client.get("/admin/api/whisper").json["state"] == "loading":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    status = client.get("/admin/api/whisper").json
    assert status == {"state": "loaded", "name": "base", "active": "base", "error": None, "wanted": "base"}
    assert own.transcriber.multilingual and not engines.transcriber.multilingual
    text = own.transcriber.transcribe(speech.load("wav/ljspeech/LJ001-0004.wav")).text
    assert "printing" in text.lower() or len(text) > 20
    assert "In use: <strong>base</strong>" in client.get("/admin/settings").text


def test_settings_chart_shows_accepted_and_rejected_scores_and_a_proposed_threshold(app, signed_in):
    _events(app, 4, decision="accept", claimed_user="ada", matched_user="ada", score=0.62, threshold=0.4)
    _events(app, 3, decision="reject", claimed_user="ada", score=0.12, threshold=0.4)
    _events(app, 2, kind="enroll", decision="clip_accepted", claimed_user="ada", score=0.9, threshold=0.4)
    page = signed_in.get("/admin/settings?proposed=0.65").text
    assert "accepted attempts (4)" in page and "rejected attempts (3)" in page
    assert "4 accepted, score 0.60–0.65" in page and "3 rejected, score 0.10–0.15" in page
    assert "At 0.65, 4 of the 4 accepted attempts would have been rejected and 0 of the 3" in page
    assert "no ground truth" in page
    assert signed_in.get("/admin/api/scores").json == {"accepted": [0.62] * 4, "rejected": [0.12] * 3, "threshold": 0.25}


@pytest.mark.parametrize("db_backend", BACKENDS)
def test_dashboard_counts_todays_attempts(app, signed_in):
    add_voiceprint(app, "ada")
    post(signed_in, "/admin/users", name="bob")
    _events(app, 3, decision="accept", claimed_user="ada", matched_user="ada", score=0.6, threshold=0.4)
    _events(app, 1, decision="reject", claimed_user="ada", score=0.1, threshold=0.4)
    _events(app, 1, decision="no_speech", claimed_user="ada")
    _events(app, 2, decision="accept", created_at=utcnow() - timedelta(days=3))
    page = signed_in.get("/admin/").text
    assert re.search(r'stat-value">1</span><span class="stat-label">enrolled of 2 users', page)
    assert re.search(r'stat-value">5</span><span class="stat-label">attempts today', page)
    assert "75&nbsp;%" in page and "25&nbsp;%" in page


def test_the_target_false_accept_rate_is_set_in_the_settings_and_nonsense_is_refused(app, signed_in):
    for nonsense in ("0", "-0.01", "0.5", "nan", "inf", "one in a thousand", ""):
        response = post(signed_in, "/admin/settings", target_far=nonsense)
        assert response.status_code == 400, nonsense
        assert "Target false-accept rate" in response.text
    with app.test_request_context():
        assert current_policy().target_far == pytest.approx(DEFAULT_TARGET_FAR)

    post(signed_in, "/admin/settings", target_far="0.0001")
    with app.test_request_context():
        assert current_policy().target_far == pytest.approx(0.0001)
        assert db.session.get(Setting, "target_far").updated_by == "root"
    assert 'value="0.0001"' in signed_in.get("/admin/settings").text
