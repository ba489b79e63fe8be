"""The OpenAPI 3 description of the HTTP API (/api/v1), served as JSON and as a readable page.

Kept beside the API (app/protocols/http_api.py) and checked against the running server by
tests/test_openapi.py (schemathesis): documented shapes hold and no input gets a 500.
"""
from __future__ import annotations

from flask import Blueprint, jsonify, render_template, request

bp = Blueprint("openapi", __name__, url_prefix="/api/v1")

_ERROR = {"$ref": "#/components/schemas/Error"}
_STATES = ["accept", "reject", "replay", "challenge_failed", "challenge_expired", "locked", "no_speech",
           "not_enough_speech", "not_enrolled", "disabled"]


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


_AUDIO_PARAMETERS = [
    {"name": "user", "in": "query", "required": False, "schema": {"type": "string", "maxLength": 64},
     "description": "The claimed user (1:1). Without it, /verify identifies the speaker among everyone (1:N)."},
    {"name": "encoding", "in": "query", "required": False,
     "schema": {"type": "string", "enum": ["container", "pcm_s16le", "pcm_f32le"]},
     "description": "Raw PCM encoding; absent or `container`: the bytes carry their own header (WAV, FLAC, Ogg, WebM, MP3)."},
    {"name": "sample_rate", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 8000, "maximum": 192000},
     "description": "Sample rate of raw PCM (default 16000)."},
    {"name": "channels", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 8},
     "description": "Channels of raw PCM (default 1)."},
]

_AUDIO_BODY = {
    "required": True,
    "description": "One clip: a raw body, or a multipart upload with the audio in the field `audio` "
                   "(its form fields then replace the query parameters).",
    "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "audio/wav": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["audio"],
            "properties": {"audio": {"type": "string", "format": "binary"}, "user": {"type": "string", "maxLength": 64},
                           "challenge": {"type": "string", "maxLength": 64},
                           "encoding": {"type": "string", "enum": ["container", "pcm_s16le", "pcm_f32le"]},
                           "sample_rate": {"type": "integer"}, "channels": {"type": "integer"}}}},
    },
}

_EXPORTS = {
    "text/vtt": {"schema": {"type": "string"}},
    "application/x-subrip": {"schema": {"type": "string"}},
    "application/json": {"schema": {"type": "object", "required": ["roster", "lines"]}},
}

_COMMON_ERRORS = {
    "400": _error("Bad input: undecodable audio (`bad_audio`, `bad_format`, `truncated`, ...), too long (`too_long`), "
                  "or a missing field"),
    "401": _error("A session token that is invalid (`bad_token`), expired (`token_expired`) or another user's"),
    "404": _error("No user by that name (`unknown_user`)"),
    "413": _error("The upload is larger than the server accepts (`too_large`)"),
    "503": _error("The server is at capacity (`busy`); try again after `Retry-After` seconds. Or the enrolled "
                  "voices cannot be decrypted (`voiceprint_unavailable`): the keystore or a key is missing"),
}

SPEC: dict = {
    "openapi": "3.0.3",
    "info": {
        "title": "VoiceGate HTTP API",
        "version": "1",
        "description": "Verify a speaker, transcribe a verified speaker, ask about an enrollment. "
                       "Every decision is audited; no audio is kept. Streaming (WebSocket) is described in "
                       "docs/protocol.md, Kõnele's endpoints in docs/konele.md.",
    },
    "servers": [{"url": "/api/v1"}],
    "components": {
        "securitySchemes": {
            "session": {"type": "http", "scheme": "bearer",
                        "description": "The `token` of an accepted verification (expires after a while)."},
            "invite": {"type": "apiKey", "in": "header", "name": "X-Invite-Token",
                       "description": "A valid enrollment invite token (for /users/{name}/enrollment)."},
        },
        "schemas": {
            "Error": {
                "type": "object", "required": ["error"], "additionalProperties": False,
                "properties": {"error": {"type": "object", "required": ["code", "message"],
                                         "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}},
            },
            "Decision": {
                "type": "object",
                "required": ["mode", "request_id", "state", "user", "audio_seconds"],
                "description": "`score`, `threshold` and `runner_up_score` are shown on an accept and to a signed-in "
                               "admin only; `not_enrolled` and `disabled` are told to an admin only (others get "
                               "`reject`).",
                "properties": {
                    "mode": {"type": "string", "enum": ["verify"]},
                    "request_id": {"type": "string", "description": "The audit log's id of this decision."},
                    "state": {"type": "string", "enum": _STATES},
                    "user": {"type": "string", "nullable": True,
                             "description": "The claimed user, or on a 1:N accept the one recognised."},
                    "score": {"type": "number", "nullable": True, "description": "Cosine similarity with the voiceprint."},
                    "runner_up_score": {"type": "number", "description": "1:N only: the second best score."},
                    "threshold": {"type": "number", "description": "The raw cosine floor of an accept."},
                    "calibrated_score": {"type": "number", "nullable": True,
                                         "description": "The score the decision was made on: AS-norm, calibrated "
                                                        "for the audio's quality (docs/threshold.md)."},
                    "calibrated_threshold": {"type": "number", "nullable": True,
                                             "description": "The calibrated score the target false-accept rate needs."},
                    "target_far": {"type": "number", "description": "The target false-accept rate in force."},
                    "audio_seconds": {"type": "number"},
                    "speech_seconds": {"type": "number"},
                    "message": {"type": "string", "description": "Why no decision was made (for people)."},
                    "retry_after": {"type": "integer", "description": "`locked`: seconds until this client may try again."},
                    "token": {"type": "string", "description": "On accept: a signed session token."},
                    "token_expires_in": {"type": "integer", "description": "Seconds the token stays valid."},
                },
            },
            "Transcription": {
                "type": "object", "required": ["mode", "user", "state", "text", "segments"],
                "properties": {
                    "mode": {"type": "string", "enum": ["transcribe"]},
                    "user": {"type": "string"},
                    "request_id": {"type": "string", "description": "The audit log's id of this recording."},
                    "state": {"type": "string",
                              "enum": ["accept", "reject", "not_enough_speech", "no_speech", "disabled", "not_enrolled", "locked"],
                              "description": "accept when any segment verified as the user; else the most telling refusal."},
                    "message": {"type": "string", "description": "Why nothing was transcribed (for people)."},
                    "threshold": {"type": "number"},
                    "audio_seconds": {"type": "number"},
                    "text": {"type": "string", "nullable": True,
                             "description": "The verified segments' text joined; null when none verified."},
                    "segments": {"type": "array", "items": {
                        "type": "object", "required": ["start", "end", "state", "score", "text"],
                        "properties": {"start": {"type": "number"}, "end": {"type": "number"},
                                       "state": {"type": "string"}, "score": {"type": "number", "nullable": True},
                                       "text": {"type": "string", "nullable": True}}}},
                },
            },
            "Line": {
                "type": "object", "required": ["start", "end"],
                "description": "One line of a meeting: who said it (null: an unverified speaker, never with text), "
                               "when (seconds from the recording's start), and what. A meeting's lines also carry "
                               "`line` (their number), `type` (`line`) and, for an admin, `score` (the best raw "
                               "score); an export ignores them.",
                "properties": {
                    "start": {"type": "number", "minimum": 0, "maximum": 10000000},
                    "end": {"type": "number", "minimum": 0, "maximum": 10000000},
                    "speaker": {"type": "string", "nullable": True, "maxLength": 4000,
                                "description": "The roster member's user name; null for an unverified speaker."},
                    "name": {"type": "string", "nullable": True, "maxLength": 4000,
                             "description": "The name to show (the user's display name, or `unverified speaker`)."},
                    "text": {"type": "string", "nullable": True, "maxLength": 4000},
                    "state": {"type": "string", "nullable": True,
                              "description": "accept (named), reject (unverified speaker) or not_enough_speech."},
                },
            },
            "Meeting": {
                "type": "object", "required": ["mode", "request_id", "roster", "audio_seconds", "lines"],
                "properties": {
                    "mode": {"type": "string", "enum": ["meeting"]},
                    "request_id": {"type": "string", "description": "The audit log's id of this meeting."},
                    "roster": {"type": "array", "items": {"type": "object", "required": ["user", "name"],
                                                          "properties": {"user": {"type": "string"},
                                                                         "name": {"type": "string"}}}},
                    "audio_seconds": {"type": "number"},
                    "lines": {"type": "array", "items": {"$ref": "#/components/schemas/Line"}},
                },
            },
            "Enrollment": {
                "type": "object",
                "required": ["user", "active", "enrolled", "clips", "speech_seconds", "enrolled_at"],
                "properties": {
                    "user": {"type": "string"}, "active": {"type": "boolean"}, "enrolled": {"type": "boolean"},
                    "clips": {"type": "integer"}, "speech_seconds": {"type": "number"},
                    "enrolled_at": {"type": "string", "format": "date-time", "nullable": True},
                },
            },
        },
    },
    "paths": {
        "/challenge": {"post": {
            "operationId": "challenge",
            "summary": "Get the spoken challenge (6 random digits) for one voice login",
            "description": "Valid 60 s, for one /verify from the same client (and the user, if given). "
                           "409 `challenge_off` when the server's policy asks for no challenge.",
            "parameters": [{"name": "user", "in": "query", "required": False, "schema": {"type": "string", "maxLength": 64},
                            "description": "Bind the challenge to this user (else it serves any, or 1:N)."}],
            "security": [{}, {"session": []}],
            "responses": {
                "200": {"description": "The challenge", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["challenge", "text", "expires_in"],
                    "properties": {"challenge": {"type": "string", "description": "Its ID, for /verify's `challenge`."},
                                   "text": {"type": "string", "description": "The digits to say, e.g. `4 7 1 9 0 2`."},
                                   "expires_in": {"type": "integer"}}}}}},
                "400": _error("A malformed field"),
                "401": _COMMON_ERRORS["401"],
                "409": _error("The policy asks for no challenge (`challenge_off`)"),
                "503": _COMMON_ERRORS["503"],
            },
        }},
        "/verify": {"post": {
            "operationId": "verify",
            "summary": "Verify a clip against a user (1:1), or identify the speaker (1:N)",
            "description": "A failure counts against this client's limits (never the user's elsewhere); an accept "
                           "carries a session token. With the challenge policy on, name the challenge "
                           "(`challenge`, from /challenge): the clip must say its digits.",
            "parameters": _AUDIO_PARAMETERS + [
                {"name": "challenge", "in": "query", "required": False, "schema": {"type": "string", "maxLength": 64},
                 "description": "The ID from POST /challenge (required while the challenge policy is on)."}],
            "requestBody": _AUDIO_BODY,
            "security": [{}, {"session": []}],
            "responses": {"200": {"description": "The decision (also when no decision could be made: see `state`)",
                                  "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Decision"}}}},
                          **_COMMON_ERRORS,
                          "400": _error(_COMMON_ERRORS["400"]["description"] + "; no challenge named while the "
                                        "policy asks for one (`challenge_required`)"),
                          "409": _error("The challenge is unknown, used, or for another user or client (`bad_challenge`)")},
        }},
        "/transcribe": {"post": {
            "operationId": "transcribe",
            "summary": "Transcribe a recording, only the parts that verify as the token's or the claimed user; "
                       "or a meeting's, every line named for who said it",
            "description": "The recording is split into segments at pauses; each is verified (even with a session "
                           "token), and only verified segments are transcribed, so no one else's speech ever is. "
                           "With `roster`, a meeting (up to the policy's longest dictation): every stretch is "
                           "identified among the roster, and an unverified speaker's lines carry no text. "
                           "A roster is chosen by an admin, or by a signed-in user (session token) who is on it.",
            "parameters": _AUDIO_PARAMETERS + [
                {"name": "roster", "in": "query", "required": False, "schema": {"type": "string", "maxLength": 1000},
                 "description": "A meeting: 2 to 10 enrolled user names, comma-separated."},
                {"name": "format", "in": "query", "required": False,
                 "schema": {"type": "string", "enum": ["json", "vtt", "srt"]},
                 "description": "A meeting's answer: its lines as JSON (default), or the transcript as WebVTT or SRT."}],
            "requestBody": _AUDIO_BODY,
            "security": [{"session": []}, {}],
            "responses": {"200": {"description": "The decision, and the text when accepted; or a meeting's lines",
                                  "content": {"application/json": {"schema": {"oneOf": [
                                      {"$ref": "#/components/schemas/Transcription"},
                                      {"$ref": "#/components/schemas/Meeting"}]}},
                                      "text/vtt": _EXPORTS["text/vtt"],
                                      "application/x-subrip": _EXPORTS["application/x-subrip"]}},
                          **_COMMON_ERRORS,
                          "400": _error(_COMMON_ERRORS["400"]["description"] + "; a roster that is not 2 to 10 "
                                        "enrolled users (`bad_roster`)"),
                          "401": _error(_COMMON_ERRORS["401"]["description"] + "; a roster chosen by someone who "
                                        "may not (`not_allowed`)")},
        }},
        "/transcripts/export": {"post": {
            "operationId": "exportTranscript",
            "summary": "Turn a meeting's lines into a WebVTT (with `<v Name>` voice tags), SRT or JSON file",
            "description": "For WebSocket clients, which hold a meeting's lines: the server keeps none. Nothing is "
                           "stored or audited; the answer is the file.",
            "parameters": [{"name": "format", "in": "query", "required": False,
                            "schema": {"type": "string", "enum": ["vtt", "srt", "json"]}, "description": "Default vtt."}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["lines"],
                "properties": {"lines": {"type": "array", "maxItems": 10000, "items": {"$ref": "#/components/schemas/Line"}},
                               "roster": {"type": "array", "nullable": True}}}}}},
            "security": [{}],
            "responses": {"200": {"description": "The transcript file", "content": _EXPORTS},
                          "400": _error("Lines that cannot be exported (`bad_request`), or an unknown format (`bad_format`)")},
        }},
        "/users/{name}/enrollment": {"get": {
            "operationId": "enrollment",
            "summary": "Whether a user has enrolled (for that user's session token, an invite holder, or an admin)",
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 64}},
                {"name": "invite", "in": "query", "required": False, "schema": {"type": "string"},
                 "description": "An enrollment invite token (or the X-Invite-Token header)."},
            ],
            "security": [{"session": []}, {"invite": []}],
            "responses": {
                "200": {"description": "The user's enrollment",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Enrollment"}}}},
                "401": _error("No valid session token, invite or admin sign-in for this user (`not_allowed`, `bad_token`)"),
                "404": _error("No user by that name (`unknown_user`)"),
            },
        }},
    },
}


@bp.get("/openapi.json")
def openapi_json():
    """Return the OpenAPI 3 description of /api/v1."""
    response = jsonify(SPEC)
    response.headers["Access-Control-Allow-Origin"] = "*"  # a description holds no secrets
    return response


@bp.get("/docs")
def docs():
    """Show the HTTP API's description as a page."""
    return render_template("pages/api_docs.html", spec=SPEC, base=request.host_url.rstrip("/") + "/api/v1")
