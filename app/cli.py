"""Command line: ``flask users``, ``flask admin``, ``flask models`` and ``flask keys``."""
from __future__ import annotations

import os
import secrets
import socket
import sys
from datetime import timedelta

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from sqlalchemy import select

from .engines import modelstore
from .store.db import db
from .store.models import AdminAccount, EnrollmentInvite, User, Voiceprint

users = AppGroup("users", help="Manage the people who can enroll a voice.")
admin = AppGroup("admin", help="Manage admin accounts.")
models = AppGroup("models", help="Fetch and check the model weights.")
keys = AppGroup("keys", help="Check the voiceprint keystore, re-wrap its keys after a secret rotation.")


def register(app: Flask) -> None:
    """Attach the command groups to ``app``."""
    for group in (users, admin, models, keys):
        app.cli.add_command(group)


@users.command("create")
@click.argument("name")
@click.option("--display-name", default="", help="Name shown on screens (defaults to NAME).")
def users_create(name: str, display_name: str) -> None:
    """Create a user called NAME."""
    if User.by_name(name) is not None:
        raise click.ClickException(f"user {name!r} already exists")
    db.session.add(User(name=name, display_name=display_name or name))
    db.session.commit()
    click.echo(f"created user {name}")


@users.command("list")
def users_list() -> None:
    """List the users with their enrollment state."""
    rows = db.session.scalars(select(User).order_by(User.name)).all()
    if not rows:
        click.echo("no users")
        return
    click.echo(f"{'name':<24} {'state':<9} {'enrolled':<9} {'clips':>5} {'speech s':>8}  created")
    for user in rows:
        voiceprint = user.voiceprint
        click.echo(
            f"{user.name:<24} {'active' if user.active else 'disabled':<9} {'yes' if voiceprint else 'no':<9} "
            f"{voiceprint.clip_count if voiceprint else 0:>5} {voiceprint.speech_seconds if voiceprint else 0:>8.1f}  "
            f"{user.created_at:%Y-%m-%d %H:%M}"
        )


@users.command("invite")
@click.argument("name")
@click.option("--hours", type=float, default=None, help="Hours until the invite expires (default: INVITE_HOURS).")
def users_invite(name: str, hours: float | None) -> None:
    """Create a one-time enrollment invite for NAME; its token is printed on the last line."""
    user = User.by_name(name)
    if user is None:
        raise click.ClickException(f"no user called {name!r}")
    hours = hours if hours is not None else float(current_app.config["INVITE_HOURS"])
    invite, token = EnrollmentInvite.issue(user, timedelta(hours=hours))
    db.session.commit()
    click.echo(f"enrollment invite for {name}, valid until {invite.expires_at:%Y-%m-%d %H:%M} UTC:")
    click.echo(token)


@users.command("key")
@click.argument("name")
@click.option("--revoke", is_flag=True, help="Invalidate the current key first; the URL printed is the new one.")
@click.option("--base-url", envvar="VOICEGATE_PUBLIC_URL", default=None,
              help="The server's public address (default: $VOICEGATE_PUBLIC_URL, else http://$VOICEGATE_HOST:"
                   "$VOICEGATE_PORT, where scripts/run.sh serves: 127.0.0.1:8000 unless they are set).")
def users_key(name: str, revoke: bool, base_url: str | None) -> None:
    """Print NAME's personal dictation URLs and OpenAI settings; the one to put in Kõnele is the last line."""
    from .protocols import dictation_keys

    user = User.by_name(name)
    if user is None:
        raise click.ClickException(f"no user called {name!r}")
    if revoke:
        dictation_keys.revoke(user)
        db.session.commit()
        click.echo(f"revoked {name}'s previous dictation key")
    if not user.enrolled:
        click.echo(f"note: {name} has not enrolled a voice yet; dictation is refused until they do", err=True)
    base_url = base_url or _served_url()
    key = dictation_keys.key_for(user, current_app.config["SECRET_KEY"])
    click.echo(f"OpenAI clients: base URL {dictation_keys.openai_base_url(base_url)}, API key {key}")
    click.echo(f"HTTP (whole recordings): {dictation_keys.recognize_url(base_url, key)}")
    click.echo(f"Kõnele WebSocket URL for {name}:")
    click.echo(dictation_keys.dictation_url(base_url, key))


def _served_url() -> str:
    """Return the address the server listens on (VOICEGATE_HOST, VOICEGATE_PORT: scripts/serve.sh's bind).

    A server bound to every interface is reached by this machine's name; say so, since only
    the admin knows the address a phone reaches it by (VOICEGATE_PUBLIC_URL).
    """
    host = os.environ.get("VOICEGATE_HOST") or str(current_app.config.get("HOST") or "127.0.0.1")
    port = os.environ.get("VOICEGATE_PORT") or str(current_app.config.get("PORT") or "8000")
    if host in ("0.0.0.0", "::", "[::]"):
        host = socket.gethostname()
        click.echo(f"note: the server listens on every address; {host} is this machine's name. Set "
                   "VOICEGATE_PUBLIC_URL (or --base-url) to the address clients reach it by", err=True)
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address in a URL
    return f"http://{host}:{port}"


@users.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def users_delete(name: str, yes: bool) -> None:
    """Delete user NAME, erase their voiceprint, and anonymise their audit events."""
    user = User.by_name(name)
    if user is None:
        raise click.ClickException(f"no user called {name!r}")
    if not yes:
        click.confirm(f"Delete {name} and erase their voiceprint?", abort=True)
    user.erase()
    db.session.commit()
    click.echo(f"deleted user {name}")


@admin.command("create")
@click.argument("username")
@click.option("--password", envvar="VOICEGATE_ADMIN_PASSWORD", help="Default: $VOICEGATE_ADMIN_PASSWORD, else asked.")
def admin_create(username: str, password: str | None) -> None:
    """Create an admin account USERNAME."""
    if db.session.scalar(select(AdminAccount).where(AdminAccount.username == username)):
        raise click.ClickException(f"admin {username!r} already exists")
    if not password:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    _add_admin(username, password)
    click.echo(f"created admin {username}")


@admin.command("ensure")
@click.option("--username", default="admin", show_default=True)
def admin_ensure(username: str) -> None:
    """Make sure an admin account exists; a generated password is printed once."""
    if db.session.scalar(select(AdminAccount).limit(1)) is not None:
        click.echo("an admin account exists")
        return
    password = os.environ.get("VOICEGATE_ADMIN_PASSWORD")
    generated = not password
    password = password or secrets.token_urlsafe(12)
    _add_admin(username, password)
    if generated:
        click.echo(f"created admin {username!r} with password: {password}  (shown once; keep it)")
    else:
        click.echo(f"created admin {username!r} with the password from VOICEGATE_ADMIN_PASSWORD")


def _add_admin(username: str, password: str) -> None:
    if len(password) < 8:
        raise click.ClickException("an admin password needs at least 8 characters")
    account = AdminAccount(username=username)
    account.set_password(password)
    db.session.add(account)
    db.session.commit()


@models.command("fetch")
@click.argument("names", nargs=-1)
@click.option("--all", "fetch_all", is_flag=True, help="Every known model, Whisper base included.")
def models_fetch(names: tuple[str, ...], fetch_all: bool) -> None:
    """Download, extract and verify model weights (default: ECAPA, CAM++ and the configured Whisper model)."""
    models_dir = current_app.config["MODELS_DIR"]
    if fetch_all:
        names = tuple(modelstore.MODELS)
    elif not names:
        names = _configured_models() + (modelstore.SECOND_SPEAKER,)
    try:
        for name in names:
            directory = modelstore.fetch(models_dir, name, log=click.echo)
            if name == "ecapa":
                # SpeechBrain stays the source; ONNX Runtime runs the export faster with the same scores.
                from .engines.speaker import export_onnx

                export_onnx(directory, log=click.echo)
            elif name == "campplus":
                # Our own network on the shipped state dict; the server runs the export, without torch.
                from .engines.campplus import export_onnx as export_campplus

                export_campplus(directory, log=click.echo)
    except modelstore.ModelError as error:
        raise click.ClickException(str(error)) from None


@models.command("check")
def models_check() -> None:
    """Report which model files are present and verified; exit 1 if a needed one is not."""
    models_dir = current_app.config["MODELS_DIR"]
    needed = set(_configured_models())
    failed = False
    for name, spec in modelstore.MODELS.items():
        report = modelstore.check(models_dir, name)
        states = {status.state for status in report}
        summary = "ok" if states == {"ok"} else ", ".join(f"{s.name} {s.state}" for s in report if s.state != "ok")
        marker = "needed" if name in needed else "optional"
        click.echo(f"{name:<8} {marker:<8} {summary}   ({spec.description})")
        failed |= name in needed and states != {"ok"}
    whisper = current_app.config["WHISPER_MODEL"]
    if whisper not in modelstore.WHISPER_MODELS:
        click.echo(f"whisper  configured as {whisper!r}: not one of ours, so not checked here")
    if failed:
        click.echo("run 'flask models fetch' to fetch the missing or damaged files", err=True)
        sys.exit(1)


def _configured_models() -> tuple[str, ...]:
    whisper = current_app.config["WHISPER_MODEL"]
    return ("ecapa", whisper) if whisper in modelstore.WHISPER_MODELS else ("ecapa",)


@keys.command("check")
def keys_check() -> None:
    """Report whether every voiceprint's key is in the keystore and opens with the secret; exit 1 if not."""
    from .store import vault

    owners = dict(db.session.execute(
        select(Voiceprint.key_id, User.name).join(User, User.id == Voiceprint.user_id)).all())
    report = vault.report(set(owners))
    click.echo(f"keystore {vault.keystore().path}: {report.get('error', 'ok')}; "
               f"{report['voiceprints']} voiceprints, {report['unreadable']} without a readable key")
    if report["ok"] and report["unreadable"]:
        stored = vault.keystore().ids()
        lost = sorted(name for key_id, name in owners.items() if key_id not in stored)
        click.echo("to enroll again: " + " ".join(lost))
    if not report["ok"] or report["unreadable"]:
        click.echo("voiceprints without a key cannot be used: those users enroll again "
                   "(after a secret rotation: flask keys rewrap)", err=True)
        sys.exit(1)


@keys.command("rewrap")
@click.option("--old-secret-file", type=click.File("r"), default=None,
              help="A file holding the previous secret key (default: asked, not echoed).")
def keys_rewrap(old_secret_file) -> None:
    """Re-wrap every voiceprint key wrapped with the previous secret under the current one (docs: README)."""
    from .store.keystore import KeystoreError
    from .store import vault

    old = old_secret_file.read().strip() if old_secret_file else click.prompt("previous secret key", hide_input=True)
    if not old:
        raise click.ClickException("the previous secret key is empty")
    try:
        done, current = vault.keystore().rewrap(old)
    except KeystoreError as error:
        raise click.ClickException(f"{error}; nothing was changed") from None
    click.echo(f"re-wrapped {done} keys under the current secret ({current} were already)")


@keys.command("prune")
@click.option("--min-age", type=float, default=3600.0, show_default=True,
              help="Seconds a key must have existed (spares enrollments being saved right now).")
def keys_prune(min_age: float) -> None:
    """Destroy keys that no voiceprint uses any more (left by rows deleted outside VoiceGate)."""
    from .store import vault

    store = vault.keystore()
    used = set(db.session.scalars(select(Voiceprint.key_id)))
    orphans = store.ids(older_than=min_age) - used
    for key_id in orphans:
        store.destroy(key_id)
    click.echo(f"destroyed {len(orphans)} unused keys")
