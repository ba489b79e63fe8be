"""Kõnele's endpoints: the kaldi-gstreamer-server protocol over identity-gated dictation (docs/konele.md).

``WS /client/ws/speech``, ``WS /client/ws/status`` and ``PUT|POST /client/dynamic/recognize``.
Kõnele cannot sign in, so a personal dictation key (app/dictation_keys.py) names the user,
and every utterance must still verify as that user's voice: the engine is the same
DictateSession as on /ws/voice; this module only translates its messages.
"""
from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import replace
from urllib.parse import parse_qsl

import numpy as np
from flask import Blueprint, current_app, jsonify, request
from simple_websocket import ConnectionClosed

from ..audio.decode import AudioError, AudioLimits
from ..errors import SessionError, VoiceGateError
from ..audio.vad import SAMPLE_RATE
from .context import release_db, session_context
from ..engines.runtime import engines_loaded, get_engines
from ..serving.extensions import csrf, sock
from ..gate import store
from ..serving import uploads
from ..gate.base import PROBLEM_MESSAGES, Context, new_request_id
from ..gate.dictation import DictateSession
from ..gate.opening import open_dictation
from . import dictation_keys
from .frames import receive_frame
from .kaldi_audio import AudioIntake, has_header, parse_caps

logger = logging.getLogger(__name__)

bp = Blueprint("kaldi", __name__, url_prefix="/client")
# Kõnele and scripts post audio here with a key, never from a form of ours.
csrf.exempt(bp)

# kaldi-gstreamer-server's status codes.
SUCCESS, NO_SPEECH, ABORTED, NOT_ALLOWED, NOT_AVAILABLE = 0, 1, 2, 5, 9
_STATUS = {"busy": NOT_AVAILABLE, "unknown_user": NOT_ALLOWED, "disabled": NOT_ALLOWED,
           "not_enrolled": NOT_ALLOWED, "locked": NOT_ALLOWED}
_HTTP_STATUS = {SUCCESS: 200, NO_SPEECH: 200, ABORTED: 400, NOT_ALLOWED: 403, NOT_AVAILABLE: 503}
KEY_HEADER = "X-Dictation-Key"
_KEY = re.compile(r"^\d{1,18}\.[A-Za-z0-9_-]{1,64}$")


class KaldiError(Exception):
    """A refusal answered as ``{"status": N, "message": ...}`` and a close."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


# --------------------------------------------------------------------------- opening a dictation

def request_params() -> dict[str, str]:
    """Return the request's query parameters, with the dictation key read up to a stray ``?``.

    kaldi-gstreamer-server's reference client appends ``?content-type=...`` even to a URL
    that already holds ``?key=...``: the key then ends at that ``?``, and the parameters
    after it still count.
    """
    params = dict(request.args.items())
    key = params.get("key") or ""
    if "?" in key:
        params["key"], _, rest = key.partition("?")
        for name, value in parse_qsl(rest, keep_blank_values=True):
            params.setdefault(name, value)
    return params


def request_key(params: dict[str, str]) -> str | None:
    """Return the dictation key of the current request: ``key=`` in the query, or the X-Dictation-Key header."""
    return params.get("key") or request.headers.get(KEY_HEADER) or None


def open_kaldi_dictation(ctx: Context, key: str | None, partials: bool, live: bool = True) -> DictateSession:
    """Return a dictation session for the key's user, or raise KaldiError (5 not allowed, 9 busy).

    A missing or wrong key is audited like the sessions' own refusals. Without
    ``partials`` the session computes none (they would only cost CPU).
    """
    user = dictation_keys.user_for(key, ctx.secret_key) if key and _KEY.match(key) else None
    if user is None:
        reason = "bad_key" if key else "no_key"
        store.record(ctx.audit(new_request_id(), "transcribe", reason, reason=reason))
        raise KaldiError(NOT_ALLOWED, "this dictation URL holds no valid key; ask for your personal URL "
                         "(it changes when the key is revoked)")
    pool = ctx.engines.pool
    if pool.pending >= pool.capacity:
        raise KaldiError(NOT_AVAILABLE, "the server is at capacity; try again in a moment")
    if not partials:
        ctx = replace(ctx, policy=replace(ctx.policy, partial_interval=float("inf")))
    try:
        return open_dictation(ctx, user.name, live=live, signed_in=True)  # the key is the credential
    except SessionError as error:
        message = PROBLEM_MESSAGES.get(error.code, error.message)
        raise KaldiError(_STATUS.get(error.code, ABORTED), f"dictation is not allowed: {message}") from None


class KaldiDictation:
    """A DictateSession's messages in kaldi terms: one final per verified segment, refusals as KaldiError.

    Another voice's segment is skipped without text; only a session that ends with no
    verified speech at all is refused (status 5). No final is ever empty: Kõnele would
    take it as a result and insert nothing.
    """

    def __init__(self, session: DictateSession, partials: bool):
        self.session, self.partials = session, partials
        self.id = session.request_id
        self.segment = 0
        self.finals: list[str] = []
        self._received = 0
        self._partial: str | None = None  # the current segment's last partial
        self._rejected = 0
        self._too_short = 0

    def feed(self, samples: np.ndarray) -> list[dict]:
        """Take 16 kHz float32 audio; return the results it completes."""
        self._received += samples.size
        return self._relay(self.session.audio(samples))

    def poll(self) -> list[dict]:
        """Return a partial result that finished computing meanwhile, if any."""
        return self._relay(self.session.poll())

    def end(self) -> list[dict]:
        """End the audio (EOS): return the last results; status 5 or 1 when nothing was verified."""
        out = self._relay(self.session.stop())
        if not self.finals:
            if self._rejected:
                raise KaldiError(NOT_ALLOWED, "the voice does not match this dictation key's user; nothing was transcribed")
            reason = "too little speech to check the voice" if self._too_short else "no speech was heard"
            raise KaldiError(NO_SPEECH, reason)
        return out

    def _relay(self, messages: list[dict]) -> list[dict]:
        out = []
        for message in messages:
            if message["type"] == "partial" and self.partials and message["text"] != self._partial:
                self._partial = message["text"]
                out.append(self._result(message["text"], final=False))
            elif message["type"] == "final":
                out += self._final(message)
        return out

    def _final(self, message: dict) -> list[dict]:
        if message["state"] == "reject":
            self._rejected += 1
            return []
        if message["state"] != "accept":
            self._too_short += 1
            return []
        if not message["text"]:
            return []  # nothing Whisper could write: an empty final would insert nothing
        result = self._result(message["text"], final=True)
        result.update({"segment-start": message["start"], "segment-length": round(message["end"] - message["start"], 3),
                       "total-length": round(self._received / SAMPLE_RATE, 3)})
        self.finals.append(message["text"])
        self.segment += 1
        self._partial = None
        return [result]

    def _result(self, text: str, final: bool) -> dict:
        return {"status": SUCCESS, "segment": self.segment, "id": self.id,
                "result": {"hypotheses": [{"transcript": text}], "final": final}}


# --------------------------------------------------------------------------- WS /client/ws/speech

@sock.route("/ws/speech", bp=bp)
def speech(ws):
    """Run one Kõnele dictation on this socket."""
    params = request_params()
    SpeechChannel(ws, session_context("kaldi"), params, request_key(params)).serve()


class SpeechChannel:
    """Drive one kaldi dictation over anything with ``receive(timeout)``, ``send(text)`` and ``close()``.

    As kaldi-gstreamer-server does, the socket stays open until the client sends EOS;
    then the last results are sent and the server closes. The client ends the session
    (Kõnele does after its first final in its default mode), never the server.
    """

    def __init__(self, conn, ctx: Context, params: dict[str, str], key: str | None):
        self.conn, self.ctx, self.params, self.key = conn, ctx, params, key
        self.dictation: KaldiDictation | None = None
        self.intake: AudioIntake | None = None

    def serve(self) -> None:
        """Run the dictation to its end; a refusal is one status message and a close."""
        try:
            self._open()
            release_db()  # an idle socket holds no database connection
            self._run()
        except KaldiError as error:
            self._refuse(error.status, error.message)
        except SessionError as error:
            self._refuse(_STATUS.get(error.code, ABORTED), error.message)
        except AudioError as error:
            self._refuse(ABORTED, error.message)
        except VoiceGateError as error:  # e.g. a voiceprint whose key is gone (app/store/vault.py): transcribe nothing
            self._refuse(ABORTED, error.message)
        except ConnectionClosed:
            # The client went away: its open utterance is dropped; finished ones are audited already.
            logger.info("kaldi client left session %s", self.dictation.id if self.dictation else "(unopened)")
        except Exception:
            logger.exception("kaldi session failed")
            self._refuse(ABORTED, "the server failed to handle this session")
        finally:
            if self.dictation is not None:
                self.dictation.session.close()  # its stream slot, however the session ended
            _requests().done()

    def _open(self) -> None:
        partials = self.params.get("partial", "").lower() == "true"
        session = open_kaldi_dictation(self.ctx, self.key, partials)
        try:
            fmt = parse_caps(self.params.get("content-type"))
        except AudioError as error:
            session.close()
            raise KaldiError(ABORTED, error.message) from None
        self.intake = AudioIntake(fmt, AudioLimits(max_bytes=int(current_app.config["MAX_AUDIO_BYTES"]),
                                                   max_seconds=self.ctx.policy.max_dictation_seconds))
        self.dictation = KaldiDictation(session, partials)
        logger.info("kaldi session %s for %s (%s, partials %s)", self.dictation.id, session.user,
                    fmt.encoding if fmt else "sniffed", partials)

    def _run(self) -> None:
        while True:
            message = self._receive()
            if isinstance(message, bytes):
                self._send_all(self.dictation.feed(self.intake.feed(message)))
            elif message.strip() == "EOS":
                self._send_all(self.dictation.feed(self.intake.finish()))
                self._send_all(self.dictation.end())
                break
            else:
                self._text(message)
        self._close()

    def _receive(self) -> bytes | str:
        """Return the next frame, sending partials while waiting."""
        return receive_frame(self.conn, self.ctx.policy, lambda: self._send_all(self.dictation.poll()),
                             lambda _code, message: KaldiError(ABORTED, message))

    def _text(self, message: str) -> None:
        """Ignore the text frames kaldi clients may send besides EOS (adaptation state)."""
        try:
            parsed = json.loads(message)
        except (ValueError, RecursionError):
            parsed = None
        if not (isinstance(parsed, dict) and "adaptation_state" in parsed):
            logger.info("kaldi session %s: ignored a text frame that is neither EOS nor adaptation state",
                        self.dictation.id)

    def _send_all(self, messages: list[dict]) -> None:
        for message in messages:
            self.conn.send(json.dumps(message))

    def _refuse(self, status: int, message: str) -> None:
        logger.info("kaldi session %s: status %d: %s", self.dictation.id if self.dictation else "(unopened)",
                    status, message)
        try:
            self.conn.send(json.dumps({"status": status, "message": message}))
        except ConnectionClosed:
            return
        self._close()

    def _close(self) -> None:
        try:
            self.conn.close(reason=1000)
        except ConnectionClosed:
            pass


# --------------------------------------------------------------------------- WS /client/ws/status

class _Requests:
    """How many kaldi requests this app has finished (``num_requests_processed``)."""

    def __init__(self):
        self.count = 0
        self._lock = threading.Lock()

    def done(self) -> None:
        """Count one more finished request."""
        with self._lock:
            self.count += 1


def _requests() -> _Requests:
    return current_app.extensions.setdefault("voicegate.kaldi_requests", _Requests())


def status_now() -> dict:
    """Return the status message: free inference slots (a new session is refused at 0) and requests served."""
    app = current_app._get_current_object()
    available = 0
    if engines_loaded(app):
        engines = get_engines(app)
        # A new session needs a free dictation slot and room in the inference pool.
        pool_room = engines.pool.capacity - engines.pool.pending
        available = max(0, min(pool_room, engines.streams.room()))
    return {"num_workers_available": available, "num_requests_processed": _requests().count}


@sock.route("/ws/status", bp=bp)
def status(ws):
    """Send the status once and close: a status socket held open must cost the server nothing."""
    ws.send(json.dumps(status_now()))
    ws.close(reason=1000)


# --------------------------------------------------------------------------- PUT|POST /client/dynamic/recognize

@bp.errorhandler(KaldiError)
def _refused(error: KaldiError):
    response = jsonify(status=error.status, message=error.message)
    if error.status == NOT_AVAILABLE:
        response.headers["Retry-After"] = "1"
    return response, _HTTP_STATUS.get(error.status, 400)


@bp.errorhandler(413)
def _too_large(_error):
    return _refused(KaldiError(ABORTED, "the upload is larger than the server accepts"))


@bp.route("/dynamic/recognize", methods=["PUT", "POST"])
def recognize():
    """Transcribe a whole recording for the key's user, only if its voice verifies as theirs.

    The body is the audio (chunked transfer allowed); ``content-type`` in the query, or
    an audio/* Content-Type header, says how it is encoded, as on the WebSocket.
    """
    ctx = session_context("kaldi")
    params = request_params()
    session = None
    try:
        session = open_kaldi_dictation(ctx, request_key(params), partials=False, live=False)
        caps = params.get("content-type")
        if caps is None and request.mimetype.startswith("audio/"):
            caps = request.headers["Content-Type"]
        data = uploads.read_body()
        # Programs like curl label a raw body as a form; a file's own header then says what it is.
        fmt = None if caps is None and has_header(data) else parse_caps(caps)
        dictation = KaldiDictation(session, partials=False)
        intake = AudioIntake(fmt, AudioLimits(max_bytes=int(current_app.config["MAX_AUDIO_BYTES"]),
                                              max_seconds=ctx.policy.max_dictation_seconds))
        dictation.feed(intake.feed(data))
        dictation.feed(intake.finish())
        dictation.end()
    except SessionError as error:
        raise KaldiError(_STATUS.get(error.code, ABORTED), error.message) from None
    except AudioError as error:
        raise KaldiError(ABORTED, error.message) from None
    finally:
        if session is not None:
            session.close()
        _requests().done()
    text = " ".join(t for t in dictation.finals if t)
    return jsonify(status=SUCCESS, id=dictation.id, hypotheses=[{"utterance": text}])
