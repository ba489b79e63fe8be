"""Self-service and accessibility in real headless Chromium: /me, the microphone test, re-enrolling,
a lost invite, phone enrollment, and the audit log in plain words, by keyboard only where it counts.

One server (the LJ Speech reader enrolled as 'lj') and one admin account serve the whole module.
"""
from __future__ import annotations

import io
import re

import pytest
import requests
import zxingcpp
from PIL import Image
from playwright.sync_api import expect

from .browser import SCREENSHOTS, chromium, new_page, screenshot, wait_for_a_pause
from .conftest import serve_enrolled
from .test_pages import DECISION_TIMEOUT, IMPOSTOR, LJ_LOGIN, LOOP_GAP, LOOP_PRESS_WINDOW, microphone

PASSWORD = "correct horse battery"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
LJ_MORE = ["wav/ljspeech/LJ001-0006.wav", "wav/ljspeech/LJ001-0001.wav"]

# WCAG relative luminance and contrast of computed colours; the background is the first opaque one up the tree.
CONTRAST_JS = """
([el, prop]) => {
  const rgb = (s) => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  let node = el.parentElement, bg = null;
  while (node) {
    const c = rgb(getComputedStyle(node).backgroundColor);
    if (c.length === 3 || (c.length === 4 && c[3] > 0.9)) { bg = c.slice(0, 3); break; }
    node = node.parentElement;
  }
  bg = bg || [255, 255, 255];
  const fg = rgb(getComputedStyle(el)[prop]).slice(0, 3);
  const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
  return { ratio: (a + 0.05) / (b + 0.05), fg: fg.join(","), bg: bg.join(",") };
}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, engines, speech):
    """A server where 'lj' is enrolled, with an admin 'root' (no lockout to couple the tests)."""
    live, stop = serve_enrolled(tmp_path_factory.mktemp("self-service"), engines, speech, POLICY_LOCKOUT_ATTEMPTS=1000,
                                 POLICY_LOCKOUT_CLIENT_ATTEMPTS=1000, POLICY_LOCKOUT_DELAY=0)
    with live.app.app_context():
        from app.store.db import db
        from app.store.models import AdminAccount

        admin = AdminAccount(username="root")
        admin.set_password(PASSWORD)
        db.session.add(admin)
        db.session.commit()
    yield live
    stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory, speech):
    """One Chromium for the module. Its microphone loops two LJ clips with pauses, from the moment a page opens it."""
    wav = microphone(tmp_path_factory.mktemp("mic"), "two-clips", [speech.load(f) for f in LJ_MORE], gap=LOOP_GAP,
                     tail=LOOP_GAP)
    with chromium(microphone=wav, loop=True) as browser:
        yield browser


def voice_token(server, speech, file: str = LJ_LOGIN) -> str:
    """Return the session token of an accepted voice check of 'lj' over the HTTP API."""
    with open(speech.path(file), "rb") as handle:
        answer = requests.post(f"{server.url}/api/v1/verify", params={"user": "lj"}, data=handle.read(), timeout=60).json()
    assert answer["state"] == "accept", answer
    return answer["token"]


def sign_in_by_voice(page, server, speech) -> None:
    """Sign the page in as 'lj' with the token of a fresh voice check, as the login page does."""
    token = voice_token(server, speech)
    page.goto("/login")
    status = page.evaluate("""async (token) => (await fetch('/session', {method: 'POST', credentials: 'same-origin',
        headers: {'Content-Type': 'application/json', 'X-CSRFToken': document.querySelector('meta[name=csrf-token]').content},
        body: JSON.stringify({token})})).status""", token)
    assert status == 200


def decode_qr(page) -> str:
    """Return the text of the QR code on the page, read back from a screenshot of it."""
    image = Image.open(io.BytesIO(page.locator("svg.qr").screenshot()))
    texts = {code.text for code in zxingcpp.read_barcodes(image)}  # a code may be found twice in one image
    assert len(texts) == 1, texts
    return texts.pop()


def contrast(page, selector_or_handle, prop: str) -> dict:
    handle = page.locator(selector_or_handle).first.element_handle() if isinstance(selector_or_handle, str) else selector_or_handle
    return page.evaluate(CONTRAST_JS, [handle, prop])


def tab_to(page, name: str, limit: int = 40) -> list[dict]:
    """Press Tab until the focused element's text or label is ``name``; return the focus ring of each stop."""
    rings = []
    for _ in range(limit):
        page.keyboard.press("Tab")
        focused = page.evaluate_handle("document.activeElement")
        label = page.evaluate("(el) => (el.innerText || el.value || el.getAttribute('aria-label') || '').trim()", focused)
        ring = contrast(page, focused, "outlineColor")
        width = page.evaluate("(el) => parseFloat(getComputedStyle(el).outlineWidth)", focused)
        rings.append({"label": label, "width": width, **ring})
        if label == name:
            return rings
    raise AssertionError(f"{name!r} is not reachable with Tab: {[r['label'] for r in rings]}")


def test_me_sets_up_konele_by_keyboard_and_qr_and_revokes_the_key(server, speech, browser):
    context, page = new_page(browser, server.url, viewport=DESKTOP, permissions=["clipboard-read", "clipboard-write"])
    sign_in_by_voice(page, server, speech)
    page.goto("/me")
    url = page.get_by_label("Your personal dictation address").input_value()
    assert re.fullmatch(r"ws://127\.0\.0\.1:\d+/client/ws/speech\?key=\d+\.[\w-]+", url), url
    assert decode_qr(page) == url
    icon = page.locator("link[rel=icon]").get_attribute("href")
    assert requests.get(f"{server.url}{icon}", timeout=10).headers["Content-Type"].startswith("image/svg+xml")
    assert requests.get(f"{server.url}/favicon.ico", timeout=10).url.endswith(icon)
    steps = page.locator("ol.steps > li")
    assert steps.count() >= 4
    expect(steps.first).to_contain_text("Kõnele")
    screenshot(page, "me-desktop")

    # Keyboard only: Tab to Copy, press Enter; every stop on the way shows a ring of 3:1 or more.
    page.locator("body").focus()
    rings = tab_to(page, "Copy")
    assert all(r["width"] >= 2 and r["ratio"] >= 3.0 for r in rings), rings
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == url

    # Revoke: asked first, then the new address (and its QR code) is shown and the old key is dead.
    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    tab_to(page, "Get a new address")
    page.keyboard.press("Enter")
    expect(page.locator(".flash")).to_contain_text("old dictation address no longer works")
    assert asked and "stops working" in asked[0]
    new_url = page.get_by_label("Your personal dictation address").input_value()
    assert new_url != url and decode_qr(page) == new_url
    with server.app.app_context():
        from app.protocols.dictation_keys import user_for

        old_key, new_key = url.split("key=")[1], new_url.split("key=")[1]
        assert user_for(old_key, "test-secret") is None and user_for(new_key, "test-secret").name == "lj"

    # The history says what happened in words, newest first.
    history = page.locator("table.history tbody tr")
    expect(history.first).to_contain_text("Dictation key revoked")
    text = page.locator("table.history").inner_text()
    assert "Voice login" in text and "voice matched" in text and "Enrolled" in text
    assert not re.search(r"\b[a-z]+_[a-z_]+\b", text), text  # no raw codes such as clip_accepted

    # On a phone: nothing scrolls sideways, the QR code still reads back.
    page.set_viewport_size(PHONE)
    page.reload()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert decode_qr(page) == new_url
    screenshot(page, "me-phone")
    page.emulate_media(color_scheme="dark")
    screenshot(page, "me-phone-dark")
    assert contrast(page, ".topbar nav a", "color")["ratio"] >= 4.5
    context.close()


def test_the_microphone_test_decides_nothing_and_counts_nothing(server, browser):
    def audit_rows():
        with server.app.app_context():
            from sqlalchemy import func, select

            from app.store.db import db
            from app.store.models import AuditEvent, User

            return db.session.scalar(select(func.count()).select_from(AuditEvent)), User.by_name("lj").failed_attempts

    before = audit_rows()
    if True:
        context, page = new_page(browser, server.url, viewport=PHONE)
        page.goto("/mic-test")
        expect(page.locator(".read-aloud")).to_be_visible()
        page.get_by_role("button", name="Start the test").click()
        expect(page.locator("#level")).not_to_have_attribute("aria-valuenow", "0", timeout=5000)
        screenshot(page, "mic-test-listening")
        result = page.locator("#mic-result")
        expect(result).to_contain_text("Your microphone works", timeout=DECISION_TIMEOUT)
        assert float(re.search(r"heard (\d+\.\d) s of speech", result.inner_text()).group(1)) >= 1.0
        screenshot(page, "mic-test-works")
        context.close()
    # No audit row, no attempt counted.
    assert audit_rows() == before


def test_a_fresh_voice_login_lets_the_user_enroll_again(server, speech, browser):
    context, page = new_page(browser, server.url, viewport=PHONE)
    page.goto("/me")
    expect(page).to_have_url(re.compile(r"/login$"))
    sign_in_by_voice(page, server, speech)
    page.goto("/me")
    page.get_by_role("button", name="Enroll my voice again").click()
    expect(page).to_have_url(re.compile(r"/enroll/[\w-]+$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Enroll your voice, lj")
    expect(page.locator(".flash")).to_contain_text("replaces your current voiceprint")
    context.close()


def test_a_lost_invite_reaches_the_admins(server, browser):
    context, page = new_page(browser, server.url, viewport=PHONE)
    page.goto("/enroll/expired-or-lost")
    page.get_by_role("link", name="Ask for a new link").click()
    page.get_by_label("Your user name").fill("lj")
    page.get_by_role("button", name="Ask for a new link").click()
    expect(page.locator("main")).to_contain_text("the administrators now see that you asked")
    screenshot(page, "lost-invite-sent")
    # The answer for a name nobody has is the same (no one learns who has an account).
    page.goto("/lost-invite")
    page.get_by_label("Your user name").fill("nobody-here")
    page.get_by_role("button", name="Ask for a new link").click()
    expect(page.locator("main")).to_contain_text("the administrators now see that you asked")
    context.close()

    context, page = new_page(browser, server.url, viewport=DESKTOP)
    admin_sign_in(page)
    requests_card = page.locator("section", has=page.get_by_role("heading", name="Asking for a new enrollment link"))
    expect(requests_card).to_contain_text("(lj)")
    assert "nobody-here" not in requests_card.inner_text()
    screenshot(page, "dashboard-invite-request")
    context.close()


def admin_sign_in(page) -> None:
    """Sign in as root on the admin sign-in page, by keyboard."""
    page.goto("/admin/")
    expect(page.get_by_label("User name")).to_be_focused()  # autofocus: typing starts there
    page.keyboard.type("root")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/admin/$"))


def test_phone_enrollment_keeps_the_meter_status_and_progress_in_view_by_keyboard(server, browser):
    token = server.invite("phone")
    if True:
        context, page = new_page(browser, server.url, viewport=PHONE)
        page.goto(f"/enroll/{token}")
        first = page.get_by_role("button", name="Record clip 1")
        box = first.bounding_box()
        assert box["y"] + box["height"] <= PHONE["height"], box  # above the fold
        screenshot(page, "enroll-phone-start")

        page.locator("body").focus()
        rings = tab_to(page, "Record clip 1")
        assert all(r["ratio"] >= 3.0 for r in rings), rings
        page.keyboard.press("Enter")
        expect(page.locator("#clips > li").nth(0).locator(".clip-result")).to_contain_text(
            "Accepted", timeout=DECISION_TIMEOUT)
        second = page.get_by_role("button", name="Record clip 2")
        expect(second).to_be_focused()
        wait_for_a_pause(page, early=LOOP_PRESS_WINDOW)  # as a person waits to begin the next passage
        page.keyboard.press("Enter")
        expect(page.locator("#status")).to_have_class(re.compile("is-rec"))
        for selector in ("#level", "#status", "#progress", "#clips > li:nth-child(2) .passage"):
            box = page.locator(selector).bounding_box()
            assert box["y"] >= 0 and box["y"] + min(box["height"], 40) <= PHONE["height"], (selector, box)
        # It moves once the passage begins, at most LOOP_GAP - 0.8 s after the press.
        expect(page.locator("#level")).not_to_have_attribute("aria-valuenow", "0", timeout=(LOOP_GAP + 6) * 1000)
        page.screenshot(path=str(SCREENSHOTS / "enroll-phone-second-clip.png"))  # the viewport, as the person sees it
        context.close()


def test_the_audit_log_speaks_plain_words_by_keyboard_at_desktop_width(server, speech, browser):
    # A rejected voice and an unknown name, so the log has reasons to give.
    with open(speech.path(IMPOSTOR), "rb") as handle:
        audio = handle.read()
    assert requests.post(f"{server.url}/api/v1/verify", params={"user": "lj"}, data=audio, timeout=60).json()["state"] == "reject"
    # An unknown name answers like a wrong voice; the audit log says why.
    assert requests.post(f"{server.url}/api/v1/verify", params={"user": "nobody"}, data=audio, timeout=60).json()["state"] == "reject"

    context, page = new_page(browser, server.url, viewport=DESKTOP)
    admin_sign_in(page)
    assert contrast(page, ".topbar nav a", "color")["ratio"] >= 4.5
    page.goto("/admin/audit")
    table = page.locator("table.audit").inner_text()
    for words in ("Clip accepted", "Enrolled", "Voice login", "Rejected", "the voice did not match", "nobody has that user name",
                  "voice consistency", "voice match"):
        assert words in table, words
    assert not re.search(r"\b(clip_accepted|unknown_user|clip_refused|not_enough_speech)\b", table)
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", table)  # to the second
    wrap = page.locator("#audit-table")
    assert page.evaluate("(el) => el.scrollWidth <= el.clientWidth", wrap.element_handle())  # the Client column fits
    links = page.locator("main a:not(.button)")
    for index in range(links.count()):
        ratio = contrast(page, links.nth(index).element_handle(), "color")
        assert ratio["ratio"] >= 4.5 and ratio["fg"] not in ("0,0,238", "85,26,139"), ratio
    screenshot(page, "audit-desktop")

    # Keyboard only: Tab to the Kind filter, pick "Voice login" with the arrow keys, Tab to Filter and press Enter.
    page.locator("body").focus()
    rings = tab_to(page, "Filter")
    assert all(r["ratio"] >= 3.0 for r in rings), rings
    page.locator("#f-kind").focus()
    while page.locator("#f-kind").input_value() != "verify":
        page.keyboard.press("ArrowDown")
    tab_to(page, "Filter")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"kind=verify"))
    kinds = page.locator("table.audit td[data-label=What]").all_inner_texts()
    assert kinds and set(kinds) == {"Voice login"}
    page.emulate_media(color_scheme="dark")
    screenshot(page, "audit-desktop-dark")
    assert contrast(page, ".topbar nav a", "color")["ratio"] >= 4.5

    # The settings reset asks first.
    page.goto("/admin/settings")
    page.get_by_role("link", name="Reset every setting to its default…").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Reset every setting to its default?")
    expect(page.get_by_role("link", name="Cancel")).to_be_focused()
    screenshot(page, "settings-reset-confirm-dark")
    context.close()
