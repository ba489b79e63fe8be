"""Open a session from a client's ``start`` request: check the mode, the user, the token or the invite."""
from __future__ import annotations

from . import tokens
from . import store
from ..engines.transcriber import LANGUAGES
from ..errors import SessionError
from .base import PROBLEM_MESSAGES, Context, new_request_id, user_problem
from .dictation import DictateSession
from .enrollment import EnrollSession
from .meeting import open_meeting
from .verification import VerifySession

MODES = ("enroll", "verify", "dictate", "meeting")


def open_session(ctx: Context, start: dict, admin: bool = False):
    """Check a ``start`` request and return the session it asks for, or raise SessionError.

    ``start`` holds ``mode``; ``user`` (a claim; optional for verify, which then
    identifies); ``invite`` (enroll without an admin session); ``token`` (a session
    token from an accepted verification, naming the user for dictation or a meeting);
    ``roster`` (a meeting's users: see meeting.open_meeting for who may choose one);
    ``second_chance`` (verify: the client can answer ``again``, verification.VerifySession).
    """
    mode = start.get("mode")
    if mode not in MODES:
        raise SessionError("bad_mode", f"mode must be one of {', '.join(MODES)}")
    user = start.get("user")
    if user is not None and (not isinstance(user, str) or not user.strip()):
        raise SessionError("bad_message", "user must be a non-empty string")
    if mode == "enroll":
        return _open_enrollment(ctx, user, start.get("invite"), admin)
    signed_in = False
    if start.get("token"):
        user = token_user(ctx, start["token"], user)
        signed_in = True
    if mode == "meeting":
        # The caller: the token's user, or the sign-in cookie's on a same-origin socket (the /meeting page).
        return open_meeting(ctx, start.get("roster"), user if signed_in else ctx.signed_in_user, admin=admin)
    if mode == "dictate":
        if not user:
            raise SessionError("user_required", "dictation needs a user (or a session token)")
        # The browser's dictation page: the user's own sign-in cookie, on a same-origin socket.
        return open_dictation(ctx, user, signed_in=signed_in or admin or user == ctx.signed_in_user,
                              language=checked_language(ctx, start.get("language")))
    again = start.get("second_chance", False)
    if not isinstance(again, bool):
        raise SessionError("bad_message", "second_chance must be true or false")
    if mode == "verify" and not admin and not signed_in:
        # Decided after the audio, like a wrong voice: a stranger learns nothing from the start.
        return VerifySession(ctx, user, second_chance=again)
    if user:
        problem = user_problem(ctx, user, new_request_id(), "verify", limit=not signed_in)
        if problem:
            raise SessionError(problem, PROBLEM_MESSAGES[problem])
    return VerifySession(ctx, user, second_chance=again)


def checked_language(ctx: Context, language) -> str | None:
    """Return the language a client asks Whisper to write (None or "auto": detect it); raise SessionError if it cannot.

    A code Whisper does not know, or another language than English on an English-only model,
    is refused (``bad_language``): the words would come out wrong, or in English.
    """
    if language is None or language in ("", "auto"):
        return None
    if not isinstance(language, str) or language.lower() not in LANGUAGES:
        raise SessionError("bad_language", "language must be an ISO-639-1 code that Whisper knows (e.g. en, cs, nl), or auto")
    language = language.lower()
    if language != "en" and not ctx.engines.transcriber.multilingual:
        raise SessionError("bad_language", "this server's Whisper model writes English only; an admin can choose "
                                           "the multilingual one (base)")
    return language


def open_dictation(ctx: Context, user: str, live: bool = True, *, signed_in: bool = False,
                   language: str | None = None) -> DictateSession:
    """Return a dictation for ``user`` behind the identity gate, or raise SessionError (audited) if they cannot dictate.

    ``signed_in``: the caller proved to be ``user`` (a session token or a dictation key), or is
    an admin, so the per-client limits, which only other people's failures could have tripped,
    do not apply, and the scores are theirs to see. Anyone else naming a user who does not
    exist, is disabled or has not enrolled gets what a wrong voice gets: a session whose every
    utterance is rejected (after the same work), so that the name's standing stays private.
    ``language``: as checked_language returns it (None: detected).
    """
    problem = user_problem(ctx, user, new_request_id(), "transcribe", limit=not signed_in)
    if problem == "locked" or (problem and signed_in):
        raise SessionError(problem, PROBLEM_MESSAGES[problem])
    return DictateSession(ctx, user, live=live, shows_scores=signed_in, standing=problem, language=language)


def token_user(ctx: Context, token, claimed: str | None = None) -> str:
    """Return the name of the live account a session token names; raise SessionError otherwise.

    The token names the account by its public id: a deleted account's token opens nothing,
    not even a later account of the same name.
    """
    try:
        claim = tokens.read(ctx.secret_key, str(token), ctx.policy.token_seconds)
    except tokens.TokenError as error:
        raise SessionError(error.code, str(error)) from None
    account = store.find_account(claim.account)
    if account is None:
        raise SessionError("bad_token", "the session token is not valid")
    if claimed and claimed != account.name:
        raise SessionError("bad_token", "the session token belongs to another user")
    return account.name


def _open_enrollment(ctx: Context, user: str | None, invite_token: str | None, admin: bool) -> EnrollSession:
    from ..store.models import EnrollmentInvite

    if invite_token:
        invite = EnrollmentInvite.find_valid(str(invite_token))
        if invite is None:
            raise SessionError("bad_invite", "this enrollment invite is unknown, used or expired")
        if user and user != invite.user.name:
            raise SessionError("bad_invite", "this enrollment invite is for another user")
        target, invite_id = invite.user, invite.id
    elif admin:
        target, invite_id = store.find_user(user) if user else None, None
        if target is None:
            raise SessionError("unknown_user", PROBLEM_MESSAGES["unknown_user"])
    else:
        raise SessionError("not_allowed", "enrollment needs an invite (or an admin session)")
    if not target.active:
        raise SessionError("disabled", PROBLEM_MESSAGES["disabled"])
    return EnrollSession(ctx, target.id, target.name, invite_id)
