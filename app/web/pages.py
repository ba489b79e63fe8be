"""The people's pages: enroll a voice from an invite, log in by voice, dictate.

The pages speak the WebSocket protocol (docs/protocol.md) from the browser. A voice
login ends with the page posting the signed token of an accepted verification to
``POST /session``; only that, checked here, puts a user in the session cookie.
"""
from __future__ import annotations

import logging

from flask import (Blueprint, current_app, flash, g, jsonify, redirect, render_template, request,
                   session, url_for)

from .. import tokens
from ..context import USER_SESSION_KEY, current_user
from ..db import db
from ..protocols.dictation_keys import personal_url
from ..models import AuthSession, EnrollmentInvite, User
from ..settings import current_policy
from .sentences import passages

logger = logging.getLogger(__name__)
bp = Blueprint("pages", __name__)

# A sign-in must follow the voice check that issued its token within this many seconds.
SIGN_IN_SECONDS = 300


@bp.before_request
def _load_user() -> None:
    g.user = None
    if session.get(USER_SESSION_KEY) is not None:
        # The cookie names a server-side session; a user deleted or disabled since is signed out.
        g.user = current_user()
        if g.user is None:
            sign_out_user()


@bp.after_request
def _headers(response):
    # Invite links carry their token in the path: keep it out of Referer headers.
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


@bp.get("/")
def home():
    """Show what VoiceGate does and where to go next."""
    return render_template("pages/home.html")


@bp.get("/enroll/<token>")
def enroll(token: str):
    """Show the enrollment recorder for a valid invite, or say why the link cannot be used."""
    invite = EnrollmentInvite.find_valid(token)
    if invite is None or not invite.user.active:
        return render_template("pages/invite_invalid.html"), 404
    policy = current_policy()
    return render_template(
        "pages/enroll.html", invite_user=invite.user, token=token, passages=passages(),
        policy=policy, expires_at=invite.expires_at,
    )


@bp.get("/login")
def login():
    """Show the voice login: an optional name, press to talk, the decision with its score."""
    return render_template("pages/login.html", name=request.args.get("user", ""))


@bp.post("/session")
def sign_in():
    """Sign in the user named by the token of an accepted voice check (JSON ``{"token"}``)."""
    token = (request.get_json(silent=True) or {}).get("token")
    if not isinstance(token, str) or not token:
        return _json_error("bad_token", "send the token of an accepted voice check", 400)
    try:
        claim = tokens.read(current_app.config["SECRET_KEY"], token, SIGN_IN_SECONDS)
    except tokens.TokenError as error:
        return _json_error(error.code, str(error), 401)
    user = User.by_public_id(claim.account)
    if user is None:  # deleted since: not even a new account of the same name opens
        return _json_error("bad_token", "the session token is not valid", 401)
    if not user.active:
        return _json_error("not_allowed", "this user cannot sign in", 403)
    sign_out_user()
    session[USER_SESSION_KEY] = AuthSession.start(current_app.permanent_session_lifetime, user_id=user.id)
    db.session.commit()
    session.permanent = True
    logger.info("user %s signed in by voice", user.name)
    return jsonify(user=user.name, next=url_for("pages.me"))


@bp.post("/logout")
def sign_out():
    """Sign the user out (an admin signed in on the same browser stays signed in)."""
    sign_out_user()
    flash("You are signed out.", "success")
    return redirect(url_for("pages.home"))


@bp.get("/me")
def me():
    """Show who is signed in, their personal dictation address, and a sign-out button."""
    if g.user is None:
        return redirect(url_for("pages.login"))
    return render_template("pages/me.html", dictation_url=_dictation_url(g.user))


@bp.get("/dictate")
def dictate():
    """Show the dictation page to a signed-in user."""
    if g.user is None:
        flash("Log in with your voice to dictate.", "info")
        return redirect(url_for("pages.login"))
    return render_template("pages/dictate.html")


@bp.context_processor
def _signed_in_user():
    return {"signed_in_user": g.get("user")}


def sign_out_user() -> None:
    """End the user's server-side session, and nothing else the cookie holds (an admin's sign-in)."""
    token = session.pop(USER_SESSION_KEY, None)
    if token is not None:
        AuthSession.end(token)
        db.session.commit()


def _dictation_url(user: User) -> str:
    """Return the Kõnele-style dictation address carrying ``user``'s personal key."""
    return personal_url(user, current_app.config["SECRET_KEY"], request.host_url)


def _json_error(code: str, message: str, status: int):
    return jsonify(error={"code": code, "message": message}), status
