"""The audit log in plain words: labels and reasons, the deleted user's number, CSV newest first."""
from __future__ import annotations

import csv
import io
import re

import pytest

from app.store.db import db
from app.store.models import AuditEvent, User
from app.web import labels

from .conftest import BACKENDS
from .test_admin import add_admin, post, sign_in


def _event(**fields) -> AuditEvent:
    values = {"request_id": "r", "kind": "verify", "protocol": "ws", "decision": "reject", **fields}
    return AuditEvent(**values)


def test_every_decision_has_words_and_a_reason():
    cases = [
        (_event(decision="accept", score=0.62, threshold=0.4), "Accepted", "voice matched (0.62 ≥ 0.40)"),
        (_event(decision="reject", score=0.21, threshold=0.4), "Rejected", "the voice did not match (0.21 < 0.40)"),
        (_event(decision="reject", reason="reject", score=0.21, threshold=0.4), "Rejected", "the voice did not match (0.21 < 0.40)"),
        (_event(kind="identify", decision="reject", reason="unknown_speaker", score=0.3, threshold=0.4), "Rejected",
         "the voice matched nobody enrolled (0.30 < 0.40)"),
        (_event(kind="identify", decision="reject"), "Rejected", "nobody has enrolled a voice yet"),
        (_event(kind="transcribe", decision="reject", reason="other_voice", score=0.1, threshold=0.4), "Rejected",
         "another voice than the user's (0.10 < 0.40)"),
        (_event(kind="transcribe", decision="accept", reason="client_left"), "Accepted",
         "the client left mid-utterance after seeing partial text"),
        (_event(decision="unknown_user", reason="unknown_user"), "Unknown user", "nobody has that user name"),
        (_event(kind="transcribe", decision="not_enough_speech"), "Too little speech", "too little speech to decide"),
        (_event(kind="enroll", decision="clip_accepted"), "Clip accepted", "first clip"),
        (_event(kind="enroll", decision="clip_accepted", score=0.8, threshold=0.4), "Clip accepted",
         "sounds like the earlier clips (0.80 ≥ 0.40)"),
        (_event(kind="enroll", decision="clip_refused", reason="too_quiet"), "Clip refused", "the voice was too quiet"),
        (_event(kind="transcribe", decision="bad_key", reason="bad_key", protocol="kaldi"), "Wrong dictation key",
         "the dictation URL's key is wrong or revoked"),
        (_event(kind="admin", decision="user_deleted", reason="user #12 deleted, by admin root"), "User deleted",
         "user #12 deleted, by admin root"),
    ]
    for event, decision, reason in cases:
        said = labels.describe(event)
        assert (said.decision, said.reason) == (decision, reason), event.__dict__
        assert "_" not in said.kind + said.decision
    assert labels.describe(_event(kind="enroll", decision="clip_accepted", score=0.8)).score_label == "voice consistency"
    assert labels.describe(_event(score=0.8)).score_label == "voice match"


@pytest.mark.parametrize("db_backend", BACKENDS)
def test_deleting_a_user_says_which_account_and_the_csv_is_newest_first(app, client):
    add_admin(app)
    sign_in(client)
    post(client, "/admin/users", name="ada", display_name="Ada")
    with app.app_context():
        user_id = User.by_name("ada").id
    post(client, f"/admin/users/{user_id}/delete", confirm="yes")
    with app.app_context():
        deleted = db.session.scalars(db.select(AuditEvent).where(AuditEvent.decision == "user_deleted")).one()
        assert deleted.claimed_user is None and deleted.reason == f"user #{user_id} deleted, by admin root"
    page = client.get("/admin/audit").text
    assert f"user #{user_id} deleted, by admin root" in page and "User deleted" in page
    assert "user_deleted" not in re.sub(r'value="[^"]*"', "", page)  # codes only in the filter's option values
    assert re.search(r"\d\d:\d\d:\d\d</time>", page)

    rows = list(csv.DictReader(io.StringIO(client.get("/admin/api/audit.csv").text)))
    assert [row["decision"] for row in rows] == ["user_deleted", "invite_issued", "user_created"]
    assert rows[0]["result"] == "User deleted" and rows[0]["why"].startswith("user #")


def test_the_settings_reset_asks_first(app, client):
    add_admin(app)
    sign_in(client)
    page = client.get("/admin/settings").text
    assert 'href="/admin/settings/reset"' in page and 'name="reset"' not in page
    confirm = client.get("/admin/settings/reset").text
    assert "Reset every setting to its default?" in confirm and 'name="reset" value="yes"' in confirm


def _page_csrf(client, url: str) -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', client.get(url).text).group(1)


def test_a_lost_invite_request_shows_until_a_new_link_is_issued_and_is_kept_once_an_hour(app, client):
    add_admin(app)
    sign_in(client)
    post(client, "/admin/users", name="ada", display_name="Ada")
    people = app.test_client()
    for _ in range(2):
        answer = people.post("/lost-invite", data={"name": "ada", "csrf_token": _page_csrf(people, "/lost-invite")})
        assert answer.status_code == 200 and "administrators now see" in answer.text
    with app.app_context():
        asked = db.session.scalars(db.select(AuditEvent).where(AuditEvent.decision == "invite_requested")).all()
        assert [(e.kind, e.claimed_user) for e in asked] == [("self", "ada")]  # twice asked, once kept
    assert "Asking for a new enrollment link" in client.get("/admin/").text
    with app.app_context():
        user_id = User.by_name("ada").id
    post(client, f"/admin/users/{user_id}/invite")
    assert "Asking for a new enrollment link" not in client.get("/admin/").text


def test_the_microphone_check_measures_without_deciding(app, client, speech):
    import wave

    with wave.open(str(speech.path("wav/ljspeech/LJ001-0004.wav"))) as handle:
        pcm = handle.readframes(16000 * 5)
    token = _page_csrf(client, "/mic-test")
    answer = client.post("/mic-test", data=pcm, headers={"X-CSRFToken": token, "Content-Type": "application/octet-stream"})
    assert answer.status_code == 200, answer.text
    assert answer.json["problem"] is None and 2.0 <= answer.json["speech_seconds"] <= 5.0 and not answer.json["clipped"]
    silence = client.post("/mic-test", data=bytes(32000), headers={"X-CSRFToken": token})
    assert silence.json["problem"] == "no_speech"
    for bad in (b"", b"\x00" * 3, bytes(16000 * 2 * 11)):
        assert client.post("/mic-test", data=bad, headers={"X-CSRFToken": token}).status_code == 400
    assert client.post("/mic-test", data=pcm).status_code == 400  # no CSRF token: another site's page
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(AuditEvent)) == 0
