"""Admin sign-in, sign-out and password change; wrong passwords slow down the client that sent them.

Sign-in starts a server-side session (app.store.models.AuthSession) whose token the cookie
holds: signing out deletes it, and a password change deletes the admin's other ones.
Failures are counted per client address only, never per account, so that nobody can
lock an admin out by guessing at their name (behind a proxy, list it in TRUSTED_PROXIES);
they are rows in the database, so that every instance on it counts the same ones.
"""
from __future__ import annotations

import logging
import math
from datetime import timedelta

from flask import current_app, flash, g, redirect, render_template, request, session, url_for
from sqlalchemy import delete, select, update
from werkzeug.security import check_password_hash, generate_password_hash

from ...protocols.context import ADMIN_SESSION_KEY
from ...store.db import db
from ...store.models import AdminAccount, AdminSigninFailure, AuthSession, Version, utcnow
from .blueprint import bp
from .common import current_admin, note, safe_next

logger = logging.getLogger(__name__)

# Checked when the user name is unknown, so that a wrong name takes as long as a wrong password.
_DUMMY_HASH = generate_password_hash("not a password")
MIN_PASSWORD = 8


class AddressThrottle:
    """Count failed sign-ins per client address in a sliding window, in the database (every instance's).

    After each failure the address waits ``delay`` seconds, doubling per failure, before
    its next try; ``limit`` failures within the window refuse it until they age out.
    """

    def take(self, address: str, limit: int, window: float, delay: float) -> tuple[int, int | None]:
        """Return the seconds ``address`` must wait before its next sign-in; when 0, count this one now.

        Counted before the password is checked (``settle`` keeps a wrong one, ``clear`` drops the
        count on a right one), and checked and counted one address at a time across instances (a
        row lock on PostgreSQL, the write lock on SQLite): guesses sent at once cannot all pass
        before any is counted. Returns the wait and the id of the counted row.
        """
        db.session.commit()  # the lock below must be its transaction's first
        if db.session.get_bind().dialect.name != "sqlite":
            db.session.execute(select(Version.value).where(Version.name == "attempts").with_for_update())
        now = utcnow()
        # A write first (SQLite takes its write lock here): every address's rows past the window go.
        db.session.execute(delete(AdminSigninFailure).where(
            AdminSigninFailure.created_at <= now - timedelta(seconds=window)))
        rows = db.session.execute(
            select(AdminSigninFailure.created_at, AdminSigninFailure.pending)
            .where(AdminSigninFailure.client_addr == address)
            .order_by(AdminSigninFailure.created_at.desc())
        ).all()
        failed = [at for at, pending in rows if not pending]  # sign-ins still being checked add no delay
        if limit > 0 and len(rows) >= limit:
            until = rows[limit - 1][0] + timedelta(seconds=window)
        elif failed and delay > 0:
            until = failed[0] + timedelta(seconds=delay * 2 ** (len(failed) - 1))
        else:
            until = now
        wait = max(0, math.ceil((until - now).total_seconds()))
        counted = None
        if not wait:
            row = AdminSigninFailure(client_addr=address, created_at=now, pending=True)
            db.session.add(row)
            db.session.flush()
            counted = row.id
        db.session.commit()
        return wait, counted

    def settle(self, counted: int | None) -> None:
        """Keep the sign-in counted by ``take`` as a failure."""
        db.session.execute(update(AdminSigninFailure).where(AdminSigninFailure.id == counted).values(pending=False))
        db.session.commit()

    def clear(self, address: str) -> None:
        """Forget ``address``'s failures (it signed in). The caller commits."""
        db.session.execute(delete(AdminSigninFailure).where(AdminSigninFailure.client_addr == address))


def address_throttle() -> AddressThrottle:
    """Return the per-address throttle (its counts live in the database)."""
    return AddressThrottle()


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Show the sign-in form; on a right name and password, start a fresh admin session."""
    next_url = safe_next(request.values.get("next"))
    if request.method == "GET":
        if current_admin() is not None:
            return redirect(next_url)
        return render_template("admin/login.html", next_url=next_url)

    config = current_app.config
    address = request.remote_addr or "?"
    username = request.form.get("username", "").strip()
    password = request.form.get("password", "")
    throttle = address_throttle()
    window = float(config["ADMIN_ADDRESS_WINDOW_SECONDS"])
    wait, counted = throttle.take(address, int(config["ADMIN_ADDRESS_ATTEMPTS"]), window,
                                  float(config["ADMIN_SIGNIN_DELAY"]))
    if wait:
        logger.warning("admin sign-in refused: too many failures from %s (retry in %d s)", address, wait)
        response = _refuse(f"Too many failed sign-ins from your address. Try again in {wait} s.", 429, username, next_url)
        response.headers["Retry-After"] = str(wait)
        return response

    account = db.session.scalar(select(AdminAccount).where(AdminAccount.username == username)) if username else None
    if account is None:
        check_password_hash(_DUMMY_HASH, password)
        succeeded = False
    else:
        succeeded = account.check_password(password)
    if not succeeded:
        throttle.settle(counted)
        logger.warning("admin sign-in failed%s from %s", f" for {username}" if account else "", address)
        return _refuse("Wrong user name or password.", 401, username, next_url)

    throttle.clear(address)
    # A fresh session: nothing from before sign-in (a planted id, an old CSRF token) survives it.
    AuthSession.end(session.get(ADMIN_SESSION_KEY))
    session.clear()
    session[ADMIN_SESSION_KEY] = AuthSession.start(current_app.permanent_session_lifetime, admin_id=account.id)
    db.session.commit()
    session.permanent = True
    logger.info("admin %s signed in from %s", account.username, address)
    flash(f"Signed in as {account.username}.", "success")
    return redirect(next_url)


def _refuse(message: str, status: int, username: str, next_url: str):
    flash(message, "error")
    return current_app.make_response((render_template("admin/login.html", next_url=next_url, username=username),
                                      status))


@bp.post("/logout")
def logout():
    """End the admin session, on the server too."""
    AuthSession.end(session.get(ADMIN_SESSION_KEY))
    db.session.commit()
    session.clear()
    flash("Signed out.", "success")
    return redirect(url_for("admin.login"))


@bp.route("/password", methods=["GET", "POST"])
def password():
    """Change the signed-in admin's password; their other sessions end."""
    if request.method == "GET":
        return render_template("admin/password.html")
    admin: AdminAccount = g.admin
    current, new = request.form.get("current", ""), request.form.get("new", "")
    if not admin.check_password(current):
        flash("The current password is wrong.", "error")
        return render_template("admin/password.html"), 400
    if len(new) < MIN_PASSWORD or new != request.form.get("confirm", ""):
        flash(f"The new password needs at least {MIN_PASSWORD} characters, typed the same twice.", "error")
        return render_template("admin/password.html"), 400
    admin.set_password(new)
    AuthSession.end_admin_sessions(admin.id, keep=session.get(ADMIN_SESSION_KEY))
    db.session.commit()
    note("admin_password_changed")
    flash("Password changed; your other sessions are signed out.", "success")
    return redirect(url_for("admin.password"))
