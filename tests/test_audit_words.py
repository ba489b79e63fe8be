"""The audit log in plain words: labels and reasons, the deleted user's number, CSV newest first."""
from __future__ import annotations

import csv
import io
import re

from app.db import db
from app.models import AuditEvent, User
from app.web import labels

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
