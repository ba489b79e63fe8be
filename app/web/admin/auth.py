"""Admin sign-in and sign-out, with throttling per account and per client address."""
from __future__ import annotations

import logging
import threading
import time
from collections import deque

from flask import current_app, flash, redirect, render_template, request, session, url_for
from sqlalchemy import select
from werkzeug.security import check_password_hash, generate_password_hash

from ...db import db
from ...models import AdminAccount
from . import bp
from .common import current_admin, safe_next

logger = logging.getLogger(__name__)

# Checked when the user name is unknown, so that a wrong name takes as long as a wrong password.
_DUMMY_HASH = generate_password_hash("not a password")


class AddressThrottle:
    """Count failed sign-ins per client address in a sliding window (this process only)."""

    MAX_ADDRESSES = 10_000

    def __init__(self):
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, address: str, window: float) -> deque[float]:
        failures = self._failures.get(address, deque())
        cutoff = time.monotonic() - window
        while failures and failures[0] < cutoff:
            failures.popleft()
        return failures

    def blocked(self, address: str, limit: int, window: float) -> bool:
        """Return True when ``address`` has failed ``limit`` times within ``window`` seconds."""
        with self._lock:
            return len(self._recent(address, window)) >= limit

    def fail(self, address: str, window: float) -> None:
        """Count one failed sign-in from ``address``."""
        with self._lock:
            if address not in self._failures and len(self._failures) >= self.MAX_ADDRESSES:
                # Forget the addresses whose failures are all outside the window.
                for stale in [a for a in self._failures if not self._recent(a, window)]:
                    del self._failures[stale]
            failures = self._recent(address, window)
            failures.append(time.monotonic())
            self._failures[address] = failures


def address_throttle() -> AddressThrottle:
    """Return this app's per-address throttle."""
    return current_app.extensions.setdefault("voicegate.admin_throttle", AddressThrottle())


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
    if throttle.blocked(address, int(config["ADMIN_ADDRESS_ATTEMPTS"]), window):
        logger.warning("admin sign-in refused: too many failures from %s", address)
        return _refuse("Too many failed sign-ins from your address. Wait a few minutes and try again.",
                       429, username, next_url)

    account = db.session.scalar(select(AdminAccount).where(AdminAccount.username == username)) if username else None
    if account is not None and account.is_locked():
        throttle.fail(address, window)
        logger.warning("admin sign-in refused: account %s is locked (from %s)", username, address)
        return _refuse("Too many failed sign-ins for this account. Wait a few minutes and try again.",
                       429, username, next_url)
    if account is None:
        check_password_hash(_DUMMY_HASH, password)
        succeeded = False
    else:
        succeeded = account.check_password(password)
        account.record_sign_in(succeeded, int(config["ADMIN_SIGNIN_ATTEMPTS"]), int(config["ADMIN_SIGNIN_LOCK_SECONDS"]))
        db.session.commit()
    if not succeeded:
        throttle.fail(address, window)
        logger.warning("admin sign-in failed%s from %s", f" for {username}" if account else "", address)
        return _refuse("Wrong user name or password.", 401, username, next_url)

    # A fresh session: nothing from before sign-in (a planted id, an old CSRF token) survives it.
    session.clear()
    session["admin_id"] = account.id
    session.permanent = True
    logger.info("admin %s signed in from %s", account.username, address)
    flash(f"Signed in as {account.username}.", "success")
    return redirect(next_url)


def _refuse(message: str, status: int, username: str, next_url: str):
    flash(message, "error")
    return render_template("admin/login.html", next_url=next_url, username=username), status


@bp.post("/logout")
def logout():
    """End the admin session."""
    session.clear()
    flash("Signed out.", "success")
    return redirect(url_for("admin.login"))
