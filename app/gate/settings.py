"""Settings an admin changes at run time: the configured defaults overlaid with database rows.

Each editable value has a type and a range. Decisions fail closed: when the stored settings
cannot be read, or a stored value is outside its range (written by hand, or by an older
version), ``current_policy`` raises SettingsUnavailable (a ``busy`` SessionError) instead of
deciding by the configured defaults.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from flask import Flask, current_app
from sqlalchemy.exc import SQLAlchemyError

from ..engines import modelstore
from ..engines.runtime import engines_loaded, get_engines, switch_whisper, whisper_status
from ..engines.transcriber import LANGUAGES
from ..errors import SessionError
from ..store import versions
from ..store.db import db
from ..store.models import Setting, User
from .policy import Policy, language_codes
from .second_chance import MAX_BAND

logger = logging.getLogger(__name__)

WHISPER_KEY = "whisper_model"
CHALLENGE_KEY = "challenge"
# The languages a transcription asked for none is written in (Policy.languages).
LANGUAGES_KEY = "languages"
# Who may give voice commands through the Wyoming server (app/protocols/wyoming.py): public ids.
HOUSEHOLD_KEY = "household_roster"
CHALLENGE_CHOICES = {"digits": "Say 6 random digits shown on screen (recommended)",
                     "off": "Off: any speech (a recording of the user can pass, unless it is a near-copy)"}


@dataclass(frozen=True)
class Field:
    """One editable policy value: its type, range and what it means."""

    name: str
    kind: type
    low: float
    high: float
    label: str
    help: str
    unit: str = ""
    step: str = "any"

    def parse(self, raw: Any) -> int | float:
        """Return ``raw`` as this field's type, or raise ValueError with a message for people."""
        try:
            number = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{self.label}: enter a number") from None
        if self.kind is int:
            if not number.is_integer():
                raise ValueError(f"{self.label}: enter a whole number")
            number = int(number)
        if not (self.low <= number <= self.high) or number != number:
            raise ValueError(f"{self.label}: must be between {self.low:g} and {self.high:g}")
        return number


POLICY_FIELDS = (
    Field("target_far", float, 0.00001, 0.05, "Target false-accept rate",
          "The share of impostor attempts that may be accepted, the same in noise, on the phone and on short "
          "speech (scores are calibrated for the audio's quality; docs/threshold.md). 0.001 is 1 in 1000. "
          "Lower: fewer false accepts, more false rejects.", step="any"),
    Field("threshold", float, 0.05, 0.99, "Raw cosine floor",
          "No voice whose raw cosine score is below this is accepted, whatever its calibrated score; "
          "also how alike an enrollment's clips must be.", step="0.01"),
    Field("min_verify_speech", float, 0.5, 10.0, "Minimum speech for a decision",
          "Below this much speech a verification answers 'not enough speech' instead of deciding.", "s", "0.1"),
    Field("second_chance_band", float, 0.0, MAX_BAND, "Second chance: how near a miss",
          "A voice login on the login page whose calibrated score falls less than this under the threshold is "
          "asked to say new digits once more, and is accepted only if the mean of both attempts' scores reaches "
          "the threshold, so that second tries add under a tenth of the target false-accept rate "
          "(docs/threshold.md). 0 turns it off.",
          step="0.1"),
    Field("enroll_min_clips", int, 1, 10, "Enrollment: clips", "How many accepted clips an enrollment needs.",
          step="1"),
    Field("enroll_min_clip_speech", float, 0.5, 30.0, "Enrollment: speech per clip",
          "A clip with less speech than this is refused.", "s", "0.1"),
    Field("enroll_min_total_speech", float, 1.0, 120.0, "Enrollment: total speech",
          "An enrollment completes once its accepted clips hold this much speech.", "s", "0.5"),
)
FIELDS = {field.name: field for field in POLICY_FIELDS}


def parse_languages(raw: Any) -> str:
    """Return language codes separated by commas or spaces as Policy.languages holds them ("cs,en"); else raise ValueError for people."""
    if not isinstance(raw, str):
        raise ValueError("Languages spoken here: enter language codes separated by commas")
    codes = language_codes(raw)
    unknown = [code for code in codes if code not in LANGUAGES]
    if unknown:
        raise ValueError(f"Languages spoken here: {', '.join(unknown)} is not a code Whisper knows (e.g. en, cs, nl)")
    return ",".join(codes)


class SettingsUnavailable(SessionError):
    """The stored settings cannot be read or hold an invalid value: nothing may be decided."""

    def __init__(self, detail: str):
        super().__init__("busy", "the server cannot read its settings; nothing is decided until it can")
        self.detail = detail


def _stored() -> dict[str, Any]:
    try:
        return Setting.stored()
    except (SQLAlchemyError, ValueError) as error:  # ValueError: a row that is not JSON
        logger.error("settings unreadable, refusing to decide: %s", error)
        db.session.rollback()
        raise SettingsUnavailable(str(error)) from None


def _valid_overrides(stored: dict[str, Any], strict: bool = True) -> dict[str, Any]:
    values = {}
    for name, field in FIELDS.items():
        if name in stored:
            try:
                values[name] = field.parse(stored[name])
            except ValueError as error:
                if strict:
                    logger.error("stored setting %s=%r is invalid, refusing to decide: %s", name, stored[name], error)
                    raise SettingsUnavailable(str(error)) from None
                logger.warning("ignoring stored setting %s=%r: %s", name, stored[name], error)
    if CHALLENGE_KEY in stored:
        if stored[CHALLENGE_KEY] in CHALLENGE_CHOICES:
            values[CHALLENGE_KEY] = stored[CHALLENGE_KEY]
        elif strict:
            logger.error("stored setting challenge=%r is invalid, refusing to decide", stored[CHALLENGE_KEY])
            raise SettingsUnavailable(f"challenge: {stored[CHALLENGE_KEY]!r}")
    if LANGUAGES_KEY in stored:
        try:
            values[LANGUAGES_KEY] = parse_languages(stored[LANGUAGES_KEY])
        except ValueError as error:
            if strict:
                logger.error("stored setting languages=%r is invalid, refusing to decide", stored[LANGUAGES_KEY])
                raise SettingsUnavailable(str(error)) from None
            logger.warning("ignoring stored setting languages=%r: %s", stored[LANGUAGES_KEY], error)
    return values


def default_policy() -> Policy:
    """Return the policy of the configuration alone."""
    return Policy.from_config(current_app.config)


def current_policy(strict: bool = True) -> Policy:
    """Return the policy in force: the configured defaults with the admin's changes on top.

    Raise SettingsUnavailable when they cannot be read; ``strict=False`` (the admin's
    settings screen, which must open to repair them) skips invalid values instead.
    """
    return replace(default_policy(), **_valid_overrides(_stored(), strict))


def whisper_choices() -> list[str]:
    """Return the Whisper models an admin can pick (ours, and the configured one)."""
    configured = current_app.config["WHISPER_MODEL"]
    return list(modelstore.WHISPER_MODELS) + ([configured] if configured not in modelstore.WHISPER_MODELS else [])


def whisper_model() -> str:
    """Return the Whisper model in force: the stored choice, else the configured one.

    Which model transcribes is no decision: unreadable settings load the configured one.
    """
    try:
        stored = _stored().get(WHISPER_KEY)
    except SettingsUnavailable:
        stored = None
    if isinstance(stored, str) and stored in whisper_choices():
        return stored
    return current_app.config["WHISPER_MODEL"]


def whisper_present(name: str) -> bool | None:
    """Return whether our copy of ``name`` is on disk (None: not one of ours, cannot tell)."""
    if name not in modelstore.WHISPER_MODELS:
        return None
    return modelstore.is_complete(current_app.config["MODELS_DIR"], name)


def save(form: dict[str, str], updated_by: str) -> tuple[list[str], list[str]]:
    """Validate and store the submitted settings; return (changed names, errors).

    Nothing is stored when any value is invalid. A value equal to the configured
    default clears its row, so later changes of the default apply to it again.
    """
    errors, parsed = [], {}
    for name, field in FIELDS.items():
        if name in form:
            try:
                parsed[name] = field.parse(form[name])
            except ValueError as error:
                errors.append(str(error))
    challenge = form.get(CHALLENGE_KEY)
    if challenge is not None and challenge not in CHALLENGE_CHOICES:
        errors.append(f"Spoken challenge: choose one of {', '.join(CHALLENGE_CHOICES)}")
    languages = form.get(LANGUAGES_KEY)
    if languages is not None:
        try:
            languages = parse_languages(languages)
        except ValueError as error:
            errors.append(str(error))
    whisper = form.get(WHISPER_KEY)
    if whisper is not None:
        if whisper not in whisper_choices():
            errors.append(f"Whisper model: choose one of {', '.join(whisper_choices())}")
        elif whisper_present(whisper) is False:
            errors.append(f"Whisper model {whisper!r} is not downloaded; run 'flask models fetch {whisper}' first")
    if errors:
        return [], errors

    defaults, before = default_policy(), current_policy(strict=False)
    changed = []
    for name, value in parsed.items():
        if value != getattr(before, name):
            changed.append(name)
        Setting.put(name, None if value == getattr(defaults, name) else value, updated_by)
    if challenge is not None:
        if challenge != before.challenge:
            changed.append(CHALLENGE_KEY)
        Setting.put(CHALLENGE_KEY, None if challenge == defaults.challenge else challenge, updated_by)
    if languages is not None:
        if languages != before.languages:
            changed.append(LANGUAGES_KEY)
        Setting.put(LANGUAGES_KEY, None if languages == defaults.languages else languages, updated_by)
    if whisper is not None:
        if whisper != whisper_model():
            changed.append(WHISPER_KEY)
        Setting.put(WHISPER_KEY, None if whisper == current_app.config["WHISPER_MODEL"] else whisper, updated_by)
    db.session.commit()
    return changed, []


def reset(updated_by: str) -> None:
    """Clear every stored setting: the configured defaults apply again."""
    for key in [row.key for row in db.session.scalars(db.select(Setting))]:
        Setting.put(key, None, updated_by)
    db.session.commit()


# --------------------------------------------------------------------------- the household roster

def household() -> list[str]:
    """Return the public ids of the users who may give voice commands (the Wyoming server's roster).

    Stored by public id, which is never reused, so that a deleted member's name taken by
    someone new does not let the newcomer in. Raise SettingsUnavailable when the row cannot
    be read or is not a list of ids: nobody speaks then.
    """
    roster = _stored().get(HOUSEHOLD_KEY, [])
    if not isinstance(roster, list) or not all(isinstance(public_id, str) for public_id in roster):
        logger.error("stored setting %s=%r is invalid, refusing to decide", HOUSEHOLD_KEY, roster)
        raise SettingsUnavailable(f"{HOUSEHOLD_KEY}: {roster!r}")
    return roster


def save_household(public_ids: list[str], updated_by: str) -> bool:
    """Store the household roster (ids of existing users, each once); return whether it changed."""
    known = set(db.session.scalars(db.select(User.public_id).where(User.public_id.in_(public_ids))))
    roster = sorted(known)
    try:
        before = household()
    except SettingsUnavailable:
        before = None  # an unreadable roster is what the admin is repairing
    Setting.put(HOUSEHOLD_KEY, roster or None, updated_by)
    db.session.commit()
    return before is None or sorted(before) != roster


# --------------------------------------------------------------------------- the engines follow the settings

def whisper_to_load(app: Flask) -> str:
    """Return the Whisper model to load: an admin's choice in the database, else the configured one."""
    with app.app_context():
        name = whisper_model()
        if whisper_present(name) is False:
            # A stored choice whose files have gone must not keep the service from starting.
            logger.warning("Whisper %s is chosen in the settings but not on disk; loading %s",
                           name, app.config["WHISPER_MODEL"])
            return app.config["WHISPER_MODEL"]
        return name


# How often an instance at most looks whether another one changed the settings.
FOLLOW_SECONDS = 1.0
_FOLLOW_KEY = "voicegate.settings_follow"


class _Follow:
    def __init__(self):
        self.checked = 0.0
        self.seen: int | None = None
        self.lock = threading.Lock()


def follow_settings(app: Flask) -> None:
    """Switch the Whisper model when another instance changed it (looks at most once a second).

    The policy itself is read from the database for every session, so only what a process
    holds in memory (the loaded Whisper model) needs following.
    """
    follow: _Follow = app.extensions.setdefault(_FOLLOW_KEY, _Follow())
    now = time.monotonic()
    if now - follow.checked < FOLLOW_SECONDS or not engines_loaded(app) or not follow.lock.acquire(blocking=False):
        return
    try:
        follow.checked = now
        try:
            version = versions.current("settings")
        except SQLAlchemyError as error:  # looked at again on a later request
            db.session.rollback()
            logger.warning("could not read the settings version: %s", error)
            return
        if version == follow.seen:
            return
        follow.seen = version
        wanted = whisper_model()
        if whisper_present(wanted) is False:
            logger.warning("Whisper %s is chosen in the settings but not on disk here; keeping the one loaded", wanted)
            return
        status = whisper_status(app)
        if wanted != (status.get("wanted") or get_engines(app).whisper_name):
            logger.info("the settings changed elsewhere: switching Whisper to %s", wanted)
            switch_whisper(app, wanted)
    finally:
        follow.lock.release()
