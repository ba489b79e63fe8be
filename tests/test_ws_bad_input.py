"""Bad input on WS /ws/voice, against a real server: one clear error, a clean close, no harm done.

Each case checks three things. The client gets exactly one ``{"type": "error", "code", "message"}``
(or the ``result`` the protocol promises) and then a close frame with the adapter's status
code; where the transport closes by itself (text that is not UTF-8, frames over its 4 MiB
cap) it gets that close and no message. The database holds nothing half-written: no voiceprint from an enrollment that did not
finish, its invite still unused, no voice attempt counted against Alice. And the server still
accepts Alice, who enrolled once for the whole module.
"""
from __future__ import annotations

import json
import struct
import threading
import time
import uuid
import wave
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import pytest
import websocket
from sqlalchemy import func, select

from clients import voicegate as voice_client
from app.store.db import db
from app.store.models import EnrollmentInvite, User, VoiceFailure, Voiceprint
from app.engines.pool import InferencePool, StreamSlots

from .conftest import LiveServer, make_app, serve

RATE = 16000
# Alice enrolls with three LJSpeech clips; another of hers, never enrolled, probes the server.
ENROLL_CLIPS = ("wav/ljspeech/LJ001-0001.wav", "wav/ljspeech/LJ001-0003.wav", "wav/ljspeech/LJ001-0005.wav")
PROBE = "wav/ljspeech/LJ001-0004.wav"
# A short clip (3.4 s of speech) that enrollment accepts: someone else's voice, for invitees.
SHORT_CLIP = "wav/arctic-aew/arctic_a0003.wav"
STOP = {"type": "stop"}
# Close statuses as a client sees them (RFC 6455).
NORMAL, INVALID_PAYLOAD, VIOLATION, TOO_BIG, TRY_LATER = 1000, 1007, 1008, 1009, 1013


# --------------------------------------------------------------------------- helpers


class BadText(bytes):
    """Bytes sent as they are in a TEXT frame (so they need not be UTF-8)."""


def start(mode: str, **fields) -> dict:
    """Return a ``start`` message."""
    return {"type": "start", "mode": mode, **fields}


def pcm(speech, file: str, begin: float = 0.0, seconds: float | None = None) -> bytes:
    """Return part of a 16 kHz mono 16-bit WAV of the speech set as raw pcm_s16le bytes."""
    with wave.open(str(speech.path(file))) as handle:
        handle.setpos(int(begin * RATE))
        count = handle.getnframes() - handle.tell() if seconds is None else int(seconds * RATE)
        return handle.readframes(count)


def frames(data: bytes, size: int = 3200) -> list[bytes]:
    """Split audio into binary frames (3200 bytes are 100 ms of 16 kHz pcm_s16le)."""
    return [data[i: i + size] for i in range(0, len(data), size)]


def send(ws, message) -> None:
    """Send a dict as JSON text, a str as text, BadText as a raw TEXT frame, bytes as a binary frame."""
    if isinstance(message, BadText):
        ws.send(bytes(message), opcode=websocket.ABNF.OPCODE_TEXT)
    elif isinstance(message, bytes):
        ws.send_binary(message)
    elif isinstance(message, str):
        ws.send(message)
    else:
        ws.send(json.dumps(message))


@dataclass
class Ending:
    """What a client saw of a session: its JSON messages, then the close frame's status."""

    replies: list[dict]
    close_code: int | None

    @property
    def types(self) -> list[str]:
        """Return the type of every reply, in order."""
        return [reply["type"] for reply in self.replies]


def read_to_close(ws) -> Ending:
    """Read JSON messages up to the server's close frame, which websocket-client answers."""
    replies = []
    while True:
        opcode, data = ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
        assert opcode == websocket.ABNF.OPCODE_TEXT, f"unexpected frame with opcode {opcode}: {data[:80]!r}"
        replies.append(json.loads(data))
    return Ending(replies, struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None)


def read_transport_close(ws) -> Ending:
    """Read to the end of a connection the transport (not the app) closes.

    After wsproto's 1007 close, werkzeug's development server writes a stray HTTP status
    line onto the socket; depending on timing, websocket-client reads the close frame first
    or trips over those bytes. Either way the session has ended: code None then.
    """
    try:
        return read_to_close(ws)
    except (websocket.WebSocketProtocolException, websocket.WebSocketConnectionClosedException):
        return Ending([], None)


def converse(url: str, *messages, timeout: float = 20.0, reader=read_to_close) -> Ending:
    """Open a socket, send ``messages`` (see ``send``), and read until the server closes."""
    ws = websocket.create_connection(url, timeout=timeout)
    try:
        for message in messages:
            try:
                send(ws, message)
            except (websocket.WebSocketConnectionClosedException, OSError):
                break  # the server has already ended the session; read how
        return reader(ws)
    finally:
        ws.shutdown()


def open_session(url: str, message: dict):
    """Connect, send the ``start`` message, wait for ``ready``, and return the socket."""
    ws = websocket.create_connection(url, timeout=20)
    send(ws, message)
    ready = json.loads(ws.recv())
    assert ready["type"] == "ready", ready
    return ws


def assert_error(ending: Ending, code: str, close: int = VIOLATION, before: tuple[str, ...] = ()) -> None:
    """Assert that after messages of types ``before`` came exactly one error ``code``, then close ``close``."""
    assert ending.types == [*before, "error"], ending.replies
    error = ending.replies[-1]
    assert error["code"] == code, error
    assert set(error) == {"type", "code", "message"} and isinstance(error["message"], str) and error["message"]
    assert ending.close_code == close, ending


# --------------------------------------------------------------------------- the module's server


@dataclass
class Gate:
    """The module's server, its database folder, and what Alice's enrollment left behind."""

    server: LiveServer
    folder: Path
    used_invite: str
    probe: bytes  # 1.9 s of Alice's speech, raw pcm_s16le
    voiceprint: tuple[int, datetime]  # id and created_at of Alice's voiceprint

    @property
    def url(self) -> str:
        """Return the module server's voice WebSocket URL."""
        return self.server.ws_url

    def app_context(self):
        """Return an app context of the module's server, for reading its database."""
        return self.server.app.app_context()


@pytest.fixture(scope="module")
def gate(tmp_path_factory, engines, speech):
    """A server on 127.0.0.1 where Alice has enrolled over the WebSocket (once per module)."""
    folder = tmp_path_factory.mktemp("gate")
    server, stop = serve(make_app(folder, engines))
    invite = server.invite("alice")
    result = voice_client.run("enroll", [speech.path(f) for f in ENROLL_CLIPS], server.ws_url, invite=invite,
                              echo=lambda _: None)
    assert result["state"] == "enrolled", result
    with server.app.app_context():
        voiceprint = User.by_name("alice").voiceprint
        snapshot = (voiceprint.id, voiceprint.created_at)
    # 1.9 s keeps each check quick and inside the 2 s clip limit of the too_long case.
    yield Gate(server, folder, invite, pcm(speech, PROBE, seconds=1.9), snapshot)
    stop()


@pytest.fixture
def policy_server(gate, engines):
    """Return a function that serves the module's database with other policy keys or engines."""
    stops = []

    def start_server(with_engines=None, **config) -> LiveServer:
        server, stop = serve(make_app(gate.folder, with_engines or engines, **config))
        stops.append(stop)
        return server

    yield start_server
    for stop in stops:
        stop()


def new_invitee(gate: Gate) -> tuple[str, str]:
    """Create a user of a fresh name; return the name and an enrollment invite token."""
    name = f"user-{uuid.uuid4().hex[:8]}"
    return name, gate.server.invite(name)


def assert_no_harm(gate: Gate, invite: str | None = None) -> None:
    """Assert that Alice is as enrolled, with no failure counted against her, and nothing else was stored.

    With ``invite``: that invite is still unused and valid.
    """
    with gate.app_context():
        alice = User.by_name("alice")
        assert alice.active
        assert db.session.scalar(select(func.count()).select_from(VoiceFailure).where(VoiceFailure.claim == "alice")) == 0
        assert (alice.voiceprint.id, alice.voiceprint.created_at) == gate.voiceprint
        # Only Alice's enrollment ever finished: one voiceprint, one used invite.
        assert db.session.scalar(select(func.count()).select_from(Voiceprint)) == 1
        used = select(func.count()).select_from(EnrollmentInvite).where(EnrollmentInvite.used_at.is_not(None))
        assert db.session.scalar(used) == 1
        if invite is not None:
            assert EnrollmentInvite.find_valid(invite) is not None, "the invite was used up"


def assert_serves(gate: Gate, url: str | None = None) -> None:
    """Assert that the server at ``url`` (default: the module's) accepts Alice's voice."""
    # 960-byte frames pass even the 1000-byte frame limit of the frame_too_large case.
    ending = converse(url or gate.url, start("verify", user="alice"), *frames(gate.probe, 960), STOP)
    assert ending.types == ["ready", "result"] and ending.close_code == NORMAL, ending
    assert ending.replies[-1]["state"] == "accept" and ending.replies[-1]["user"] == "alice", ending.replies[-1]


# --------------------------------------------------------------------------- the cases


@pytest.mark.parametrize("messages, code", [
    pytest.param([b"\x00\x00" * 160], "not_started", id="binary-before-start"),
    pytest.param([STOP], "not_started", id="json-but-not-a-start"),
    pytest.param(['{"type": "start", "mode": '], "bad_message", id="malformed-json"),
    pytest.param(["[1, 2]"], "bad_message", id="json-array"),
    pytest.param([start("login", user="alice")], "bad_mode", id="bad-mode"),
    pytest.param([start("verify", user="alice", format={"encoding": "mp7"})], "bad_format", id="encoding-mp7"),
    pytest.param([start("verify", user="alice", format={"encoding": "pcm_s16le", "sample_rate": 1})],
                 "bad_sample_rate", id="rate-1"),
    pytest.param([start("verify", user="alice", format={"encoding": "pcm_s16le", "sample_rate": 10_000_000})],
                 "bad_sample_rate", id="rate-10M"),
    pytest.param([start("dictate", user="alice", format={"encoding": "container"})], "bad_format",
                 id="dictate-container"),
    pytest.param([start("dictate", user="nobody", token="forged.token.here")], "bad_token", id="dictate-forged-token"),
    pytest.param([start("enroll", user="alice")], "not_allowed", id="enroll-without-invite"),
    pytest.param([start("enroll", invite="no-such-invite")], "bad_invite", id="enroll-bogus-invite"),
])
def test_bad_opening_is_refused(gate, messages, code):
    assert_error(converse(gate.url, *messages), code)
    assert_no_harm(gate)
    assert_serves(gate)


@pytest.mark.parametrize("message, code", [
    pytest.param({"type": "pause"}, "unknown_message", id="unknown-type"),
    pytest.param({"stop": True}, "unknown_message", id="no-type"),
    pytest.param("[1, 2]", "bad_message", id="json-array"),
    pytest.param('{"type": "stop"', "bad_message", id="malformed-json"),
    pytest.param(start("enroll"), "bad_message", id="second-start"),
])
def test_bad_message_mid_enrollment_stores_nothing(gate, speech, message, code):
    _, invite = new_invitee(gate)
    half_clip = pcm(speech, SHORT_CLIP, seconds=1.7)
    ending = converse(gate.url, start("enroll", invite=invite), *frames(half_clip), message)
    assert_error(ending, code, before=("ready",))
    assert_no_harm(gate, invite)
    assert_serves(gate)


def test_non_utf8_text_frame_before_start_is_closed_by_the_transport(gate):
    # wsproto rejects the frame before the app sees it: a close 1007 and no error message.
    ending = converse(gate.url, BadText(b"\xff\xfe{}"), reader=read_transport_close)
    assert ending.types == [] and ending.close_code in (INVALID_PAYLOAD, None), ending
    assert_no_harm(gate)
    assert_serves(gate)


def test_non_utf8_text_frame_mid_enrollment_stores_nothing(gate, speech):
    _, invite = new_invitee(gate)
    # Wait for ready: the transport's close would otherwise race the server's ready.
    ws = open_session(gate.url, start("enroll", invite=invite))
    try:
        for message in [*frames(pcm(speech, SHORT_CLIP, seconds=1.7)), BadText(b"\xff\xfe{}")]:
            send(ws, message)
        ending = read_transport_close(ws)
    finally:
        ws.shutdown()
    assert ending.types == [] and ending.close_code in (INVALID_PAYLOAD, None), ending
    assert_no_harm(gate, invite)
    assert_serves(gate)


def test_oversized_frame_is_refused_with_1009(gate, policy_server):
    server = policy_server(POLICY_MAX_FRAME_BYTES=1000)
    _, invite = new_invitee(gate)
    # A frame of exactly the limit passes; two bytes more end the session.
    ending = converse(server.ws_url, start("enroll", invite=invite), b"\x00" * 1000, b"\x00" * 1002)
    assert_error(ending, "frame_too_large", close=TOO_BIG, before=("ready",))
    assert_no_harm(gate, invite)
    assert_serves(gate, server.ws_url)


def test_verification_longer_than_the_limit_is_too_long(gate, speech, policy_server):
    server = policy_server(POLICY_MAX_CLIP_SECONDS=2)
    ending = converse(server.ws_url, start("verify", user="alice"), *frames(pcm(speech, PROBE)), STOP)
    assert_error(ending, "too_long", before=("ready",))
    assert_no_harm(gate)  # the cut-off attempt is not counted against Alice
    assert_serves(gate, server.ws_url)


def test_idle_client_is_timed_out(gate, policy_server):
    server = policy_server(POLICY_IDLE_SECONDS=1)
    _, invite = new_invitee(gate)
    began = time.monotonic()
    ending = converse(server.ws_url, start("enroll", invite=invite))
    waited = time.monotonic() - began
    assert_error(ending, "idle_timeout", before=("ready",))
    assert waited >= 1.0, waited  # not cut off before the client was idle for the policy's second
    assert_no_harm(gate, invite)
    assert_serves(gate, server.ws_url)


@pytest.mark.parametrize("mode", ["verify", "dictate"])
@pytest.mark.parametrize("standing", ["unknown_user", "disabled", "not_enrolled"])
def test_user_who_cannot_be_checked_is_refused(gate, mode, standing):
    name = f"user-{uuid.uuid4().hex[:8]}"
    if standing != "unknown_user":
        gate.server.invite(name)  # creates the user, never enrolled
    if standing == "disabled":
        with gate.app_context():
            User.by_name(name).active = False
            db.session.commit()
    # A stranger learns nothing about the name: the answers of a wrong voice, without scores.
    ending = converse(gate.url, start(mode, user=name), *frames(gate.probe, 960), STOP)
    if mode == "verify":
        assert ending.types == ["ready", "result"], ending
        assert ending.replies[-1]["state"] == "reject" and "score" not in ending.replies[-1], ending.replies[-1]
    else:
        finals = [r for r in ending.replies if r["type"] == "final"]
        assert ending.types[0] == "ready" and ending.types[-1] == "result", ending
        assert finals and all(f["state"] == "reject" and f["text"] is None and "score" not in f for f in finals)
    assert_no_harm(gate)
    assert_serves(gate)


def test_disabled_user_cannot_enroll_even_with_an_invite(gate):
    name, invite = new_invitee(gate)
    with gate.app_context():
        User.by_name(name).active = False
        db.session.commit()
    assert_error(converse(gate.url, start("enroll", invite=invite)), "disabled")
    assert_no_harm(gate, invite)
    assert_serves(gate)


@pytest.mark.parametrize("whose", ["used", "someone-elses"])
def test_enroll_with_a_used_or_foreign_invite_is_refused(gate, whose):
    _, other = new_invitee(gate)
    # Alice's own invite was used by her enrollment; another user's invite names someone else.
    if whose == "used":
        message = start("enroll", invite=gate.used_invite)
    else:
        message = start("enroll", user="alice", invite=other)
    assert_error(converse(gate.url, message), "bad_invite")
    assert_no_harm(gate, other)
    assert_serves(gate)


@pytest.mark.parametrize("clip, state", [
    pytest.param(None, "no_speech", id="3s-of-zeros"),
    pytest.param((PROBE, 1.0, 0.6), "not_enough_speech", id="0.6s-of-speech"),
])
def test_too_little_speech_is_a_result_not_an_error(gate, speech, clip, state):
    audio = bytes(3 * RATE * 2) if clip is None else pcm(speech, *clip)
    ending = converse(gate.url, start("verify", user="alice"), *frames(audio), STOP)
    assert ending.types == ["ready", "result"] and ending.close_code == NORMAL, ending
    result = ending.replies[-1]
    assert result["state"] == state and result.get("score") is None and "token" not in result, result
    assert_no_harm(gate)  # no decision was made, so no attempt is counted
    assert_serves(gate)


def test_client_vanishing_mid_enrollment_stores_nothing(gate, speech):
    _, invite = new_invitee(gate)
    ws = open_session(gate.url, start("enroll", invite=invite))
    try:
        for message in [*frames(pcm(speech, SHORT_CLIP)), STOP]:
            send(ws, message)
        assert json.loads(ws.recv())["clip"]["accepted"] is True
        for frame in frames(pcm(speech, SHORT_CLIP, seconds=1.7)):
            send(ws, frame)
    finally:
        ws.shutdown()  # no close frame: the client is simply gone
    # Verifying first gives the server time to notice the hang-up and drop the session.
    assert_serves(gate)
    assert_no_harm(gate, invite)


def test_cancel_after_an_accepted_clip_stores_nothing(gate, speech):
    _, invite = new_invitee(gate)
    ws = open_session(gate.url, start("enroll", invite=invite))
    try:
        for message in [*frames(pcm(speech, SHORT_CLIP)), STOP]:
            send(ws, message)
        progress = json.loads(ws.recv())
        assert progress["type"] == "progress" and progress["clips_accepted"] == 1, progress
        send(ws, {"type": "cancel"})
        assert_error(read_to_close(ws), "cancelled")
    finally:
        ws.shutdown()
    assert_no_harm(gate, invite)
    assert_serves(gate)


def test_full_pool_answers_busy_at_once(gate, engines, policy_server):
    # One worker and no queue, sharing the loaded models; occupying the worker fills the pool.
    pool = InferencePool(1, 0)
    server = policy_server(replace(engines, pool=pool, streams=StreamSlots(2)))
    release = threading.Event()
    blocker = pool.submit(release.wait)
    try:
        # The worker stays occupied until the answer is in: a queued call would never be answered.
        ending = converse(server.ws_url, start("verify", user="alice"), *frames(gate.probe), STOP)
        assert not release.is_set()
        release.set()
        blocker.result(timeout=10)
        assert_error(ending, "busy", close=TRY_LATER, before=("ready",))
        assert_no_harm(gate)
        assert_serves(gate, server.ws_url)  # the freed worker takes the next caller
    finally:
        release.set()
        pool.shutdown()


def test_dictations_beyond_the_stream_limit_are_told_busy_and_a_slot_frees_when_one_ends(gate, engines, policy_server):
    # One live dictation at a time: the second caller hears "busy" at once (not a stream that
    # falls behind), and when the first session ends, however it ends, the next caller gets in.
    server = policy_server(replace(engines, streams=StreamSlots(1)))
    first = open_session(server.ws_url, start("dictate", user="alice"))
    try:
        assert_error(converse(server.ws_url, start("dictate", user="alice")), "busy", close=TRY_LATER)
        assert_serves(gate, server.ws_url)  # verification is not a stream: it still gets in
    finally:
        first.shutdown()  # the client vanishes without a stop
    deadline = time.monotonic() + 10
    while True:
        ending = converse(server.ws_url, start("dictate", user="alice"), *frames(gate.probe), STOP)
        if ending.types[:1] != ["error"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # the server notices the vanished client on its next receive
    assert ending.types[0] == "ready" and ending.types[-1] == "result", ending.replies
    assert ending.close_code == NORMAL


def test_frame_over_the_transport_cap_is_closed_1009(gate):
    # Frames over SOCK_SERVER_OPTIONS' 4 MiB cap are refused by simple-websocket itself, which
    # closes with 1009 before the app could send an error; below it, the app's limit speaks.
    ws = open_session(gate.url, start("verify", user="alice"))
    try:
        send(ws, bytes(5 * 1024 * 1024))
        ending = read_to_close(ws)
    finally:
        ws.shutdown()
    assert ending.types == [] or ending.replies[-1]["code"] == "frame_too_large", ending.replies
    assert ending.close_code == TOO_BIG, ending
    assert_no_harm(gate)
    assert_serves(gate)


# Text Python's json module parses into values the adapter does not expect. Both end today
# as {"code": "internal"} with close 1011 and a logged traceback, not as a client error:
# RecursionError and OverflowError are not the ValueError/TypeError that voice_ws.py catches.
@pytest.mark.parametrize("text, code", [
    pytest.param("[" * 100_000 + "]" * 100_000, "bad_message", id="deeply-nested-json"),
    pytest.param('{"type": "start", "mode": "verify", "user": "alice", '
                 '"format": {"encoding": "pcm_s16le", "sample_rate": 1e400}}', "bad_format", id="rate-1e400"),
])
def test_json_the_parser_chokes_on_is_a_client_error(gate, text, code):
    ending = converse(gate.url, text)
    assert "internal" not in [reply.get("code") for reply in ending.replies], (
        f"app bug: {ending.replies} with close {ending.close_code}; expected error {code!r} with close 1008")
    assert_error(ending, code)
    assert_no_harm(gate)
    assert_serves(gate)
