"""Dictation in another language than English: multilingual Whisper base, a Czech speaker, every door that takes a language.

Real models (base loaded beside the session's tiny.en, sharing its pool), real Czech speech
from speech-more, a real server on 127.0.0.1. The language is detected when none is asked
for, and each surface says which it wrote.
"""
from __future__ import annotations

import dataclasses
import json

import jiwer
import openai
import pytest
import requests
from whisper_normalizer.basic import BasicTextNormalizer

from .conftest import MODELS_DIR, serve_enrolled

normalise = BasicTextNormalizer()
# The big fish's Czech voice (not one of the shipped AS-norm cohort's speakers, whose own voices
# could never verify: bench/results/calibration.json): enrolled on five of his lines, dictating a sixth.
ENROLL = [f"wav/fillets-cs-big/{name}.wav" for name in ("pyr-v-vsim", "map-v-mapa", "pra-v-ukladani", "zx-v-osmibit",
                                                         "let-v-budrada")]
OWNER = "wav/fillets-cs-big/lod-v-golf.wav"
OTHER = "wav/fillets-cs-small/mot-m-info.wav"  # the small fish: another Czech voice
# An Italian voice on a telephone line (no transcripts: its language is what is checked).
ITALIAN_ENROLL = [f"wav/asterisk-it-menardi/{name}.wav" for name in
                  ("confbridge-mute-extended", "demo-enterkeywords", "agent-alreadyon", "vm-rec-busy")]
ITALIAN = "wav/asterisk-it-menardi/pbx-invalidpark.wav"


@pytest.fixture(scope="module")
def server(tmp_path_factory, engines, more):
    """A server running multilingual Whisper base, where the Czech big fish is enrolled as 'karel'.

    His lines are short (3 to 6 s): enrollment takes clips of 2 s of speech, 12 s in all.
    """
    from app.engines.runtime import load_transcriber

    base = dataclasses.replace(engines, transcriber=load_transcriber(MODELS_DIR, "base", workers=2), whisper_name="base")
    live, stop = serve_enrolled(tmp_path_factory.mktemp("languages"), base, more, name="karel", files=ENROLL,
                                WHISPER_MODEL="base", POLICY_ENROLL_MIN_CLIP_SPEECH=2.0, POLICY_ENROLL_MIN_TOTAL_SPEECH=12.0)
    from clients import voicegate as client

    enrolled = client.run("enroll", [more.path(f) for f in ITALIAN_ENROLL], live.ws_url, invite=live.invite("paola"),
                          echo=lambda _: None)
    assert enrolled["state"] == "enrolled", enrolled
    yield live
    stop()


def _key(server, name: str = "karel") -> str:
    result = server.app.test_cli_runner().invoke(args=["users", "key", name, "--base-url", server.url])
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1].split("key=")[1]


def _transcript(speech, file: str) -> str:
    return next(u.transcript for u in speech.utterances if u.file == file)


def _cer(more, file: str, text: str) -> float:
    """Return the character error rate: base's Czech is near in sound and spelling but often not word for word
    (bench/languages.py measures the word error rate against plain faster-whisper on every file)."""
    return jiwer.cer(normalise(_transcript(more, file)), normalise(text))


def _client(server, name: str = "karel") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=_key(server, name), max_retries=0, timeout=300)


def test_czech_is_written_for_its_speaker_through_the_openai_sdk(server, more):
    client = _client(server)
    with open(more.path(OWNER), "rb") as file:
        answer = client.audio.transcriptions.create(model="whisper-1", file=file, response_format="verbose_json",
                                                    language="cs")
    print(f"\n{answer.language}, CER {_cer(more, OWNER, answer.text):.1%}: {answer.text}")
    assert answer.language == "cs" and _cer(more, OWNER, answer.text) <= 0.4
    assert "base" in [model.id for model in client.models.list()]
    # Another Czech voice with his key: no words of hers, in any language.
    with open(more.path(OTHER), "rb") as file:
        other = client.audio.transcriptions.create(model="whisper-1", file=file, language="cs")
    assert other.text == ""


def test_italian_is_detected_when_no_language_is_given(server, more):
    with open(more.path(ITALIAN), "rb") as file:
        answer = _client(server, "paola").audio.transcriptions.create(model="whisper-1", file=file,
                                                                      response_format="verbose_json")
    print(f"\n{answer.language}: {answer.text}")
    assert answer.language == "it" and len(answer.text.split()) >= 3


def test_the_languages_spoken_here_keep_czech_from_being_written_as_polish(server, more):
    # Base alone hears the big fish's golf line as Polish (0.88 against Czech's 0.09, on the whole
    # file) and spells it so; told by the admin that the household speaks Czech, Dutch, Italian and
    # English, the service writes it in Czech with no language asked for.
    from clients import voicegate as client

    from .test_admin import add_admin, post, sign_in

    add_admin(server.app)
    admin = server.app.test_client()
    sign_in(admin)
    assert post(admin, "/admin/settings", languages="cs, nl, it, en").status_code == 302
    replies = []
    try:
        result = client.run("dictate", [more.path(OWNER)], server.ws_url, user="karel", echo=replies.append)
    finally:
        post(admin, "/admin/settings", languages="")
    finals = [reply for reply in map(json.loads, replies) if reply.get("type") == "final" and reply.get("text")]
    text = " ".join(final["text"] for final in finals)
    print(f"\n{result['language']}, CER {_cer(more, OWNER, text):.1%}: {text}")
    assert result["language"] == "cs" and {final["language"] for final in finals} == {"cs"}
    assert _cer(more, OWNER, text) <= 0.4


def test_konele_lang_is_taken_and_returned(server, more):
    url = f"{server.url}/client/dynamic/recognize?key={_key(server)}&lang=cs-CZ"
    answer = requests.post(url, data=more.path(OWNER).read_bytes(), timeout=300).json()
    text = answer["hypotheses"][0]["utterance"]
    print(f"\n{answer['language']}, CER {_cer(more, OWNER, text):.1%}: {text}")
    assert answer["status"] == 0 and answer["language"] == "cs" and _cer(more, OWNER, text) <= 0.4
    refused = requests.post(f"{server.url}/client/dynamic/recognize?key={_key(server)}&lang=xx-XX",
                            data=more.path(OWNER).read_bytes(), timeout=60)
    assert refused.status_code == 400 and refused.json()["status"] == 2


def test_the_websocket_start_message_takes_a_language_and_finals_say_it(server, more):
    from clients import voicegate as client

    replies = []
    result = client.run("dictate", [more.path(OWNER)], server.ws_url, user="karel", echo=replies.append,
                        language="cs")
    print(f"\n{result}")
    assert result["language"] == "cs"
    bad = client.run("dictate", [more.path(OWNER)], server.ws_url, user="karel", echo=lambda _: None,
                     language="klingon")
    assert bad.get("code") == "bad_language", bad
