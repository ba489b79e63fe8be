"""The browser pages in real headless Chromium, with dev-set speech as the microphone.

Chromium's fake capture device plays a WAV from the moment a page opens the microphone
(again from the start each time it is opened). Clips are joined with silences into one
WAV under tmp_path, and the page is driven as a person would: press Record, speak, pause.
"""
from __future__ import annotations

import re
import wave
from pathlib import Path

import jiwer
import numpy as np
import pytest
from playwright.sync_api import expect
from whisper_normalizer.english import EnglishTextNormalizer


from .browser import DECISION_TIMEOUT, chromium, new_page, screenshot, stall_audio, wait_for_a_pause
from .conftest import LJ_ENROLL, pcm, serve_enrolled

normalise = EnglishTextNormalizer()
LJ_LOGIN = "wav/ljspeech/LJ001-0004.wav"
LJ_DICTATE = "wav/ljspeech/LJ001-0006.wav"
IMPOSTOR = "wav/vctk-p287/p287_005.wav"
IMPOSTOR_DICTATE = ["wav/vctk-p287/p287_003.wav", "wav/librivox-sas01/sense_and_sensibility_01_austen_64kb-0870.wav"]
# What the browser itself says when the page asks for the microphone.
GET_USER_MEDIA = "navigator.mediaDevices.getUserMedia({audio: true}).then(() => 'granted', (e) => e.name)"
# Seconds of silence between clips a looping microphone plays: the page stops 1.5 s into one, and
# the test presses Record at most 2 s before the next speech. The pause leaves the server 7.5 s to
# answer (over 4 s when the suite keeps both cores busy), so that the next clip is the one recorded:
# a press that misses the pause waits for the clip after it (with 4 s pauses most did, 30 s a run).
LOOP_GAP = 11.0
# How long Record may still be pressed after the first 0.8 s of a pause (wait_for_a_pause's ``early``).
LOOP_PRESS_WINDOW = LOOP_GAP - 0.8 - 2.0


def microphone(tmp_path: Path, name: str, clips: list[np.ndarray], gap: float = 5.0, lead: float = 0.5,
               tail: float = 4.0) -> Path:
    """Write ``clips`` (16 kHz float32) joined by ``gap`` seconds of silence as one WAV; return its path."""
    silence = lambda seconds: np.zeros(int(16000 * seconds), dtype=np.float32)  # noqa: E731
    parts = [silence(lead)]
    for clip in clips:
        parts += [clip, silence(gap)]
    parts[-1] = silence(tail)
    path = tmp_path / f"{name}.wav"
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(pcm(np.concatenate(parts)))
    return path


def _transcript(speech, file: str) -> str:
    return next(u.transcript for u in speech.utterances if u.file == file)


@pytest.fixture(scope="module")
def server(tmp_path_factory, engines, speech):
    """A server where the LJ Speech reader is enrolled as 'lj' (no lockout to couple the tests)."""
    live, stop = serve_enrolled(tmp_path_factory.mktemp("pages"), engines, speech, POLICY_LOCKOUT_ATTEMPTS=1000,
                                 POLICY_LOCKOUT_CLIENT_ATTEMPTS=1000, POLICY_LOCKOUT_DELAY=0)
    yield live
    stop()


def _log_in(page, name: str | None):
    """Open the login page, type ``name`` and press to talk; the page stops by itself at the pause."""
    page.goto("/login")
    if name:
        page.get_by_label("Your user name").fill(name)
    page.get_by_role("button", name="Press to talk").click()


@pytest.fixture(scope="module")
def signed_in(server, speech, tmp_path_factory):
    """Cookies of a browser where 'lj' logged in by voice."""
    wav = microphone(tmp_path_factory.mktemp("mic"), "login", [speech.load(LJ_LOGIN)])
    with chromium(microphone=wav) as browser:
        context, page = new_page(browser, server.url)
        _log_in(page, "lj")
        page.wait_for_url("**/me", timeout=DECISION_TIMEOUT)
        state = context.storage_state()
        context.close()
    return state


# --------------------------------------------------------------------------- enrollment

def test_a_speaker_enrolls_through_the_invite_page(live, speech, tmp_path):
    token = live.invite("lj")
    # Two seconds of speech, then a pause: the page stops by itself and says what to do.
    too_short = speech.load(LJ_LOGIN)[: int(16000 * 2.0)]
    with chromium(microphone=microphone(tmp_path, "too-short", [too_short])) as browser:
        _, page = new_page(browser, live.url)
        page.goto(f"/enroll/{token}")
        expect(page.get_by_role("heading", level=1)).to_have_text("Enroll your voice, lj")
        clips = page.locator("#clips > li")
        expect(clips).to_have_count(3)
        passages = clips.locator(".passage").all_text_contents()
        assert len(set(passages)) == 3 and all(len(p.split()) >= 15 for p in passages)
        expect(clips.nth(1).get_by_role("button")).to_be_disabled()
        screenshot(page, "enroll-1-start")

        clips.nth(0).get_by_role("button", name="Record clip 1").click()
        expect(clips.nth(0).get_by_role("button", name="Stop")).to_be_visible()
        expect(page.locator("#level")).not_to_have_attribute("aria-valuenow", "0", timeout=5000)
        screenshot(page, "enroll-2-recording")
        result = clips.nth(0).locator(".clip-result")
        expect(result).to_contain_text("Too little speech", timeout=DECISION_TIMEOUT)
        expect(result).to_contain_text("Read the whole passage")
        expect(clips.nth(0).get_by_role("button")).to_have_text("Record again")
        screenshot(page, "enroll-3-refused")

    # The passages, looped with pauses between them: like a person, the test presses Record in a
    # pause and lets the page stop at the next one, however long the machine took to answer.
    wav = microphone(tmp_path, "enroll", [speech.load(f) for f in LJ_ENROLL], gap=LOOP_GAP, tail=LOOP_GAP)
    with chromium(microphone=wav, loop=True) as browser:
        _, page = new_page(browser, live.url)
        page.goto(f"/enroll/{token}")
        clips = page.locator("#clips > li")
        for index in range(3):
            if index:
                wait_for_a_pause(page, early=LOOP_PRESS_WINDOW)
            clips.nth(index).get_by_role("button").click()
            expect(clips.nth(index).locator(".clip-result")).to_contain_text("Accepted", timeout=DECISION_TIMEOUT)
            if index == 0:
                expect(page.locator("#progress")).to_have_attribute("value", "33")
                screenshot(page, "enroll-4-first-accepted")

        done = page.locator("#done")
        expect(done).to_be_visible(timeout=DECISION_TIMEOUT)
        expect(done).to_contain_text("Your voice is enrolled")
        expect(page.locator("#progress")).to_have_attribute("value", "100")
        expect(done.get_by_role("link", name="Log in with your voice")).to_have_attribute("href", "/login?user=lj")
        screenshot(page, "enroll-5-done")

    with live.app.app_context():
        from app.store.models import User
        assert User.by_name("lj").voiceprint.clip_count == 3
    # The invite is used up: opening the link again says so.
    with chromium() as browser:
        _, page = new_page(browser, live.url)
        response = page.goto(f"/enroll/{token}")
        assert response.status == 404
        expect(page.get_by_role("heading", level=1)).to_have_text("This enrollment link cannot be used")


def test_a_clip_whose_audio_stalled_is_called_broken_not_silent(live, speech, tmp_path):
    """A busy machine, not the speaker: 1.5 s of the microphone's frames never reach the page."""
    token = live.invite("gappy")
    with chromium(microphone=microphone(tmp_path, "stalled", [speech.load(LJ_ENROLL[0])])) as browser:
        _, page = new_page(browser, live.url)
        page.goto(f"/enroll/{token}")
        clip = page.locator("#clips > li").nth(0)
        clip.get_by_role("button", name="Record clip 1").click()
        expect(page.locator("#level")).not_to_have_attribute("aria-valuenow", "0", timeout=10_000)
        stall_audio(page, 1.5)
        result = clip.locator(".clip-result")
        expect(result).to_contain_text("The recording arrived broken", timeout=DECISION_TIMEOUT)
        expect(result).to_contain_text("not because of your voice")
        assert "no speech" not in result.inner_text()
        lost = float(re.search(r"broken: (\d+\.\d) s of audio was lost", result.inner_text()).group(1))
        assert 1.0 <= lost <= 3.0, lost
        expect(clip.get_by_role("button")).to_have_text("Record again")
        screenshot(page, "enroll-broken-audio")


def test_an_invalid_invite_link_says_so(live):
    with chromium() as browser:
        _, page = new_page(browser, live.url, viewport={"width": 390, "height": 844})
        response = page.goto("/enroll/not-a-real-invite")
        assert response.status == 404
        expect(page.get_by_role("heading", level=1)).to_have_text("This enrollment link cannot be used")
        expect(page.locator("main")).to_contain_text("Ask your administrator for a new enrollment link")
        expect(page.get_by_role("button")).to_have_count(0)
        screenshot(page, "enroll-invalid-link-phone")


# --------------------------------------------------------------------------- voice login

def test_the_enrolled_speaker_logs_in_and_signs_out(server, speech, tmp_path):
    wav = microphone(tmp_path, "login", [speech.load(LJ_LOGIN)])
    with chromium(microphone=wav) as browser:
        _, page = new_page(browser, server.url)
        page.goto("/")
        screenshot(page, "home")
        _log_in(page, "lj")
        expect(page.get_by_role("button", name="Stop")).to_be_visible()
        screenshot(page, "login-1-listening")
        decision = page.locator("#decision")
        expect(decision).to_contain_text("Accepted: welcome, lj", timeout=DECISION_TIMEOUT)
        score = float(re.search(r"score (\d\.\d\d)", decision.inner_text()).group(1))
        assert score >= 0.40
        screenshot(page, "login-2-accepted")

        page.wait_for_url("**/me", timeout=10_000)
        expect(page.get_by_role("heading", level=1)).to_have_text("Signed in as lj")
        expect(page.get_by_role("navigation")).to_contain_text("lj")
        url = page.get_by_label("Address").input_value()
        assert re.fullmatch(r"ws://127\.0\.0\.1:\d+/client/ws/speech\?key=\d+\.[\w-]+", url), url
        screenshot(page, "me-signed-in")

        page.get_by_role("button", name="Sign out").click()
        expect(page.locator(".flash")).to_have_text("You are signed out.")
        page.goto("/me")
        expect(page).to_have_url(re.compile(r"/login$"))


def test_on_a_phone_with_the_keyboard_and_no_name_the_speaker_is_recognised(server, speech, tmp_path):
    wav = microphone(tmp_path, "identify", [speech.load(LJ_LOGIN)])
    with chromium(microphone=wav) as browser:
        _, page = new_page(browser, server.url, viewport={"width": 390, "height": 844})
        page.goto("/login")
        # Tab to the button and press Enter: no mouse needed.
        page.get_by_label("Your user name").focus()
        page.keyboard.press("Tab")
        expect(page.get_by_role("button", name="Press to talk")).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.get_by_role("button", name="Stop")).to_be_focused()
        screenshot(page, "login-phone-listening")
        expect(page.locator("#decision")).to_contain_text("Accepted: welcome, lj", timeout=DECISION_TIMEOUT)
        page.wait_for_url("**/me", timeout=10_000)
        screenshot(page, "me-phone")


def test_another_voice_is_rejected_without_a_score_and_not_signed_in(server, speech, tmp_path):
    wav = microphone(tmp_path, "impostor", [speech.load(IMPOSTOR)])
    with chromium(microphone=wav) as browser:
        _, page = new_page(browser, server.url)
        _log_in(page, "lj")
        # Stopped by the button this time, while the impostor is still talking.
        expect(page.get_by_role("button", name="Stop")).to_be_visible()
        page.wait_for_timeout(4000)  # the impostor talks for 4 s of real-time audio, then presses Stop
        page.get_by_role("button", name="Stop").click()
        decision = page.locator("#decision")
        expect(decision).to_contain_text("Not recognised", timeout=DECISION_TIMEOUT)
        expect(decision).to_contain_text("You are not signed in")
        assert "score" not in decision.inner_text()  # a stranger learns nothing to tune a voice by
        screenshot(page, "login-3-rejected")
        page.goto("/me")
        expect(page).to_have_url(re.compile(r"/login$"))


def test_a_forged_token_does_not_sign_anyone_in(server):
    with chromium() as browser:
        _, page = new_page(browser, server.url)
        page.goto("/login")
        status = page.evaluate("""async () => (await fetch('/session', {method: 'POST',
            headers: {'Content-Type': 'application/json',
                      'X-CSRFToken': document.querySelector('meta[name=csrf-token]').content},
            body: JSON.stringify({token: 'eyJ1c2VyIjoibGoifQ.forged.sig'})})).status""")
        assert status == 401
        without_csrf = page.evaluate("""async () => (await fetch('/session', {method: 'POST',
            headers: {'Content-Type': 'application/json'}, body: '{}'})).status""")
        assert without_csrf == 400
        page.goto("/me")
        expect(page).to_have_url(re.compile(r"/login$"))


# --------------------------------------------------------------------------- microphone problems

def test_a_denied_microphone_is_explained(server):
    # No fake-UI flag and no permission granted: headless Chromium denies the request.
    with chromium(extra_args=["--use-fake-device-for-media-stream"]) as browser:
        _, page = new_page(browser, server.url, permissions=[])
        _log_in(page, "lj")
        problem = page.get_by_role("alert")
        expect(problem).to_contain_text("Microphone access is blocked")
        expect(page.get_by_role("button", name="Press to talk")).to_be_enabled()
        screenshot(page, "login-mic-denied")
        assert page.evaluate(GET_USER_MEDIA) == "NotAllowedError"


def test_a_missing_microphone_is_explained(server, signed_in):
    with chromium() as browser:
        _, page = new_page(browser, server.url, storage_state=signed_in)
        page.goto("/dictate")
        page.get_by_role("button", name="Start dictating").click()
        expect(page.get_by_role("alert")).to_contain_text("No microphone was found")
        screenshot(page, "dictate-no-microphone")
        assert page.evaluate(GET_USER_MEDIA) == "NotFoundError"


# --------------------------------------------------------------------------- dictation

def test_dictation_requires_a_signed_in_user(server):
    with chromium() as browser:
        _, page = new_page(browser, server.url)
        page.goto("/dictate")
        expect(page).to_have_url(re.compile(r"/login$"))
        expect(page.locator(".flash")).to_have_text("Log in with your voice to dictate.")


def test_the_signed_in_speaker_dictates_and_copies_the_text(server, speech, signed_in, tmp_path):
    wav = microphone(tmp_path, "dictate", [speech.load(LJ_DICTATE)], tail=3.0)
    with chromium(microphone=wav) as browser:
        _, page = new_page(browser, server.url, storage_state=signed_in,
                           permissions=["microphone", "clipboard-read", "clipboard-write"])
        page.goto("/dictate")
        # Remember every partial the page shows, to check they appeared while speaking.
        page.evaluate("""() => { window.partials = [];
            new MutationObserver(() => { const t = document.getElementById('partial').textContent;
                if (t) window.partials.push(t); }).observe(document.getElementById('partial'),
                {childList: true, characterData: true, subtree: true}); }""")
        page.get_by_role("button", name="Start dictating").click()
        expect(page.get_by_role("button", name="Stop")).to_be_visible()
        # A partial may be on screen only briefly before its final on a loaded machine: the observer sees it.
        page.wait_for_function("window.partials.length > 0", timeout=DECISION_TIMEOUT)
        screenshot(page, "dictate-1-partial")
        expect(page.locator("#utterances li.is-ok")).to_have_count(1, timeout=DECISION_TIMEOUT)
        page.get_by_role("button", name="Stop").click()
        expect(page.locator("#summary")).to_contain_text("1 written, 0 not verified", timeout=DECISION_TIMEOUT)
        text = page.locator("#transcript").input_value()
        wer = jiwer.wer(normalise(_transcript(speech, LJ_DICTATE)), normalise(text))
        print(f"\npartials {page.evaluate('window.partials')}\ntext {text!r} WER {wer:.1%}")
        assert wer <= 0.2
        assert page.evaluate("window.partials.length") >= 1
        page.get_by_role("button", name="Copy text").click()
        expect(page.locator("#status")).to_have_text("Copied the text to the clipboard.")
        assert page.evaluate("navigator.clipboard.readText()") == text
        screenshot(page, "dictate-2-done")


def test_an_impostor_dictating_gets_no_text(server, speech, signed_in, tmp_path):
    wav = microphone(tmp_path, "dictate-impostor", [speech.load(f) for f in IMPOSTOR_DICTATE], gap=1.5, tail=3.0)
    with chromium(microphone=wav) as browser:
        _, page = new_page(browser, server.url, storage_state=signed_in)
        page.goto("/dictate")
        page.get_by_role("button", name="Start dictating").click()
        rejected = page.locator("#utterances li.is-bad")
        expect(rejected.first).to_have_text(re.compile(r"^Not verified — nothing was transcribed \(score -?\d\.\d\d\)\.$"),
                                            timeout=DECISION_TIMEOUT)
        # Every file the impostor says is turned away before the page is stopped.
        expect(rejected.nth(len(IMPOSTOR_DICTATE) - 1)).to_be_visible(timeout=DECISION_TIMEOUT)
        page.get_by_role("button", name="Stop").click()
        expect(page.locator("#summary")).to_contain_text("0 written", timeout=DECISION_TIMEOUT)
        assert page.locator("#transcript").input_value() == ""
        assert page.locator("#utterances li.is-ok").count() == 0
        screenshot(page, "dictate-3-impostor")


def test_a_dropped_connection_reconnects_and_nothing_said_is_lost(server, speech, signed_in, tmp_path):
    # The network drops the page's connection in the pause after the first utterance (whether or not
    # the server has answered it yet: on a loaded machine it may not have) and refuses every reconnect
    # until the second utterance is under way. The page keeps the audio the server had not finished
    # and what is said meanwhile, and sends it on the new connection: both are written, once.
    wav = microphone(tmp_path, "dictate-drop", [speech.load(LJ_LOGIN), speech.load(LJ_DICTATE)], gap=6.0, tail=3.0)
    connections, refused, network = [], [], {"up": True}

    def route(ws):
        if not network["up"]:
            refused.append(ws)
            ws.close()
            return
        ws.connect_to_server()
        connections.append(ws)

    with chromium(microphone=wav) as browser:
        _, page = new_page(browser, server.url, storage_state=signed_in)
        page.route_web_socket(re.compile(r"/ws/voice$"), route)
        page.goto("/dictate")
        page.get_by_role("button", name="Start dictating").click()
        wait_for_a_pause(page, quiet=1.0, early=3.0, timeout=60)
        network["up"] = False
        dropped_at = page.evaluate("performance.now()")
        connections[0].close(code=1011, reason="gone")
        expect(page.get_by_role("alert")).to_contain_text("The connection to the server was lost")
        expect(page.get_by_role("alert")).to_contain_text("what you say is kept")
        screenshot(page, "dictate-4-reconnecting")
        # The second utterance has been speaking for a second and a half while the network is down.
        page.wait_for_function("(t) => window.__lastVoiced !== null && window.__lastVoiced > t", arg=dropped_at + 1500,
                               polling=50, timeout=60_000)
        network["up"] = True
        expect(page.locator("#status")).to_have_text("Reconnected. Listening…", timeout=30_000)
        expect(page.get_by_role("alert")).to_be_hidden()
        expect(page.locator("#utterances li.is-ok")).to_have_count(2, timeout=DECISION_TIMEOUT)
        page.get_by_role("button", name="Stop").click()
        expect(page.locator("#summary")).to_contain_text("written", timeout=DECISION_TIMEOUT)
        assert len(connections) == 2 and refused, (len(connections), len(refused))
        assert page.locator("#utterances li.is-ok").count() == 2  # neither utterance written twice
        text = page.locator("#transcript").input_value()
        wer = jiwer.wer(normalise(_transcript(speech, LJ_LOGIN) + " " + _transcript(speech, LJ_DICTATE)), normalise(text))
        assert wer <= 0.25, text


# --------------------------------------------------------------------------- session cookie

def test_signing_out_keeps_an_admin_signed_in(app):
    from datetime import timedelta

    from app.protocols.context import same_origin
    from app.store.models import AdminAccount, AuthSession, User
    from app.store.db import db

    with app.app_context():
        user, admin = User(name="lj"), AdminAccount(username="root", password_hash="x")
        db.session.add_all([user, admin])
        db.session.commit()
        tokens = {"admin_session": AuthSession.start(timedelta(hours=1), admin_id=admin.id),
                  "user_session": AuthSession.start(timedelta(hours=1), user_id=user.id)}
        db.session.commit()
    client_ = app.test_client()
    with client_.session_transaction() as session:
        session.update(tokens)
    page = client_.get("/me").get_data(as_text=True)
    assert "Signed in as lj" in page
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert client_.post("/logout", data={}).status_code == 400  # no CSRF token: refused
    assert client_.post("/logout", data={"csrf_token": csrf}).status_code == 302
    with client_.session_transaction() as session:
        assert "user_session" not in session and session["admin_session"] == tokens["admin_session"]
    assert client_.get("/admin/").status_code == 200
    # A WebSocket handshake from another site's page carries the cookie, but may not use it.
    with app.test_request_context("/ws/voice", headers={"Origin": "http://evil.example", "Host": "localhost"}):
        assert not same_origin()
    with app.test_request_context("/ws/voice", headers={"Origin": "http://localhost", "Host": "localhost"}):
        assert same_origin()
