"""WS /ws/voice: the voice sessions over a plain WebSocket (protocol: docs/protocol.md)."""
from __future__ import annotations

import json
import logging

from simple_websocket import ConnectionClosed

from ..audio.decode import AudioError, AudioFormat, AudioLimits, PcmStream, decode
from ..errors import SessionError, VoiceGateError
from .context import release_db, session_context
from ..serving.extensions import sock
from ..gate.base import Context
from ..gate.opening import open_session
from .frames import receive_frame

logger = logging.getLogger(__name__)

# WebSocket close codes: normal, protocol violation, message too big, try again later, server error.
NORMAL, VIOLATION, TOO_BIG, TRY_LATER, SERVER_ERROR = 1000, 1008, 1009, 1013, 1011
_CLOSE_CODES = {"busy": TRY_LATER, "frame_too_large": TOO_BIG, "internal": SERVER_ERROR}


@sock.route("/ws/voice")
def voice(ws):
    """Run one enrollment, verification or dictation session on this socket."""
    try:
        ctx = session_context("ws")
    except SessionError as error:  # the settings are unreadable: decide nothing
        ws.send(json.dumps({"type": "error", "code": error.code, "message": error.message}))
        ws.close(reason=_CLOSE_CODES.get(error.code, VIOLATION))
        return
    Channel(ws, ctx, admin=ctx.admin).serve()


class Channel:
    """Drive one session over anything with ``receive(timeout)``, ``send(text)`` and ``close()``."""

    def __init__(self, conn, ctx: Context, admin: bool = False):
        self.conn, self.ctx, self.admin = conn, ctx, admin
        self.limits = AudioLimits(max_seconds=max(ctx.policy.max_clip_seconds, ctx.policy.max_dictation_seconds))
        self.session = None
        self.format: AudioFormat | None = None
        self.stream: PcmStream | None = None
        self.container = bytearray()

    def serve(self) -> None:
        """Run the session to its end; every failure becomes one ``error`` message and a close."""
        try:
            self._open()
            release_db()  # an idle socket holds no database connection
            while not self.session.done:
                message = self._receive()
                if isinstance(message, bytes):
                    self._send_all(self._audio(message))
                else:
                    self._control(message)
                    release_db()
                self._send_all(self.session.poll())
            self._close(NORMAL)
        except SessionError as error:
            self._fail(error.code, error.message)
        except AudioError as error:
            self._fail(error.code, error.message)
        except VoiceGateError as error:  # e.g. a voiceprint whose key is gone (app/store/vault.py): decide nothing
            self._fail(error.code, error.message)
        except ConnectionClosed:
            # The client went away: whatever it sent is dropped; an unfinished enrollment stores nothing.
            logger.info("client closed %s session", self.session.mode if self.session else "a")
        except Exception:
            logger.exception("voice session failed")
            self._fail("internal", "the server failed to handle this session")
        finally:
            if self.session is not None:
                self.session.close()

    # -- messages

    def _open(self) -> None:
        message = self._receive()
        if isinstance(message, bytes):
            raise SessionError("not_started", "send a JSON start message before any audio")
        if message.get("type") != "start":
            raise SessionError("not_started", "the first message must be {\"type\": \"start\", ...}")
        self.format = _audio_format(message.get("format"))
        if message.get("mode") in ("dictate", "meeting") and self.format.encoding == "container":
            raise SessionError("bad_format", "dictation streams raw audio: use pcm_s16le or pcm_f32le")
        self.session = open_session(self.ctx, message, admin=self.admin)
        self._new_clip()
        self._send_all(getattr(self.session, "opening", list)())  # a verify's spoken challenge
        self._send({"type": "ready", "mode": self.session.mode, "request_id": self.session.request_id,
                    "format": self.format.__dict__})

    def _receive(self):
        """Return the next binary frame (bytes) or parsed JSON message (dict)."""
        message = receive_frame(self.conn, self.ctx.policy, self._poll, SessionError)
        if isinstance(message, bytes):
            return message
        try:
            parsed = json.loads(message)
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            raise SessionError("bad_message", "text messages must be JSON objects") from None
        if not isinstance(parsed, dict):
            raise SessionError("bad_message", "text messages must be JSON objects")
        return parsed

    def _poll(self) -> None:
        if self.session is not None:
            self._send_all(self.session.poll())

    def _control(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "stop":
            lost = _lost_seconds(message)
            self._send_all(self.session.audio(self._end_clip()))
            # Only an enrollment clip is refused for audio lost on the way; other modes decide on what came.
            self._send_all(self.session.stop(lost) if self.session.mode == "enroll" else self.session.stop())
            self._new_clip()
        elif kind == "cancel":
            raise SessionError("cancelled", "cancelled by the client; nothing was stored")
        elif kind == "start":
            raise SessionError("bad_message", "this session has started already")
        else:
            raise SessionError("unknown_message", f"unknown message type {kind!r}; expected stop or cancel")

    def _audio(self, data: bytes) -> list[dict]:
        if self.stream is None:
            if len(self.container) + len(data) > self.limits.max_bytes:
                raise AudioError("too_large", f"at most {self.limits.max_bytes} bytes of audio per clip")
            self.container += data
            return []
        return self.session.audio(self.stream.feed(data))

    def _new_clip(self) -> None:
        self.container = bytearray()
        self.stream = None if self.format.encoding == "container" else PcmStream(self.format, self.limits)

    def _end_clip(self):
        if self.stream is not None:
            return self.stream.flush()
        return decode(bytes(self.container), None, self.limits)

    # -- sending

    def _send(self, message: dict) -> None:
        self.conn.send(json.dumps(message))

    def _send_all(self, messages: list[dict]) -> None:
        for message in messages:
            self._send(message)

    def _fail(self, code: str, message: str) -> None:
        try:
            self._send({"type": "error", "code": code, "message": message})
            self._close(_CLOSE_CODES.get(code, VIOLATION))
        except ConnectionClosed:
            pass

    def _close(self, code: int) -> None:
        try:
            self.conn.close(reason=code)
        except ConnectionClosed:
            pass


def _audio_format(spec) -> AudioFormat:
    """Read the start message's ``format`` (default: 16 kHz mono pcm_s16le)."""
    if spec is None:
        return AudioFormat("pcm_s16le")
    if not isinstance(spec, dict):
        raise SessionError("bad_format", "format must be an object such as {\"encoding\": \"pcm_s16le\", \"sample_rate\": 16000}")
    try:
        return AudioFormat(
            encoding=str(spec.get("encoding", "pcm_s16le")),
            sample_rate=int(spec.get("sample_rate", 16000)),
            channels=int(spec.get("channels", 1)),
        ).validate()
    except (TypeError, ValueError, OverflowError) as error:
        if isinstance(error, AudioError):
            raise
        raise SessionError("bad_format", "sample_rate and channels must be integers") from None


def _lost_seconds(message: dict) -> float:
    """Return the seconds of audio the client says it lost capturing this clip (``capture.lost_seconds``)."""
    capture = message.get("capture", {})
    lost = capture.get("lost_seconds", 0) if isinstance(capture, dict) else None
    if isinstance(lost, bool) or not isinstance(lost, (int, float)) or not 0 <= lost <= 3600:
        raise SessionError("bad_message", "capture.lost_seconds must be a number of seconds from 0 to 3600")
    return float(lost)
