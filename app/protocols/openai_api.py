"""OpenAI-compatible transcription: ``POST /v1/audio/transcriptions`` and ``GET /v1/models`` (docs/openai.md).

The API key (``Authorization: Bearer``) is the user's personal dictation key
(dictation_keys.py), and the recording goes through the same identity gate as Kõnele's
``/client/dynamic/recognize``: only the stretches that verify as the key's owner are
transcribed, so a stolen key writes down no one else's words. Another voice gets an empty
text, not an error (a Home Assistant-style client then simply hears nothing). Errors are in
OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``. This module only
translates: deciding is the gate's, reading bodies into memory app/serving/uploads.py's.
"""
from __future__ import annotations

import logging
import math
import time

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from ..audio.decode import AudioError, AudioLimits, decode
from .context import release_db, session_context
from ..errors import SessionError, VoiceGateError
from ..serving.extensions import csrf
from ..gate import transcript_export
from ..gate.base import PROBLEM_MESSAGES, Context
from ..gate.dictation import summary_state, transcribe_recording
from ..gate.opening import checked_language, open_dictation
from . import dictation_keys

logger = logging.getLogger(__name__)

bp = Blueprint("openai", __name__, url_prefix="/v1")
# Programs call it with a key in a header, never a form of ours.
csrf.exempt(bp)

FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
# The model id clients hard-code; any model named is served by the server's own Whisper.
ALIAS = "whisper-1"
_STATUS = {"busy": 503, "voiceprint_unavailable": 503, "not_enrolled": 403, "disabled": 403,
           "too_large": 413, "too_long": 413}
_TYPES = {401: "invalid_request_error", 403: "permission_error", 404: "invalid_request_error",
          413: "invalid_request_error", 429: "rate_limit_error", 503: "server_error"}


class OpenAIError(Exception):
    """A refusal answered in OpenAI's error shape with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


@bp.errorhandler(OpenAIError)
def _refused(error: OpenAIError):
    kind = _TYPES.get(error.status, "server_error" if error.status >= 500 else "invalid_request_error")
    response = jsonify(error={"message": error.message, "type": kind, "param": error.param, "code": error.code})
    if error.status == 503:
        response.headers["Retry-After"] = "1"
    return response, error.status


@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException):
    """Answer werkzeug's errors on these routes (an oversized or broken upload) in OpenAI's shape."""
    if error.code == 413:
        return _refused(OpenAIError(413, "the upload is larger than the server accepts", "file", "file_too_large"))
    code = (error.name or "error").lower().replace(" ", "_")
    return _refused(OpenAIError(error.code or 500, error.description or error.name, None, code))


@bp.route("/<path:_rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def _unknown(_rest: str):
    """Answer any other path or method under /v1 as OpenAI does: 404 Invalid URL."""
    raise OpenAIError(404, f"Invalid URL ({request.method} {request.path})")


# --------------------------------------------------------------------------- GET /v1/models

@bp.get("/models")
def models():
    """List the transcription models this server answers to (its Whisper, and the ``whisper-1`` alias)."""
    ctx = session_context("openai")
    _key_user(ctx)
    return jsonify(object="list", data=[_model(name) for name in _model_ids(ctx)])


@bp.get("/models/<path:model_id>")
def model(model_id: str):
    """Describe one model of the list."""
    ctx = session_context("openai")
    _key_user(ctx)
    if model_id not in _model_ids(ctx):
        raise OpenAIError(404, f"The model '{model_id}' does not exist", "model", "model_not_found")
    return jsonify(_model(model_id))


def _model_ids(ctx: Context) -> list[str]:
    name = ctx.engines.whisper_name
    return [ALIAS] + ([name] if name and name != ALIAS else [])


def _model(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "voicegate"}


# --------------------------------------------------------------------------- POST /v1/audio/transcriptions

@bp.post("/audio/transcriptions")
def transcriptions():
    """Transcribe the uploaded ``file`` for the key's owner: only the stretches that verify as their voice."""
    ctx = session_context("openai")
    user = _key_user(ctx)
    fields = _form()
    fmt = fields.get("response_format") or "json"
    if fmt not in FORMATS:
        raise OpenAIError(400, f"response_format must be one of {', '.join(FORMATS)}", "response_format", "invalid_value")
    _check_options(fields)
    try:
        language = checked_language(ctx, fields.get("language") or None)
    except SessionError as error:
        raise OpenAIError(400, error.message, "language", "unsupported_value") from None
    pool = ctx.engines.pool
    if pool.pending >= pool.capacity:
        raise OpenAIError(503, "the server is at capacity; try again in a moment", None, "busy")
    audio = _audio(ctx.policy.max_dictation_seconds)
    try:
        session = open_dictation(ctx, user, live=False, signed_in=True, language=language)  # the key is the credential
    except SessionError as error:
        raise OpenAIError(_STATUS.get(error.code, 400), PROBLEM_MESSAGES.get(error.code, error.message),
                          None, error.code) from None
    started = time.perf_counter()
    try:
        transcribe_recording(session, audio)
    except VoiceGateError as error:  # busy mid-way, a voiceprint whose key is gone: nothing is transcribed
        raise OpenAIError(_STATUS.get(error.code, 500), error.message, None, error.code) from None
    finally:
        session.close()
    cues = [{"start": f["start"], "end": f["end"], "text": f["text"]}
            for f in session.emitted if f["state"] == "accept" and f["text"]]
    state = summary_state(session.emitted)
    logger.info("openai transcription %s for %s: %s, %d of %d segments, %.2f s", session.request_id, user,
                state, len(cues), len(session.emitted), time.perf_counter() - started)
    response = _respond(fmt, cues, audio.size / 16000, session.written_language)
    response.headers["X-VoiceGate-State"] = state  # accept, reject (another voice), not_enough_speech, no_speech
    response.headers["X-Request-Id"] = session.request_id
    return response


def _respond(fmt: str, cues: list[dict], duration: float, language: str | None) -> Response:
    """Return the owner's verified segments in the asked ``response_format``."""
    text = " ".join(cue["text"] for cue in cues)
    if fmt == "json":
        return jsonify(text=text)
    if fmt == "text":
        return Response(text + "\n", mimetype="text/plain")
    if fmt in ("srt", "vtt"):
        mimetype = "text/vtt" if fmt == "vtt" else "application/x-subrip"
        return Response(transcript_export.plain_subtitles(cues, fmt), mimetype=mimetype)
    # Whisper's per-segment figures are not computed on this path: zeros, so typed clients still parse.
    segments = [{"id": index, "seek": int(cue["start"] * 100), "start": cue["start"], "end": cue["end"],
                 "text": cue["text"], "tokens": [], "temperature": 0.0, "avg_logprob": 0.0,
                 "compression_ratio": 0.0, "no_speech_prob": 0.0} for index, cue in enumerate(cues)]
    return jsonify(task="transcribe", language=language or "", duration=round(duration, 3), text=text,
                   segments=segments)


def _key_user(ctx: Context) -> str:
    """Return the name of the user whose dictation key the bearer header holds; raise 401 otherwise (audited)."""
    header = request.headers.get("Authorization", "")
    key = header[7:].strip() if header[:7].lower() == "bearer " else None
    user = dictation_keys.keyed_user(ctx, key)
    if user is None:
        message = ("Incorrect API key provided. The key is your personal dictation key (on /me); it changes when revoked."
                   if key else "You didn't provide an API key: send your dictation key as 'Authorization: Bearer KEY'.")
        raise OpenAIError(401, message, None, "invalid_api_key")
    name = user.name
    release_db()  # no connection held while the upload is decoded and transcribed
    return name


def _form():
    """Return the multipart form (the only body OpenAI's endpoint takes)."""
    if request.mimetype != "multipart/form-data":
        raise OpenAIError(400, "send the audio as multipart/form-data with the field 'file'", None, "invalid_request")
    return request.form


def _check_options(fields) -> None:
    """Check ``model``, ``temperature`` and ``stream``; ``prompt`` is taken and not used."""
    if not fields.get("model"):
        raise OpenAIError(400, "you must provide a model parameter", "model", "missing_required_parameter")
    temperature = fields.get("temperature")
    if temperature:
        try:
            value = float(temperature)
        except ValueError:
            value = math.nan
        if not 0.0 <= value <= 1.0:  # also refuses nan
            raise OpenAIError(400, "temperature must be a number from 0 to 1", "temperature", "invalid_value")
    if (fields.get("stream") or "false").lower() != "false":
        raise OpenAIError(400, "streaming is not supported; the answer comes whole", "stream", "unsupported_value")


def _audio(max_seconds: float):
    """Return the uploaded ``file`` as 16 kHz float32, read in memory only (no temporary file)."""
    upload = request.files.get("file")
    if upload is None:
        raise OpenAIError(400, "the audio must be in the multipart field 'file'", "file", "missing_required_parameter")
    limits = AudioLimits(max_bytes=int(current_app.config["MAX_AUDIO_BYTES"]), max_seconds=max_seconds)
    try:
        return decode(upload.read(), None, limits)
    except AudioError as error:
        raise OpenAIError(_STATUS.get(error.code, 400), error.message, "file", error.code) from None
