"""Settings: the decision rules and the Whisper model, stored in the database, in force at once."""
from __future__ import annotations

from dataclasses import asdict

from flask import current_app, flash, g, jsonify, redirect, render_template, request, url_for
from sqlalchemy import select

from ...gate import settings as rules
from ...store.db import db
from ...engines.runtime import switch_whisper, whisper_status
from ...store.models import AuditEvent, Setting
from .blueprint import bp
from .chart import histogram, shift
from .common import note

# Attempts whose score was compared with the threshold (enrollment clip scores are not).
SCORED_KINDS = ("verify", "identify", "transcribe")
SAMPLE_LIMIT = 5000


def score_samples() -> tuple[list[float], list[float]]:
    """Return the scores of the latest accepted and rejected voice attempts in the audit log."""
    rows = db.session.execute(
        select(AuditEvent.score, AuditEvent.decision)
        .where(AuditEvent.kind.in_(SCORED_KINDS), AuditEvent.score.is_not(None),
               AuditEvent.decision.in_(("accept", "reject")))
        .order_by(AuditEvent.id.desc()).limit(SAMPLE_LIMIT)).all()
    return ([score for score, decision in rows if decision == "accept"],
            [score for score, decision in rows if decision == "reject"])


def _float_arg(name: str) -> float | None:
    try:
        value = float(request.args[name])
    except (KeyError, ValueError):
        return None
    return value if -1.0 <= value <= 1.0 else None


@bp.get("/settings")
def settings():
    """Show the settings form, the model state and the score chart."""
    return _page(submitted={})


def _page(submitted: dict[str, str]) -> str:
    """Render the settings page; ``submitted`` holds refused values to show again."""
    policy, defaults = rules.current_policy(strict=False), rules.default_policy()
    accepted, rejected = score_samples()
    proposed = _float_arg("proposed")
    stored = {row.key: row for row in db.session.scalars(select(Setting))}
    whisper = rules.whisper_model()
    return render_template(
        "admin/settings.html", fields=rules.POLICY_FIELDS, policy=policy, current=asdict(policy),
        defaults=asdict(defaults), stored=stored,
        chart=histogram(accepted, rejected), samples=(len(accepted), len(rejected)),
        proposed=proposed, shift=shift(accepted, rejected, proposed) if proposed is not None else None,
        whisper=whisper, whisper_default=current_app.config["WHISPER_MODEL"],
        whisper_choices=[(name, rules.whisper_present(name)) for name in rules.whisper_choices()],
        whisper_status=whisper_status(current_app), submitted=submitted, challenge_choices=rules.CHALLENGE_CHOICES)


@bp.get("/settings/reset")
def confirm_reset():
    """Ask before putting every setting back to its default; the form posts to save_settings."""
    stored = {row.key: row for row in db.session.scalars(select(Setting).order_by(Setting.key))}
    return render_template("admin/confirm_reset.html", stored=stored)


@bp.post("/settings")
def save_settings():
    """Store the submitted settings; a new Whisper model starts loading in the background."""
    if request.form.get("reset") == "yes":
        rules.reset(g.admin.username)
        note("settings_reset")
        flash("Every setting is back to its configured default.", "success")
        _follow_whisper()
        return redirect(url_for("admin.settings"))
    changed, errors = rules.save(request.form.to_dict(), g.admin.username)
    if errors:
        for error in errors:
            flash(error, "error")
        return _page(submitted=request.form.to_dict()), 400
    if changed:
        note("settings_changed")
        flash(f"Saved: {', '.join(changed)}. In force for every new session.", "success")
    else:
        flash("Nothing changed.", "info")
    if rules.WHISPER_KEY in changed:
        _follow_whisper()
    return redirect(url_for("admin.settings"))


def _follow_whisper() -> None:
    app = current_app._get_current_object()
    switch_whisper(app, rules.whisper_model())


@bp.get("/api/whisper")
def whisper():
    """Report the Whisper model in use and whether a new one is loading, loaded or failed."""
    return jsonify(whisper_status(current_app))


@bp.get("/api/scores")
def scores():
    """Return the scores of recent accepted and rejected attempts (for the live threshold preview)."""
    accepted, rejected = score_samples()
    return jsonify(accepted=[round(s, 4) for s in accepted], rejected=[round(s, 4) for s in rejected],
                   threshold=rules.current_policy(strict=False).threshold)
