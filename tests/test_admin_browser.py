"""The admin screens in real headless Chromium against a real server, with real enrollments and logins."""
from __future__ import annotations

import re
import sqlite3

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from clients import voicegate as client
from app.store.db import db
from app.store.models import AuditEvent, EnrollmentInvite

from .browser import chromium, new_page, screenshot
from .test_voice_login import ENROLLABLE

QUIET = {"echo": lambda _line: None}
PASSWORD = "correct horse battery"
GENUINE = "wav/ljspeech/LJ001-0004.wav"


@pytest.fixture
def admin_live(live, monkeypatch):
    """The live server with an admin account made by the CLI, as an operator would."""
    monkeypatch.setenv("VOICEGATE_ADMIN_PASSWORD", PASSWORD)
    result = live.app.test_cli_runner().invoke(args=["admin", "create", "root"])
    assert result.exit_code == 0, result.output
    # The wrong password and the rejected voice below would each make this client wait a second
    # before its next try; the flows go on at once.
    live.app.config["ADMIN_SIGNIN_DELAY"] = 0
    live.app.config["POLICY_LOCKOUT_DELAY"] = 0
    return live


def sign_in(page, url: str) -> None:
    """Sign in from the sign-in page with the keyboard only."""
    # The page puts the focus in the user name field (autofocus); a busy headless Chromium may do
    # so after the load event, and keys typed before it would be lost.
    expect(page.locator("#username")).to_be_focused()
    page.keyboard.type("root")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(url)


def create_user(page, name: str) -> str:
    """Create ``name`` on the users page; return the enrollment link shown."""
    page.goto("/admin/users")
    if not page.locator("#name").is_visible():
        page.get_by_text("Add a user").click()
    page.fill("#name", name)
    page.get_by_role("button", name="Create and get enrollment link").click()
    page.wait_for_selector("#invite-url")
    return page.input_value("#invite-url")


def scores_in(table: str) -> list[float]:
    """Return the scores shown in an audit table's text (three decimals)."""
    return [float(score) for score in re.findall(r"\t(-?\d\.\d{3})\s", table)]


def verify(live, speech, user: str) -> dict:
    return client.run("verify", [speech.path(GENUINE)], live.ws_url, user=user, **QUIET)


def test_admin_flows_in_chromium(admin_live, speech, tmp_path):
    live = admin_live
    with chromium() as browser:
        context, page = new_page(browser, live.url)

        # Sign in: an admin URL leads to the sign-in page and back.
        page.goto("/admin/users")
        assert page.url.endswith("/admin/login?next=/admin/users")
        screenshot(page, "admin-01-sign-in")
        page.fill("#username", "root")
        page.fill("#password", "wrong password")
        page.click("button[type=submit]")
        assert page.locator(".flash-error").inner_text() == "Wrong user name or password."
        screenshot(page, "admin-02-sign-in-refused")
        page.fill("#password", "")
        page.focus("#username")
        page.fill("#username", "")
        sign_in(page, f"{live.url}/admin/users")
        assert "Signed in as root" in page.inner_text(".flash")
        screenshot(page, "admin-03-users-empty")

        # Create two users and enroll them over the WebSocket with their links' tokens.
        links = {}
        for name in ("ljspeech", "vctk"):
            links[name] = create_user(page, name)
            token = links[name].rsplit("/enroll/", 1)[1]
            assert links[name] == f"{live.url}/enroll/{token}"
            with live.app.app_context():
                assert EnrollmentInvite.find_valid(token).user.name == name
            if name == "ljspeech":
                screenshot(page, "admin-04-user-created-with-invite")
                page.click("button[data-copy=invite-url]")
                expect(page.locator("button[data-copy=invite-url]")).to_have_text("Copied")
            reply = client.run("enroll", [speech.path(f) for f in ENROLLABLE[name]], live.ws_url, invite=token, **QUIET)
            assert reply["state"] == "enrolled", reply
        # The invite link itself: the enrollment page belongs to the browser pages; here only
        # that the link is ours and, once used, no longer valid.
        response = page.goto(links["ljspeech"])
        assert response.url == links["ljspeech"]
        screenshot(page, "admin-05-invite-link-opened")
        with live.app.app_context():
            assert EnrollmentInvite.find_valid(links["ljspeech"].rsplit("/", 1)[1]) is None

        # Real verifications for the audit log: a genuine login and an impostor.
        genuine = verify(live, speech, "ljspeech")
        assert genuine["state"] == "accept", genuine
        impostor = verify(live, speech, "vctk")
        assert impostor["state"] == "reject", impostor

        page.goto("/admin/users")
        rows = page.locator("table.users tbody tr")
        assert rows.count() == 2
        assert "enrolled" in rows.nth(0).inner_text() and "never" not in rows.nth(0).inner_text()
        assert "1" in rows.nth(1).locator("[data-label='Rejects (24 h)']").inner_text()
        screenshot(page, "admin-06-users-enrolled")

        # The audit log shows the attempts, filterable by user.
        page.goto("/admin/audit")
        table = page.inner_text("table.audit")
        assert "Clip accepted" in table and "Enrolled" in table and "Accepted" in table and "Rejected" in table
        assert any(score == pytest.approx(genuine["score"], abs=6e-4) for score in scores_in(table))
        screenshot(page, "admin-07-audit")
        page.fill("#f-user", "vctk")
        page.select_option("#f-decision", "reject")
        page.get_by_role("button", name="Filter").click()
        assert page.locator("table.audit tbody tr").count() == 1
        # The impostor was not told a score; the admin's audit log has it.
        assert "score" not in impostor
        [score] = scores_in(page.inner_text("table.audit"))
        assert score < 0.40
        screenshot(page, "admin-08-audit-filtered")

        # Change the threshold above the genuine score: the same clip is now rejected.
        page.goto("/admin/settings")
        raised = min(0.99, round(genuine["score"] + 0.05, 2))
        page.fill("#s-threshold", str(raised))
        page.wait_for_selector("#proposed-mark:not([hidden])", state="attached")
        assert "1 of the 1 accepted attempts would have been rejected" in page.inner_text("#shift")
        screenshot(page, "admin-09-settings-preview")
        page.get_by_role("button", name="Save settings").click()
        assert "Saved: threshold" in page.inner_text(".flash")
        screenshot(page, "admin-10-settings-saved")
        again = verify(live, speech, "ljspeech")
        assert again["state"] == "reject" and "threshold" not in again, again  # a reject shows no figures
        with live.app.app_context():  # the audit log has the score: the raw floor now stands above it
            row = db.session.scalar(select(AuditEvent).where(AuditEvent.request_id == again["request_id"]))
        assert row.decision == "reject" and row.score == pytest.approx(genuine["score"], abs=1e-3) and row.score < raised
        page.fill("#s-threshold", "0.25")
        page.get_by_role("button", name="Save settings").click()
        assert verify(live, speech, "ljspeech")["state"] == "accept"

        # Disable: the voice is refused; enable again.
        page.goto("/admin/users")
        page.get_by_role("link", name="vctk").click()
        page.get_by_role("button", name="Disable").click()
        assert "vctk is disabled" in page.inner_text(".flash")
        screenshot(page, "admin-11-user-disabled")
        refused = verify(live, speech, "vctk")
        # To a caller who is not an admin, a disabled name answers like a wrong voice; the audit says why.
        assert (refused["type"], refused["state"]) == ("result", "reject") and "token" not in refused, refused
        with live.app.app_context():
            row = db.session.scalar(select(AuditEvent).where(AuditEvent.request_id == refused["request_id"]))
        assert row.reason == "disabled"

        # Delete, after a confirmation: the voiceprint leaves the database file at once.
        database = tmp_path / "voicegate.db"
        centroid = sqlite3.connect(database).execute(
            "SELECT v.centroid FROM voiceprints v JOIN users u ON u.id = v.user_id WHERE u.name = 'vctk'").fetchone()[0]
        page.get_by_role("link", name="Delete user…").click()
        assert "cannot be undone" in page.inner_text("main")
        screenshot(page, "admin-12-confirm-delete")
        page.get_by_role("button", name="Delete user").click()
        assert "Deleted vctk" in page.inner_text(".flash")
        screenshot(page, "admin-13-user-deleted")
        connection = sqlite3.connect(database)
        assert connection.execute("SELECT u.name FROM users u JOIN voiceprints v ON v.user_id = u.id").fetchall() == [("ljspeech",)]
        assert connection.execute("SELECT COUNT(*) FROM audit_events WHERE claimed_user = 'vctk' OR matched_user = 'vctk'").fetchone() == (0,)
        connection.close()
        for path in (database, database.with_name("voicegate.db-wal")):
            if path.exists():
                assert centroid not in path.read_bytes()

        # The audit log keeps the deleted user's events, without the name, and shows the admin's actions.
        page.goto("/admin/audit?kind=admin")
        actions = page.inner_text("table.audit")
        for action in ("User created", "Enrollment link issued", "Settings changed", "User disabled", "User deleted"):
            assert action in actions
        assert re.search(r"user #\d+ deleted, by admin root", actions)
        screenshot(page, "admin-14-audit-admin-actions")
        page.goto("/admin/audit?decision=reject")
        assert "vctk" not in page.inner_text("table.audit")

        page.goto("/admin/")
        assert page.inner_text(".stat-value >> nth=0") == "1"
        screenshot(page, "admin-15-dashboard")

        # CSV export downloads with the session.
        page.goto("/admin/audit")
        with page.expect_download() as download:
            page.get_by_role("link", name="Export CSV").click()
        assert download.value.suggested_filename.startswith("voicegate-audit-")

        # The user's own page: enrollment state and the dictation key.
        page.goto("/admin/users")
        page.get_by_role("link", name="ljspeech").click()
        page.get_by_text("Show dictation URL").click()
        assert "/client/ws/speech?key=" in page.input_value("#dictation-url")
        screenshot(page, "admin-16-user-page")

        # Sign out (a POST from the navigation); the admin pages are closed again.
        page.get_by_role("button", name="Sign out").click()
        assert page.url.endswith("/admin/login")
        page.goto("/admin/settings")
        assert "/admin/login" in page.url
        context.close()

        # A phone: the same screens, narrow.
        context, page = new_page(browser, live.url, viewport={"width": 390, "height": 844}, is_mobile=True)
        page.goto("/admin/login?next=/admin/users")
        sign_in(page, f"{live.url}/admin/users")
        screenshot(page, "admin-17-phone-users")
        page.goto("/admin/audit")
        screenshot(page, "admin-18-phone-audit")
        page.goto("/admin/settings")
        screenshot(page, "admin-19-phone-settings")
        page.goto("/admin/")
        screenshot(page, "admin-20-phone-dashboard")
        context.close()
