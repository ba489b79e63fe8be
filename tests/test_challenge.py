"""The spoken challenge and replay refusal, against a real server with real people saying digits.

A speaker of ../shared/data/digits enrolls from three clips of "0 1 2 ... 9" (repetitions 0-2
of each digit); logins say the challenge's digits from repetitions 3 and 4, never enrolled.
"""
from __future__ import annotations

import json
import os
import sqlite3
import wave
from pathlib import Path

import numpy as np
import pytest
import requests

from clients import voicegate as client
from app.gate.challenge import spoken_digits
from bench.data import wav_bytes

from .conftest import ROOT, make_app, serve

DIGITS = Path(os.environ.get("VOICEGATE_DIGITS", ROOT.parent / "shared" / "data" / "digits"))
# The impostor is the speaker furthest from jackson (digit strings score 0.06-0.22 against him);
# theo and lucas reach 0.45 on some strings, above the 0.40 threshold (docs/threshold.md).
SPEAKER, OTHER = "fsdd-jackson", "fsdd-george"
QUIET = {"echo": lambda _line: None}
# The enrollment clips hold about 5 s of speech each, less than the 15 s the default asks for.
POLICY = {"POLICY_CHALLENGE": "digits", "POLICY_REPLAY_SECONDS": 3600, "POLICY_ENROLL_MIN_CLIP_SPEECH": 2.0,
          "POLICY_ENROLL_MIN_TOTAL_SPEECH": 6.0, "POLICY_LOCKOUT_DELAY": 0, "TRUSTED_PROXIES": ["127.0.0.1"]}


def digit(speaker: str, value: str, repetition: int) -> np.ndarray:
    with wave.open(str(DIGITS / "wav" / speaker / f"{value}_{repetition}.wav")) as handle:
        return np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2").astype(np.float32) / 32768


def saying(speaker: str, digits: str, repetitions=(3, 4)) -> np.ndarray:
    """Return ``speaker`` saying ``digits`` one by one, with the pauses of someone reading them."""
    pause = np.zeros(int(16000 * 0.35), dtype=np.float32)
    parts = [pause]
    for index, value in enumerate(digits):
        parts += [digit(speaker, value, repetitions[index % len(repetitions)]), pause]
    return np.concatenate(parts)


def wav_file(folder: Path, name: str, audio: np.ndarray) -> Path:
    path = folder / f"{name}.wav"
    path.write_bytes(wav_bytes(audio))
    return path


def other_digits(digits: str) -> str:
    return "".join(str((int(d) + 3) % 10) for d in digits)


@pytest.fixture(scope="module")
def gate(tmp_path_factory, engines):
    """A server with the challenge and the replay memory on, where the digits speaker enrolled."""
    if not (DIGITS / "digits.tsv").is_file():
        pytest.fail(f"the digits set is not at {DIGITS}; set VOICEGATE_DIGITS")
    folder = tmp_path_factory.mktemp("challenge")
    live, stop = serve(make_app(folder, engines, **POLICY))
    clips = [wav_file(folder, f"enroll{r}", saying(SPEAKER, "0123456789", (r,))) for r in (0, 1, 2)]
    enrolled = client.run("enroll", clips, live.ws_url, invite=live.invite("jackson"), **QUIET)
    assert enrolled["state"] == "enrolled", enrolled
    yield live, folder, clips
    stop()


def test_digits_are_read_from_words_and_figures():
    assert spoken_digits("Four seven, 1 9 oh two.") == "471902"
    assert spoken_digits("4-7-1-9-0-2") == spoken_digits("471902") == "471902"


# Whisper tiny.en misreads about one 6-digit answer in twenty of these speakers (bench/challenge.py
# measures it), so a genuine login may take a second try, as it may for a person.
TRIES = 3


def test_the_right_digits_in_the_right_voice_are_accepted_over_the_websocket(gate):
    live, folder, _ = gate
    for _ in range(TRIES):
        shown, replies = [], []

        def answer(text: str) -> list[Path]:
            shown.append(text)
            return [wav_file(folder, "right", saying(SPEAKER, text.replace(" ", "")))]

        reply = client.run("verify", [folder / "enroll0.wav"], live.ws_url, user="jackson", respond=answer,
                           echo=replies.append)
        # The challenge comes before ready, as the protocol says: six digits.
        types = [json.loads(r)["type"] for r in replies]
        assert types[:2] == ["challenge", "ready"] and len(shown[0].split()) == 6
        assert all(part.isdigit() for part in shown[0].split())
        if reply["state"] != "challenge_failed":
            break
    assert reply["state"] == "accept" and reply["token"], reply


def test_wrong_digits_in_the_right_voice_fail_the_challenge(gate):
    live, folder, _ = gate
    reply = client.run("verify", [folder / "enroll0.wav"], live.ws_url, user="jackson", **QUIET,
                       respond=lambda text: [wav_file(folder, "wrong", saying(SPEAKER, other_digits(text.replace(" ", ""))))])
    assert reply["state"] == "challenge_failed" and "token" not in reply, reply


def test_the_right_digits_in_another_voice_are_rejected(gate):
    live, folder, _ = gate
    reply = client.run("verify", [folder / "enroll0.wav"], live.ws_url, user="jackson", **QUIET,
                       respond=lambda text: [wav_file(folder, "other", saying(OTHER, text.replace(" ", "")))])
    assert reply["state"] == "reject" and "token" not in reply, reply


def _challenge(live, address: str, user: str = "jackson") -> dict:
    response = requests.post(f"{live.url}/api/v1/challenge", data={"user": user}, timeout=30,
                             headers={"X-Forwarded-For": address})
    assert response.status_code == 200, response.text
    return response.json()


def _verify(live, address: str, challenge_id: str | None, audio: np.ndarray, user: str = "jackson"):
    fields = {"user": user, **({"challenge": challenge_id} if challenge_id else {})}
    return requests.post(f"{live.url}/api/v1/verify", data=fields, files={"audio": ("a.wav", wav_bytes(audio))},
                         headers={"X-Forwarded-For": address}, timeout=60)


def test_over_http_a_challenge_is_used_once_and_an_earlier_answer_is_refused(gate):
    live, _, _ = gate
    for _ in range(TRIES):
        first = _challenge(live, "10.20.0.1")
        assert first["expires_in"] == 60 and len(first["text"].split()) == 6
        answer = saying(SPEAKER, first["text"].replace(" ", ""))
        accepted = _verify(live, "10.20.0.1", first["challenge"], answer)
        if accepted.json()["state"] != "challenge_failed":
            break
    assert accepted.json()["state"] == "accept" and accepted.json()["token"], accepted.text
    again = _verify(live, "10.20.0.1", first["challenge"], answer)
    assert again.status_code == 409 and again.json()["error"]["code"] == "bad_challenge"
    # A recording of that accepted login, played for a new challenge: refused.
    second = _challenge(live, "10.20.0.1")
    replayed = _verify(live, "10.20.0.1", second["challenge"], answer).json()
    assert replayed["state"] in ("replay", "challenge_failed") and "token" not in replayed, replayed
    missing = _verify(live, "10.20.0.1", None, answer)
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "challenge_required"
    # A challenge is bound to its client and user.
    elsewhere = _challenge(live, "10.20.0.2")
    assert _verify(live, "10.20.0.3", elsewhere["challenge"], answer).status_code == 409


def test_an_expired_challenge_is_answered_challenge_expired(gate):
    live, folder, _ = gate
    issued = _challenge(live, "10.21.0.1")
    with sqlite3.connect(folder / "voicegate.db") as connection:
        connection.execute("UPDATE login_challenges SET expires_at = '2000-01-01 00:00:00' WHERE id = ?",
                           (issued["challenge"],))
    late = _verify(live, "10.21.0.1", issued["challenge"], saying(SPEAKER, issued["text"].replace(" ", "")))
    assert late.json()["state"] == "challenge_expired" and "token" not in late.json()


def test_an_enrollment_clip_played_back_answers_replay(gate):
    live, _, clips = gate
    issued = _challenge(live, "10.22.0.1")
    with wave.open(str(clips[1])) as handle:
        audio = np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2").astype(np.float32) / 32768
    replayed = _verify(live, "10.22.0.1", issued["challenge"], audio).json()
    assert replayed["state"] == "replay" and "token" not in replayed, replayed


def test_the_login_page_shows_the_digits_large(gate):
    from playwright.sync_api import expect

    from .browser import chromium, new_page, screenshot

    live, folder, _ = gate
    quiet = wav_file(folder, "quiet", np.zeros(16000 * 3, dtype=np.float32))
    with chromium(microphone=quiet) as browser:
        _, page = new_page(browser, live.url)
        page.goto("/login")
        page.get_by_label("Your user name").fill("jackson")
        page.get_by_role("button", name="Press to talk").click()
        digits = page.locator("#challenge .digits")
        expect(digits).to_have_text(__import__("re").compile(r"^\d( \d){5}$"), timeout=30_000)
        size = float(digits.evaluate("e => getComputedStyle(e).fontSize").removesuffix("px"))
        assert size >= 32, size
        screenshot(page, "login-challenge")
