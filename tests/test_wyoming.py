"""The Wyoming speech-to-text server, driven by the ``wyoming`` package's own client as Home Assistant drives it.

A real server on 127.0.0.1 with the real models: the LJ Speech reader enrolled and on the
household roster, the LibriVox reader enrolled but not on it (a guest), a CMU ARCTIC speaker
never enrolled (a stranger). The client sends what Home Assistant's Wyoming integration sends
(transcribe, audio-start, audio-chunk..., audio-stop) and reads the transcript.
"""
from __future__ import annotations

import asyncio
import time
import wave

import jiwer
import numpy as np
import pytest
from whisper_normalizer.english import EnglishTextNormalizer
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info

from app.gate import settings
from app.protocols.wyoming import WyomingServer
from app.store.models import AuditEvent, User
from bench.meetings import compose

from .conftest import pause_decodes, serve_enrolled

normalise = EnglishTextNormalizer()
MEMBER, GUEST = "lj", "sas"
GUEST_ENROLL = ["wav/librivox-sas01/sense_and_sensibility_01_austen_64kb-0870.wav",
                "wav/librivox-sas01/sense_and_sensibility_01_austen_64kb-0890.wav",
                "wav/librivox-sas01/sense_and_sensibility_01_austen_64kb-0920.wav"]
MEMBER_SAYS = "wav/ljspeech/LJ001-0004.wav"  # not one of the enrollment clips
GUEST_SAYS = "wav/librivox-sas01/sense_and_sensibility_01_austen_64kb-0880.wav"
STRANGER_SAYS = "wav/arctic-aew/arctic_a0001.wav"
SAMPLES_PER_CHUNK = 1024  # as wyoming-faster-whisper's tests send
# Waits for a transcript: a loaded CI machine takes seconds per command, never this long.
REPLY_SECONDS = 120
LIMITS = {"CONNECTIONS_PER_ADDRESS": 4, "POLICY_IDLE_SECONDS": 3.0, "POLICY_MAX_FRAME_BYTES": 64 * 1024}


@pytest.fixture(scope="module")
def household(tmp_path_factory, engines, speech):
    """A server with LJ on the roster and the LibriVox reader enrolled off it; its Wyoming server on a free port."""
    from clients import voicegate as client

    live, stop = serve_enrolled(tmp_path_factory.mktemp("wyoming"), engines, speech, name=MEMBER, **LIMITS)
    enrolled = client.run("enroll", [speech.path(f) for f in GUEST_ENROLL], live.ws_url, invite=live.invite(GUEST),
                          echo=lambda _: None)
    assert enrolled["state"] == "enrolled", enrolled
    with live.app.app_context():
        User.by_name(MEMBER).display_name = "Linda Johnson"
        settings.save_household([User.by_name(MEMBER).public_id], "test")
    wyoming = WyomingServer(live.app, "127.0.0.1", 0).start()
    yield live, wyoming
    wyoming.stop()
    stop()


def _words(speech, file: str) -> str:
    return normalise(next(u.transcript for u in speech.utterances if u.file == file))


def _pcm(audio: np.ndarray, rate: int = 16000, channels: int = 1) -> bytes:
    """Return 16 kHz float32 audio as 16-bit PCM at ``rate`` with ``channels`` copies of it."""
    if rate != 16000:
        audio = np.interp(np.arange(int(audio.size * rate / 16000)) * 16000 / rate, np.arange(audio.size), audio)
    samples = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    return np.repeat(samples, channels).tobytes()


async def _command(port: int, audio: bytes, rate: int = 16000, channels: int = 1, language: str | None = "en",
                   realtime: bool = False):
    """Send one command as Home Assistant does; return the server's last event (transcript or error), or None.

    ``realtime``: the chunks at the pace a microphone gives them, as a satellite streams them.
    """
    async with AsyncTcpClient("127.0.0.1", port, read_timeout=REPLY_SECONDS) as client:
        await client.write_event(Transcribe(language=language).event())
        await client.write_event(AudioStart(rate=rate, width=2, channels=channels).event())
        step = SAMPLES_PER_CHUNK * 2 * channels
        began = time.monotonic()
        for begin in range(0, len(audio), step):
            if realtime:
                await asyncio.sleep(max(0.0, began + begin / (2 * channels * rate) - time.monotonic()))
            await client.write_event(AudioChunk(rate=rate, width=2, channels=channels,
                                                audio=audio[begin:begin + step]).event())
        await client.write_event(AudioStop().event())
        return await _reply(client)


async def _reply(client: AsyncTcpClient) -> Event | None:
    while True:
        event = await client.read_event()
        if event is None or Transcript.is_type(event.type) or Error.is_type(event.type):
            return event


def _transcript(port: int, audio: bytes, **kwargs) -> Transcript:
    event = asyncio.run(_command(port, audio, **kwargs))
    assert event is not None and Transcript.is_type(event.type), event
    return Transcript.from_event(event)


def test_describe_names_voicegate_and_its_languages(household):
    _, wyoming = household

    async def describe():
        async with AsyncTcpClient("127.0.0.1", wyoming.port, read_timeout=REPLY_SECONDS) as client:
            await client.write_event(Describe().event())
            return await client.read_event()

    event = asyncio.run(describe())
    assert Info.is_type(event.type), event
    asr = Info.from_event(event).asr
    assert [program.name for program in asr] == ["voicegate"]
    model = asr[0].models[0]
    assert model.installed and model.name == "tiny.en" and model.languages == ["en"]


def test_a_household_member_gets_their_words_and_is_named(household, speech):
    live, wyoming = household
    transcript = _transcript(wyoming.port, _pcm(speech.load(MEMBER_SAYS)))
    wer = jiwer.wer(_words(speech, MEMBER_SAYS), normalise(transcript.text))
    print(f"\nWER {wer:.1%}: {transcript.text!r} {transcript.context}")
    assert wer <= 0.2
    assert transcript.context["speakers"] == [{"user": MEMBER, "name": "Linda Johnson"}]
    assert transcript.language == "en"
    with live.app.app_context():
        rows = AuditEvent.query.filter_by(request_id=transcript.context["request_id"]).all()
    assert rows and {(r.kind, r.protocol) for r in rows} == {("command", "wyoming")}
    assert {r.matched_user for r in rows if r.decision == "accept"} == {MEMBER}


def test_a_command_is_transcribed_in_the_pause_before_audio_stop(household, speech, engines):
    """Home Assistant sends audio-stop once its own VAD has heard silence: the server, after 0.3 s of
    it, has checked and decoded the command by then (stream.GatedStream._prepare_end)."""
    live, wyoming = household
    said = speech.load(MEMBER_SAYS)
    audio = np.concatenate([said[:engines.vad.segments(said)[-1].end], np.zeros(8000, dtype=np.float32)])
    # A loaded machine may still be busy with the command's other work when audio-stop comes, so a few tries.
    for _ in range(3):
        used = pause_decodes(live.url, "used")
        event = asyncio.run(_command(wyoming.port, _pcm(audio), realtime=True))
        assert event is not None and Transcript.is_type(event.type), event
        transcript = Transcript.from_event(event)
        assert jiwer.wer(_words(speech, MEMBER_SAYS), normalise(transcript.text)) <= 0.2, transcript.text
        assert transcript.context["speakers"] == [{"user": MEMBER, "name": "Linda Johnson"}]
        if pause_decodes(live.url, "used") == used + 1:
            break
    else:
        pytest.fail("no command of three was decoded in its pause")


def test_audio_in_another_rate_and_stereo_is_converted(household, speech):
    _, wyoming = household
    transcript = _transcript(wyoming.port, _pcm(speech.load(MEMBER_SAYS), rate=44100, channels=2), rate=44100, channels=2)
    wer = jiwer.wer(_words(speech, MEMBER_SAYS), normalise(transcript.text))
    print(f"\nWER {wer:.1%} from 44.1 kHz stereo: {transcript.text!r}")
    assert wer <= 0.2


@pytest.mark.parametrize("file", [STRANGER_SAYS, GUEST_SAYS], ids=["stranger", "enrolled-guest"])
def test_anyone_off_the_roster_gets_an_empty_transcript(household, speech, file):
    live, wyoming = household
    transcript = _transcript(wyoming.port, _pcm(speech.load(file)))
    assert transcript.text == "" and transcript.context["speakers"] == []
    with live.app.app_context():
        rows = AuditEvent.query.filter_by(request_id=transcript.context["request_id"]).all()
    assert rows and all(r.decision != "accept" and r.matched_user is None for r in rows)


@pytest.mark.parametrize("other, member_first", [(GUEST_SAYS, True), (STRANGER_SAYS, False)],
                         ids=["member-then-guest", "stranger-then-member"])
def test_a_joined_recording_gives_no_word_of_the_other_voice(household, speech, other, member_first):
    _, wyoming = household
    parts = [(MEMBER, "", speech.load(MEMBER_SAYS)), (None, "", speech.load(other))]
    joined = compose("joined", parts if member_first else parts[::-1], gap=0.0)  # no pause between the voices
    transcript = _transcript(wyoming.port, _pcm(joined.audio))
    heard = set(normalise(transcript.text).split())
    theirs = set(_words(speech, other).split()) - set(_words(speech, MEMBER_SAYS).split())
    print(f"\njoined: {transcript.text!r}")
    assert not heard & theirs, heard & theirs
    assert transcript.context["speakers"] == [{"user": MEMBER, "name": "Linda Johnson"}]
    assert jiwer.wer(_words(speech, MEMBER_SAYS), normalise(transcript.text)) <= 0.35


def test_nobody_speaks_without_a_roster(household, speech):
    live, wyoming = household
    with live.app.app_context():
        roster = settings.household()
        settings.save_household([], "test")
    try:
        event = asyncio.run(_command(wyoming.port, _pcm(speech.load(MEMBER_SAYS)[:16000])))
    finally:
        with live.app.app_context():
            settings.save_household(roster, "test")
    assert Error.is_type(event.type) and Error.from_event(event).code == "no_roster", event


def test_unreadable_settings_transcribe_nothing(household, speech):
    live, wyoming = household
    from app.store.db import db
    from app.store.models import Setting

    with live.app.app_context():
        Setting.put(settings.HOUSEHOLD_KEY, "not a list", "test")
        db.session.commit()
    try:
        event = asyncio.run(_command(wyoming.port, _pcm(speech.load(MEMBER_SAYS)[:16000])))
    finally:
        with live.app.app_context():
            settings.save_household([User.by_name(MEMBER).public_id], "test")
    assert Error.is_type(event.type) and Error.from_event(event).code == "busy", event


# --------------------------------------------------------------------------- limits

def _error(event: Event | None) -> str:
    assert event is not None and Error.is_type(event.type), event
    return Error.from_event(event).code


async def _send_then_read(port: int, events: list[Event]) -> Event | None:
    async with AsyncTcpClient("127.0.0.1", port, read_timeout=REPLY_SECONDS) as client:
        try:
            for event in events:
                await client.write_event(event)
        except ConnectionError:
            pass  # the server may close before the last is written: its error is waiting
        return await _reply(client)


def test_an_endless_stream_is_cut_with_an_error(household):
    _, wyoming = household
    second = AudioChunk(rate=16000, width=2, channels=1, audio=bytes(32000)).event()  # 1 s of silence
    events = [AudioStart(rate=16000, width=2, channels=1).event()] + [second] * 40
    assert _error(asyncio.run(_send_then_read(wyoming.port, events))) == "too_long"


def test_an_oversized_event_is_refused(household):
    _, wyoming = household
    huge = AudioChunk(rate=16000, width=2, channels=1, audio=bytes(LIMITS["POLICY_MAX_FRAME_BYTES"] + 2)).event()
    assert _error(asyncio.run(_send_then_read(wyoming.port, [huge]))) == "frame_too_large"


def test_a_silent_client_is_dropped(household):
    _, wyoming = household
    start = AudioStart(rate=16000, width=2, channels=1).event()
    assert _error(asyncio.run(_send_then_read(wyoming.port, [start]))) == "idle"


def test_bad_audio_formats_are_refused(household):
    _, wyoming = household
    assert _error(asyncio.run(_send_then_read(wyoming.port, [AudioStart(rate=16000, width=7, channels=1).event()]))) \
        == "bad_format"
    odd = AudioChunk(rate=16000, width=2, channels=1, audio=bytes(3)).event()
    assert _error(asyncio.run(_send_then_read(wyoming.port, [odd]))) == "bad_audio"


def test_one_address_may_hold_only_so_many_connections(household):
    _, wyoming = household

    async def crowd():
        held = [AsyncTcpClient("127.0.0.1", wyoming.port, read_timeout=REPLY_SECONDS)
                for _ in range(LIMITS["CONNECTIONS_PER_ADDRESS"])]
        for client in held:
            await client.connect()
        try:
            async with AsyncTcpClient("127.0.0.1", wyoming.port, read_timeout=REPLY_SECONDS) as extra:
                return await extra.read_event()
        finally:
            for client in held:
                await client.disconnect()

    assert _error(asyncio.run(crowd())) == "too_many_connections"


# --------------------------------------------------------------------------- the admin's household

def test_the_admin_chooses_the_household_on_the_settings_screen(app, client):
    from .test_admin import add_admin, add_voiceprint, post, sign_in

    add_admin(app)
    assert sign_in(client).status_code == 302
    add_voiceprint(app, "ada")
    add_voiceprint(app, "bob")
    with app.app_context():
        ada, bob = User.by_name("ada").public_id, User.by_name("bob").public_id
    page = client.get("/admin/settings").text
    assert "Home Assistant voice commands" in page and "VOICEGATE_WYOMING_PORT" in page  # the server is off
    assert f'value="{ada}"' in page and f'value="{bob}"' in page

    response = post(client, "/admin/settings/household", member=[ada, "no-such-id"])
    assert response.status_code == 302
    with app.app_context():
        assert settings.household() == [ada]
        note = AuditEvent.query.filter_by(kind="admin", decision="settings_changed").one()
        assert note.reason.startswith("household roster")
        User.by_name("ada").active = False
        from app.store.db import db

        db.session.commit()
    page = client.get("/admin/settings").text
    assert "cannot speak: disabled" in page  # still on the roster, and why it cannot speak

    post(client, "/admin/settings/household")  # nobody ticked: nobody speaks
    with app.app_context():
        assert settings.household() == []


def _sign_in_user(app, client, name: str) -> None:
    """Sign ``name`` in as an accepted voice login's token does (POST /session)."""
    import re

    from app.gate import tokens

    with app.app_context():
        user = User.by_name(name)
        token = tokens.issue(app.config["SECRET_KEY"], user.public_id, user.name, "test")
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/login").text).group(1)
    assert client.post("/session", json={"token": token}, headers={"X-CSRFToken": csrf}).status_code == 200


def test_me_links_to_the_set_up_with_this_servers_host_and_port(tmp_path, engines):
    from .conftest import make_app
    from .test_admin import add_voiceprint

    app = make_app(tmp_path, engines, WYOMING_PORT=10300, WYOMING_HOST="0.0.0.0")
    add_voiceprint(app, "ada")
    client = app.test_client()
    _sign_in_user(app, client, "ada")
    assert 'href="/me/home-assistant"' in client.get("/me").text
    page = client.get("/me/home-assistant").text
    assert '<dd class="mono" id="ha-host">localhost</dd>' in page  # 0.0.0.0: the name this page was reached by and '<dd class="mono" id="ha-port">10300</dd>' in page
    assert "You are not in the household yet" in page and "the name you reached this page by" in page
    with app.app_context():
        settings.save_household([User.by_name("ada").public_id], "test")
    assert "You are in the household" in client.get("/me/home-assistant").text

    off = make_app(tmp_path / "off", engines)
    add_voiceprint(off, "ada")
    client = off.test_client()
    _sign_in_user(off, client, "ada")
    assert "not switched on" in client.get("/me/home-assistant").text

    local = make_app(tmp_path / "local", engines, WYOMING_PORT=10300)  # on 127.0.0.1 only, the default
    add_voiceprint(local, "ada")
    client = local.test_client()
    _sign_in_user(local, client, "ada")
    assert "reached only from this machine" in client.get("/me/home-assistant").text


def test_clients_that_vanish_mid_event_give_their_connections_back(household):
    _, wyoming = household

    async def vanish():
        reader, writer = await asyncio.open_connection("127.0.0.1", wyoming.port)
        # A header that promises a payload, and half of it: then the client is gone.
        writer.write(b'{"type": "audio-chunk", "data": {"rate": 16000, "width": 2, "channels": 1}, '
                     b'"payload_length": 1000}\n' + bytes(500))
        await writer.drain()
        writer.close()

    seen = wyoming.connections_seen()
    for _ in range(2 * LIMITS["CONNECTIONS_PER_ADDRESS"]):
        asyncio.run(vanish())
    # Every vanished client reached the server (a loaded one accepts them late), and each gave its place back.
    deadline = time.monotonic() + REPLY_SECONDS
    while (wyoming.open_connections() or wyoming.connections_seen() < seen + 2 * LIMITS["CONNECTIONS_PER_ADDRESS"]) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert wyoming.connections_seen() == seen + 2 * LIMITS["CONNECTIONS_PER_ADDRESS"]
    assert wyoming.open_connections() == 0

    async def describe():
        async with AsyncTcpClient("127.0.0.1", wyoming.port, read_timeout=REPLY_SECONDS) as client:
            await client.write_event(Describe().event())
            return await client.read_event()

    assert Info.is_type(asyncio.run(describe()).type)  # still served


def test_the_language_asked_for_is_the_models_when_it_knows_it():
    from app.gate.household import model_language

    multilingual = ["en", "de", "cs", "nl"]
    assert model_language("de", multilingual) == "de" and model_language("nl-NL", multilingual) == "nl"
    assert model_language("xx", multilingual) is None and model_language(None, multilingual) is None  # detected
    assert model_language("de", ["en"]) == "en"  # an English-only model transcribes English whatever is asked
