"""HTTP JSON API under /api/v1: verify a clip, transcribe a verified clip, enrollment status."""
from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from ..gate import tokens
from ..errors import SessionError, VoiceGateError
from ..gate import store
from ..audio.decode import AudioError, AudioFormat, AudioLimits, decode
from .context import is_admin, session_context
from ..store.models import EnrollmentInvite
from ..gate.settings import current_policy

from ..gate import transcript_export
from ..gate.dictation import summary_state, transcribe_recording
from ..gate.meeting import open_meeting, transcribe_meeting
from ..gate.opening import open_dictation
from ..gate.verification import challenge_required, verify_audio
from ..serving import uploads

logger = logging.getLogger(__name__)
bp = Blueprint("api", __name__, url_prefix="/api/v1")

_STATUS = {"busy": 503, "unknown_user": 404, "not_allowed": 401, "bad_token": 401, "token_expired": 401,
           "too_large": 413, "forbidden": 403, "voiceprint_unavailable": 503}


class ApiError(VoiceGateError):
    """An error answered as ``{"error": {"code", "message"}}`` with an HTTP status."""

    def __init__(self, code: str, message: str, status: int | None = None):
        super().__init__(code, message)
        self.status = status or _STATUS.get(code, 400)


@bp.errorhandler(ApiError)
def _api_error(error: ApiError):
    response = jsonify(error={"code": error.code, "message": error.message})
    if error.code == "busy":
        response.headers["Retry-After"] = "1"
    return response, error.status


@bp.errorhandler(VoiceGateError)
def _known_error(error: VoiceGateError):
    return _api_error(ApiError(error.code, error.message))


@bp.errorhandler(413)
def _too_large(_error):
    return _api_error(ApiError("too_large", "the upload is larger than the server accepts"))


@bp.app_errorhandler(HTTPException)
def _http_error(error: HTTPException):
    """Answer any HTTP error under /api/ (an unknown path, a wrong method, a crash) in the API's JSON shape."""
    if not request.path.startswith("/api/"):
        return error
    code = (error.name or "error").lower().replace(" ", "_")
    response, status = _api_error(ApiError(code, error.description or error.name, status=error.code))
    # The error's own headers stay (a 405 must say which methods are allowed).
    for name, value in error.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response, status


@bp.post("/challenge")
def challenge():
    """Issue a spoken challenge for one voice login (optionally for ``user``), valid 60 s, used once."""
    ctx = session_context("http")
    if not challenge_required(ctx):
        raise ApiError("challenge_off", "voice login needs no challenge on this server", 409)
    body = request.get_json(silent=True) if request.is_json else None
    user = (body.get("user") if isinstance(body, dict) else None) or request.values.get("user") or None
    if user is not None and not isinstance(user, str):
        raise ApiError("bad_request", "user must be a string")
    issued = store.issue_challenge(_token_user() or user, ctx.client_addr)
    return jsonify(challenge=issued.id, text=issued.text, expires_in=issued.expires_in())


@bp.post("/verify")
def verify():
    """Verify an uploaded clip against ``user`` (1:1), or identify the speaker without one.

    Under the challenge policy the upload names its challenge (``challenge=ID``), used up here.
    """
    user = _claimed_user()
    ctx = session_context("http")
    audio = _uploaded_audio()  # a bad upload is refused before it can use up the challenge
    taken = None
    if challenge_required(ctx):
        challenge_id = _fields().get("challenge")
        if not challenge_id:
            raise ApiError("challenge_required", "voice login needs a spoken challenge: POST /api/v1/challenge first")
        taken = store.take_challenge(challenge_id, user, ctx.client_addr)
        if taken is None:
            raise ApiError("bad_challenge", "this challenge is unknown, used, or for another user or client", 409)
    result = verify_audio(ctx, audio, user, limit=_token_user() is None, challenge=taken)
    if result["state"] == "unknown_user":  # only an admin is told
        raise ApiError("unknown_user", result["message"])
    return _answer(result)


@bp.post("/transcribe")
def transcribe():
    """Transcribe an uploaded clip, only if it verifies as the token's or the claimed user.

    A session token names the user; the voice in the clip is verified all the same,
    so that no one else's speech is ever transcribed.
    """
    if _fields().get("format", "json") not in transcript_export.FORMATS:
        raise ApiError("bad_format", f"format must be one of {', '.join(transcript_export.FORMATS)}")
    if _fields().get("roster"):
        return _meeting()
    user = _claimed_user()
    if not user:
        raise ApiError("user_required", "give a session token (Authorization: Bearer ...) or a user")
    ctx = session_context("http")
    audio = _uploaded_audio()
    signed_in = _token_user() is not None or ctx.admin
    try:
        session = open_dictation(ctx, user, live=False, signed_in=signed_in)
    except SessionError as error:
        if error.code in ("disabled", "not_enrolled", "locked"):
            return jsonify(mode="transcribe", user=user, state=error.code, message=error.message, text=None, segments=[])
        raise
    try:
        transcribe_recording(session, audio)
    finally:
        session.close()
    # Someone who only named the user sees no scores to tune a voice by (the audit log has them).
    segments = [{"start": f["start"], "end": f["end"], "state": f["state"], "score": f.get("score"), "text": f["text"]}
                for f in session.emitted]
    accepted = [segment["text"] for segment in segments if segment["state"] == "accept" and segment["text"]]
    figures = {"threshold": ctx.policy.threshold} if signed_in else {}
    return jsonify(mode="transcribe", user=user, request_id=session.request_id, state=summary_state(segments),
                   audio_seconds=round(audio.size / 16000, 3), text=" ".join(accepted) if accepted else None,
                   segments=segments, **figures)


def _meeting():
    """Transcribe an uploaded meeting recording for a roster: every line named for who said it.

    ``format`` (json, the default; vtt; srt) chooses the answer: the lines as JSON, or the
    transcript as a file. Nothing of it is kept once answered.
    """
    fmt = _fields().get("format", "json")
    caller = _token_user()
    ctx = session_context("http")
    session = open_meeting(ctx, _fields().get("roster"), caller or ctx.signed_in_user, admin=ctx.admin, live=False)
    try:
        audio = _uploaded_audio(current_policy().max_dictation_seconds)
        transcribe_meeting(session, audio)
    finally:
        session.close()
    if fmt != "json":
        body = transcript_export.export(session.emitted, fmt)
        return Response(body, mimetype=transcript_export.FORMATS[fmt].split(";")[0],
                        headers={"Content-Disposition": f'attachment; filename="meeting.{fmt}"'})
    return jsonify(mode="meeting", request_id=session.request_id, roster=session.roster_names(),
                   audio_seconds=round(audio.size / 16000, 3), lines=session.emitted)


@bp.post("/transcripts/export")
def export_transcript():
    """Turn a meeting's lines (JSON ``{"lines": [...], "roster": [...]}``) into ``format``: vtt, srt or json.

    For clients of the WebSocket, which hold the lines: the server keeps none and stores nothing here.
    """
    fmt = request.args.get("format", "vtt")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError("bad_request", "send a JSON object {\"lines\": [...]}")
    try:
        text = transcript_export.export(body.get("lines"), fmt, body.get("roster"))
    except transcript_export.ExportError as error:
        raise ApiError("bad_format" if "format" in str(error) else "bad_request", str(error)) from None
    return Response(text, mimetype=transcript_export.FORMATS[fmt].split(";")[0],
                    headers={"Content-Disposition": f'attachment; filename="meeting.{fmt}"'})


@bp.get("/users/<name>/enrollment")
def enrollment_status(name: str):
    """Report whether ``name`` has enrolled (for that user, an invite holder, or an admin)."""
    user = store.find_user(name)
    if not (is_admin() or _token_user() == name or _invite_user() == name):
        raise ApiError("not_allowed", "show a session token or an enrollment invite for this user")
    if user is None:
        raise ApiError("unknown_user", "there is no user by that name")
    voiceprint = user.voiceprint
    return jsonify(
        user=user.name, active=user.active, enrolled=voiceprint is not None,
        clips=voiceprint.clip_count if voiceprint else 0,
        speech_seconds=round(voiceprint.speech_seconds, 2) if voiceprint else 0.0,
        enrolled_at=voiceprint.created_at.isoformat() + "Z" if voiceprint else None,
    )


def _answer(result: dict):
    """Answer a decision as JSON; a client refused for a while also gets Retry-After."""
    response = jsonify({k: v for k, v in result.items() if k != "type"})
    if result.get("retry_after"):
        response.headers["Retry-After"] = str(result["retry_after"])
    return response


def _token_user() -> str | None:
    """Return the name of the live account the request's bearer token names, None without one."""
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return None
    max_age = current_policy().token_seconds
    try:
        claim = tokens.read(current_app.config["SECRET_KEY"], header[7:].strip(), max_age)
    except tokens.TokenError as error:
        raise ApiError(error.code, str(error)) from None
    account = store.find_account(claim.account)
    if account is None:  # deleted since: its token opens nothing, not even a new account of its name
        raise ApiError("bad_token", "the session token is not valid")
    return account.name


def _invite_user() -> str | None:
    token = request.headers.get("X-Invite-Token") or request.args.get("invite")
    invite = EnrollmentInvite.find_valid(token) if token else None
    return invite.user.name if invite else None


def _fields():
    """Return the request's parameters: the form of a multipart upload, else the query string.

    A raw body is never parsed as a form, even when a client (curl) labels it as one.
    """
    return request.form if request.mimetype == "multipart/form-data" else request.args


def _claimed_user() -> str | None:
    """Return the user named by a session token, or else by a ``user`` field."""
    token_user = _token_user()
    claimed = _fields().get("user") or None
    if token_user and claimed and claimed != token_user:
        raise ApiError("bad_token", "the session token belongs to another user")
    return token_user or claimed


def _uploaded_audio(max_seconds: float | None = None):
    """Return the clip (multipart field ``audio``, or the raw body) as 16 kHz float32, of at most ``max_seconds``.

    Either is read into memory only (app/serving/uploads.py): no audio in a temporary file.
    """
    fields = _fields()
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("audio")
        if upload is None:
            raise ApiError("bad_request", "a multipart upload needs its audio in the field 'audio'")
        data = upload.read()
    else:
        data = uploads.read_body()
    encoding = fields.get("encoding")
    fmt = None
    if encoding and encoding != "container":
        try:
            fmt = AudioFormat(encoding, int(fields.get("sample_rate", 16000)), int(fields.get("channels", 1))).validate()
        except (ValueError, OverflowError) as error:
            if isinstance(error, AudioError):
                raise
            raise ApiError("bad_format", "sample_rate and channels must be integers") from None
    max_seconds = max_seconds or current_policy().max_clip_seconds
    return decode(data, fmt, AudioLimits(max_bytes=int(current_app.config["MAX_AUDIO_BYTES"]), max_seconds=max_seconds))
