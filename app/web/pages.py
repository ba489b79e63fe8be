"""The people's pages: enroll a voice from an invite, log in by voice, dictate.

The pages speak the WebSocket protocol (docs/protocol.md) from the browser. A voice
login ends with the page posting the signed token of an accepted verification to
``POST /session``; only that, checked here, puts a user in the session cookie.
"""
from __future__ import annotations

import logging
import time
from datetime import timedelta

from flask import (Blueprint, current_app, flash, g, jsonify, redirect, render_template, request,
                   session, url_for)
from markupsafe import Markup
from sqlalchemy import or_, select

from ..gate import tokens
from ..protocols.context import USER_SESSION_KEY, current_user, is_admin
from ..store.db import db
from ..gate.base import new_request_id
from ..gate.meeting import MAX_ROSTER, MIN_ROSTER
from ..gate.store import Audit, record
from ..store.models import AuditEvent, AuthSession, EnrollmentInvite, User, Voiceprint, utcnow
from ..protocols import dictation_keys
from ..protocols.dictation_keys import personal_url
from ..gate.settings import current_policy
from . import labels
from .sentences import passages

logger = logging.getLogger(__name__)
bp = Blueprint("pages", __name__)

# A sign-in must follow the voice check that issued its token within this many seconds.
SIGN_IN_SECONDS = 300
# When the voice login of this session happened (seconds since the epoch), for re-enrolling.
SIGNED_IN_AT_KEY = "user_signed_in_at"
# Re-enrolling needs a voice login at most this many seconds old.
REENROLL_SECONDS = 600
# The user's own events shown on /me.
HISTORY_ROWS = 20
# A lost-invite request is recorded at most once per user per this many seconds.
INVITE_REQUEST_SECONDS = 3600
# A microphone test may send at most this many seconds of 16 kHz 16-bit PCM.
MIC_TEST_SECONDS = 10


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


@bp.get("/favicon.ico")
def favicon():
    """Send browsers that ask for /favicon.ico to the icon."""
    return redirect(url_for("static", filename="favicon.svg"), 301)


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
    session[SIGNED_IN_AT_KEY] = int(time.time())
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
    """Show the signed-in user's account: Kõnele set-up, their history, and what they can do themselves."""
    if g.user is None:
        return redirect(url_for("pages.login"))
    url = _dictation_url(g.user)
    events = db.session.scalars(
        select(AuditEvent)
        .where(or_(AuditEvent.claimed_user == g.user.name, AuditEvent.matched_user == g.user.name))
        .order_by(AuditEvent.id.desc()).limit(HISTORY_ROWS)).all()
    return render_template("pages/me.html", dictation_url=url, qr_svg=qr_svg(url, "QR code of your dictation address"),
                           events=[(event, labels.describe(event)) for event in events],
                           reenroll_left=_reenroll_seconds_left(), reenroll_minutes=REENROLL_SECONDS // 60)


@bp.post("/me/revoke-key")
def revoke_key():
    """Replace the user's dictation key; the old address stops working and the new one is shown."""
    if g.user is None:
        return redirect(url_for("pages.login"))
    dictation_keys.revoke(g.user)
    db.session.commit()
    _note_self("dictation_key_revoked", g.user.name, "by the user on their page")
    flash("Your old dictation address no longer works. Your new one is below: set it up again in Kõnele.", "success")
    return redirect(url_for("pages.me", _anchor="konele"))


@bp.post("/me/reenroll")
def reenroll():
    """Start a new enrollment for the signed-in user, if their voice login is fresh."""
    if g.user is None:
        return redirect(url_for("pages.login"))
    if _reenroll_seconds_left() <= 0:
        flash(f"To enroll again, log in with your voice first (at most {REENROLL_SECONDS // 60} minutes before).", "error")
        return redirect(url_for("pages.me"))
    _, token = EnrollmentInvite.issue(g.user, timedelta(seconds=REENROLL_SECONDS))
    db.session.commit()
    _note_self("reenroll_started", g.user.name, "after a fresh voice login")
    return redirect(url_for("pages.enroll", token=token))


@bp.route("/lost-invite", methods=["GET", "POST"])
def lost_invite():
    """Tell someone without a working enrollment link what to do, and pass their request to the admins."""
    if request.method == "GET":
        return render_template("pages/lost_invite.html", sent=False)
    name = request.form.get("name", "").strip()[:64]
    user = User.by_name(name) if name else None
    # The same answer for every name, so the form does not tell who has an account.
    if user is not None and user.active and not _requested_recently(user.name):
        _note_self("invite_requested", user.name, "asked on the lost-link page")
        logger.info("user %s asked for a new enrollment link", user.name)
    return render_template("pages/lost_invite.html", sent=bool(name), name=name)


@bp.get("/mic-test")
def mic_test():
    """Show the microphone test: a level meter and a speech check that is not a login attempt."""
    return render_template("pages/mic_test.html", seconds=MIC_TEST_SECONDS)


@bp.post("/mic-test")
def mic_check():
    """Measure a short recording (16 kHz mono 16-bit PCM body): speech, loudness, clipping. Nothing is kept."""
    limit = MIC_TEST_SECONDS * 16000 * 2
    data = b"" if (request.content_length or 0) > limit else request.get_data(cache=False)
    if not data or len(data) > limit or len(data) % 2:
        return _json_error("bad_audio", f"send up to {MIC_TEST_SECONDS} s of 16 kHz mono 16-bit PCM", 400)
    from ..audio.decode import pcm_to_float
    from ..engines.pool import Busy
    from ..engines.runtime import get_engines
    from ..gate import decide

    audio = pcm_to_float(data, "pcm_s16le", 1)
    engines = get_engines()
    try:
        segments = engines.pool.run(engines.vad.segments, audio)
    except Busy:
        return _json_error("busy", "the server is busy; try again in a moment", 503)
    quality = decide.measure(audio, segments)
    problem = decide.clip_problem(quality, current_policy().min_verify_speech)
    return jsonify(speech_seconds=round(quality.speech_seconds, 2), level_dbfs=round(quality.speech_dbfs, 1),
                   clipped=quality.clipped_fraction > decide.CLIPPED_FRACTION, problem=problem,
                   audio_seconds=round(audio.size / 16000, 2))


@bp.get("/dictate")
def dictate():
    """Show the dictation page to a signed-in user."""
    if g.user is None:
        flash("Log in with your voice to dictate.", "info")
        return redirect(url_for("pages.login"))
    return render_template("pages/dictate.html")


@bp.get("/meeting")
def meeting():
    """Show the meeting page: choose a roster, then a live transcript with names, times and exports.

    For a signed-in user (who is on every roster they choose) or an admin (any roster). The
    users offered are the active, enrolled ones: those a meeting can name.
    """
    admin = is_admin()
    if g.user is None and not admin:
        flash("Log in with your voice to hold a meeting.", "info")
        return redirect(url_for("pages.login"))
    users = db.session.scalars(select(User).join(Voiceprint, Voiceprint.user_id == User.id)
                               .where(User.active).order_by(User.name)).all()
    return render_template("pages/meeting.html", users=users, me=g.user.name if g.user else None, admin=admin,
                           min_roster=MIN_ROSTER, max_roster=MAX_ROSTER)


@bp.context_processor
def _signed_in_user():
    return {"signed_in_user": g.get("user")}


def sign_out_user() -> None:
    """End the user's server-side session, and nothing else the cookie holds (an admin's sign-in)."""
    token = session.pop(USER_SESSION_KEY, None)
    session.pop(SIGNED_IN_AT_KEY, None)
    if token is not None:
        AuthSession.end(token)
        db.session.commit()


def qr_svg(text: str, title: str) -> Markup:
    """Return ``text`` as a QR code in inline SVG (dark on a white quiet zone, readable in dark mode too)."""
    import segno

    code = segno.make(text, error="m")
    return Markup(code.svg_inline(scale=4, border=4, dark="#000", light="#fff", title=title, svgclass="qr"))


def _reenroll_seconds_left() -> int:
    signed_in_at = session.get(SIGNED_IN_AT_KEY)
    if not isinstance(signed_in_at, int):
        return 0
    return max(0, signed_in_at + REENROLL_SECONDS - int(time.time()))


def _requested_recently(name: str) -> bool:
    since = utcnow() - timedelta(seconds=INVITE_REQUEST_SECONDS)
    return db.session.scalar(
        select(AuditEvent.id).where(AuditEvent.kind == "self", AuditEvent.decision == "invite_requested",
                                    AuditEvent.claimed_user == name, AuditEvent.created_at >= since).limit(1)
    ) is not None


def _note_self(action: str, name: str, reason: str) -> None:
    record(Audit(new_request_id(), "self", "web", action, claimed_user=name, reason=reason,
                 client_addr=request.remote_addr))


def _dictation_url(user: User) -> str:
    """Return the Kõnele-style dictation address carrying ``user``'s personal key."""
    return personal_url(user, current_app.config["SECRET_KEY"], request.host_url)


def _json_error(code: str, message: str, status: int):
    return jsonify(error={"code": code, "message": message}), status
