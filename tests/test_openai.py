"""OpenAI-compatible transcription, called by the official ``openai`` SDK, unchanged, against a real server.

The API key is the user's dictation key; only the stretches that verify as its owner's voice
are written down. Real models, real dev speech, a real server on 127.0.0.1.
"""
from __future__ import annotations

import io
import logging

import jiwer
import numpy as np
import openai
import pytest
import srt
import webvtt
from whisper_normalizer.english import EnglishTextNormalizer

from app.store.db import db
from app.store.models import AuditEvent
from app.serving.logs import install_redaction

from .conftest import serve_enrolled

normalise = EnglishTextNormalizer()
OWNER = "wav/ljspeech/LJ001-0006.wav"
IMPOSTOR = "wav/vctk-p287/p287_003.wav"
# The uploads the server takes (MAX_CONTENT_LENGTH) and the audio it decodes (MAX_AUDIO_BYTES), made small.
UPLOAD_CAP, AUDIO_CAP = 2 * 1024 * 1024, 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory, engines, speech):
    """A server where the LJ Speech reader is enrolled as 'lj', with small upload caps."""
    live, stop = serve_enrolled(tmp_path_factory.mktemp("openai"), engines, speech, MAX_CONTENT_LENGTH=UPLOAD_CAP,
                                MAX_AUDIO_BYTES=AUDIO_CAP)
    yield live
    stop()


def _key(server, name: str = "lj") -> str:
    """Return ``name``'s dictation key, read from the URL `flask users key` prints."""
    result = server.app.test_cli_runner().invoke(args=["users", "key", name, "--base-url", server.url])
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1].split("key=")[1]


def _client(server, key: str) -> openai.OpenAI:
    # No retries: a refusal must show as it is.
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=300)


def _transcript(speech, file: str) -> str:
    return next(u.transcript for u in speech.utterances if u.file == file)


def _wav(audio: np.ndarray) -> bytes:
    """Return float32 16 kHz audio as a WAV file's bytes (in memory)."""
    import wave

    out = io.BytesIO()
    with wave.open(out, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return out.getvalue()


def _text_of(fmt: str, answer) -> str:
    """Return the words of an SDK answer in ``fmt``, read back with each format's own parser."""
    if fmt in ("json", "verbose_json"):
        return answer.text
    if fmt == "text":
        return answer
    if fmt == "srt":
        return " ".join(cue.content for cue in srt.parse(answer))
    return " ".join(cue.text for cue in webvtt.from_buffer(io.StringIO(answer)))


@pytest.mark.parametrize("fmt", ["json", "text", "verbose_json", "srt", "vtt"])
def test_the_sdk_gets_the_owners_words_in_every_format(server, speech, fmt):
    client = _client(server, _key(server))
    with open(speech.path(OWNER), "rb") as file:
        answer = client.audio.transcriptions.create(model="whisper-1", file=file, response_format=fmt,
                                                    temperature=0.0, prompt="A sentence from a book.", language="en")
    text = _text_of(fmt, answer)
    wer = jiwer.wer(normalise(_transcript(speech, OWNER)), normalise(text))
    print(f"\n{fmt}: WER {wer:.1%}: {text}")
    assert wer <= 0.2
    if fmt == "verbose_json":
        assert answer.language == "en" and answer.duration == pytest.approx(speech.load(OWNER).size / 16000, abs=0.01)
        assert answer.segments and all(0 <= s.start < s.end <= answer.duration + 0.5 for s in answer.segments)


def test_a_joined_recording_gives_the_owners_words_and_none_of_the_other_voices(server, speech):
    other = _transcript(speech, IMPOSTOR)
    pause = np.zeros(16000, np.float32)
    joined = _wav(np.concatenate([speech.load(OWNER), pause, speech.load(IMPOSTOR)]))
    response = _client(server, _key(server)).audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=("joined.wav", joined, "audio/wav"))
    text = response.parse().text
    print(f"\n{response.headers['x-voicegate-state']}: {text}")
    owner_words = set(normalise(_transcript(speech, OWNER)).split())
    theirs = set(normalise(other).split()) - owner_words
    assert jiwer.wer(normalise(_transcript(speech, OWNER)), normalise(text)) <= 0.2
    assert not theirs & set(normalise(text).split()), text
    with server.app.app_context():
        decisions = {e.decision for e in db.session.scalars(
            db.select(AuditEvent).where(AuditEvent.protocol == "openai", AuditEvent.kind == "transcribe"))}
    assert {"accept", "reject"} <= decisions


def test_another_voice_with_the_owners_key_gets_no_words(server, speech):
    client = _client(server, _key(server))
    with open(speech.path(IMPOSTOR), "rb") as file:
        response = client.audio.transcriptions.with_raw_response.create(model="whisper-1", file=file,
                                                                        response_format="verbose_json")
    answer = response.parse()
    assert response.status_code == 200 and response.headers["x-voicegate-state"] == "reject"
    assert answer.text == "" and not answer.segments


@pytest.mark.parametrize("key", ["1.AAAAAAAAAAAAAAAAAAAAAAAA", "lj", "sk-not-a-dictation-key"])
def test_a_wrong_key_is_refused_with_401_in_openais_shape(server, speech, key):
    with pytest.raises(openai.AuthenticationError) as refused, open(speech.path(OWNER), "rb") as file:
        _client(server, key).audio.transcriptions.create(model="whisper-1", file=file)
    assert refused.value.status_code == 401
    assert set(refused.value.body) == {"message", "type", "param", "code"}
    assert refused.value.code == "invalid_api_key" and refused.value.type == "invalid_request_error"
    with pytest.raises(openai.AuthenticationError):
        _client(server, key).models.list()


def test_an_oversized_upload_is_refused_with_413(server):
    client = _client(server, _key(server))
    # Over the upload cap: refused before it is read; over the audio cap: refused before it is decoded.
    for size, code in ((UPLOAD_CAP + 1024, "file_too_large"), (AUDIO_CAP + 1024, "too_large")):
        with pytest.raises(openai.APIStatusError) as refused:
            client.audio.transcriptions.create(model="whisper-1", file=("big.wav", b"\0" * size, "audio/wav"))
        assert refused.value.status_code == 413 and refused.value.code == code, refused.value.body
        assert refused.value.body["param"] == "file"


@pytest.mark.parametrize("options, param", [
    ({"response_format": "xml"}, "response_format"),
    ({"language": "klingon"}, "language"),
    ({"language": "cs"}, "language"),  # tiny.en writes English only
    ({"temperature": 3.0}, "temperature"),
])
def test_bad_options_are_refused_with_400_naming_the_parameter(server, speech, options, param):
    with pytest.raises(openai.BadRequestError) as refused, open(speech.path(OWNER), "rb") as file:
        _client(server, _key(server)).audio.transcriptions.create(model="whisper-1", file=file, **options)
    assert refused.value.body["param"] == param, refused.value.body


def test_undecodable_audio_is_a_400(server):
    with pytest.raises(openai.BadRequestError) as refused:
        _client(server, _key(server)).audio.transcriptions.create(model="whisper-1",
                                                                  file=("note.mp3", b"not audio at all" * 100))
    assert refused.value.body["param"] == "file" and refused.value.code == "undecodable"


def test_models_lists_the_servers_whisper_and_the_alias(server):
    client = _client(server, _key(server))
    ids = [model.id for model in client.models.list()]
    assert ids == ["whisper-1", "tiny.en"]
    assert client.models.retrieve("tiny.en").owned_by == "voicegate"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_an_unknown_path_is_a_404_in_openais_shape(server):
    with pytest.raises(openai.NotFoundError) as missing:
        _client(server, _key(server)).post("/chat/completions", body={"model": "x"}, cast_to=object)
    assert "Invalid URL" in missing.value.body["message"]


def test_the_key_reaches_no_log_line(server, speech, caplog):
    install_redaction()  # as gunicorn's logger class does (app/serving/logs.py)
    key = _key(server)
    caplog.set_level(logging.DEBUG)
    logging.getLogger("app").info("client sent Authorization: Bearer %s", key)
    with open(speech.path(OWNER), "rb") as file:
        _client(server, key).audio.transcriptions.create(model="whisper-1", file=file)
    assert caplog.records and key not in caplog.text and "[redacted]" in caplog.text


def test_me_shows_the_base_url_and_key_that_the_sdk_then_uses(server):
    import html
    import re
    from datetime import timedelta

    from app.store.models import AuthSession, User

    with server.app.app_context():
        token = AuthSession.start(timedelta(hours=1), user_id=User.by_name("lj").id)
        db.session.commit()
    browser = server.app.test_client()
    with browser.session_transaction(base_url=server.url) as session:
        session["user_session"] = token
    page = browser.get("/me", base_url=server.url).get_data(as_text=True)
    base_url = html.unescape(re.search(r'id="openai-base-url"[^>]* value="([^"]+)"', page).group(1))
    key = html.unescape(re.search(r'id="openai-api-key"[^>]* value="([^"]+)"', page).group(1))
    assert base_url == f"{server.url}/v1" and key == _key(server)
    assert f'api_key="{key}"' in html.unescape(page) and f"Bearer {key}" in html.unescape(page)
    assert "whisper-1" in [model.id for model in openai.OpenAI(base_url=base_url, api_key=key).models.list()]
