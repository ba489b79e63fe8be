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
from ..db import db
from ..protocols.dictation_keys import personal_url
from ..models import EnrollmentInvite, User
from ..settings import current_policy
from .sentences import passages

logger = logging.getLogger(__name__)
bp = Blueprint("pages", __name__)

# The session key of a signed-in user; the admin screens keep theirs apart ("admin_id").
USER_KEY, USER_NAME_KEY = "user_id", "user_name"
# A sign-in must follow the voice check that issued its token within this many seconds.
SIGN_IN_SECONDS = 300


@bp.before_request
def _load_user() -> None:
    g.user = None
    user_id = session.get(USER_KEY)
    if user_id is not None:
        user = db.session.get(User, user_id)
        # A user deleted (whose id a new user may reuse) or disabled since signing in is signed out.
        if user is None or not user.active or user.name != session.get(USER_NAME_KEY):
            sign_out_user()
        else:
            g.user = user


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
        name = tokens.read(current_app.config["SECRET_KEY"], token, SIGN_IN_SECONDS)
    except tokens.TokenError as error:
        return _json_error(error.code, str(error), 401)
    user = User.by_name(name)
    if user is None or not user.active:
        return _json_error("not_allowed", "this user cannot sign in", 403)
    session[USER_KEY], session[USER_NAME_KEY] = user.id, user.name
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
    """Forget the signed-in user, and nothing else the session holds (an admin's sign-in)."""
    session.pop(USER_KEY, None)
    session.pop(USER_NAME_KEY, None)


def _dictation_url(user: User) -> str:
    """Return the Kõnele-style dictation address carrying ``user``'s personal key."""
    return personal_url(user, current_app.config["SECRET_KEY"], request.host_url)


def _json_error(code: str, message: str, status: int):
    return jsonify(error={"code": code, "message": message}), status
