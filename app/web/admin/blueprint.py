"""The admin blueprint: every view but the sign-in page behind an admin session, no caching, CSRF errors."""
from __future__ import annotations

from flask import Blueprint, g, jsonify, redirect, render_template, request, url_for
from flask_wtf.csrf import CSRFError

from .common import API_PREFIX, current_admin

bp = Blueprint("admin", __name__, url_prefix="/admin")

# Views anyone may reach: the sign-in form itself.
PUBLIC_ENDPOINTS = {"admin.login"}


@bp.before_request
def _require_admin():
    """Refuse every admin view to anyone without an admin session."""
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    g.admin = current_admin()
    if g.admin is not None:
        return None
    if request.path.startswith(API_PREFIX):
        return jsonify(error={"code": "not_signed_in", "message": "sign in as an admin first"}), 401
    return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))


@bp.after_request
def _no_store(response):
    """Keep admin pages and exports out of shared and browser caches."""
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


@bp.errorhandler(CSRFError)
def _csrf_error(error: CSRFError):
    """Answer a form post without a valid CSRF token (an old tab, or another site's form)."""
    if request.path.startswith(API_PREFIX):
        return jsonify(error={"code": "csrf", "message": error.description}), 400
    return render_template("admin/error.html", title="Form expired",
                           message="This form was not accepted: its security token is missing or expired. "
                                   "Go back, reload the page and try again."), 400

