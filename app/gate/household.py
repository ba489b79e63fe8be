"""Voice commands for a household: the words of a roster member's verified voice, and no one else's.

A home assistant's speech-to-text server (app/protocols/wyoming.py) opens one command per
spoken request. Who may speak is the admin's household roster (``settings.household``); how a
voice is told apart is the meeting's gate (``meeting.py``): each window is identified against
the roster, open-set, and a stretch is released as X's only where every check over it named X.
So a television, a guest or a stranger gives no words, and a command said over another voice
keeps only the member's. Each stretch is audited as kind ``command``, never with its text.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from . import settings, store
from .base import Context, SessionError, standing
from .meeting import MeetingSession, Member

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Command:
    """What a command said: the members' words, who said them (``{user, name}``, in order), its request id."""

    text: str
    speakers: list[dict]
    request_id: str


class CommandSession(MeetingSession):
    """One spoken command behind the identity gate: ``audio`` in, ``finish`` gives the Command."""

    mode = "command"
    noun = "voice command"
    audit_kind = "command"

    def __init__(self, ctx: Context, roster: list[Member], language: str | None = None):
        super().__init__(ctx, roster, live=True, shows_scores=False)
        self.partials = False  # one transcript at the end: drafts would cost CPU and show nothing
        self.language = language
        self._lines: list[dict] = []

    def feed(self, samples) -> None:
        """Take more of the command (16 kHz mono float32)."""
        self._lines += [m for m in self.audio(samples) if m.get("type") == "line"]

    def finish(self) -> Command:
        """End the command; return the words of roster members' voices and who said them."""
        self._lines += [m for m in self.stop() if m.get("type") == "line"]
        spoken = [line for line in self._lines if line["state"] == "accept" and line["text"]]
        speakers: dict[str, str] = {}
        for line in spoken:
            speakers.setdefault(line["speaker"], line["name"])
        return Command(" ".join(line["text"] for line in spoken),
                       [{"user": user, "name": name} for user, name in speakers.items()], self.request_id)


def model_language(requested: str | None, languages: list[str]) -> str | None:
    """Return the language to transcribe in: the model's only one, the requested one ("en-US" is "en"), or None (detect)."""
    if len(languages) == 1:
        return languages[0]
    if not requested:
        return None
    code = requested.replace("_", "-").split("-", 1)[0].lower()
    return code if code in languages else None


def open_command(ctx: Context, language: str | None = None) -> CommandSession:
    """Return a command session over the household roster, or raise SessionError.

    ``language``: what the client asked for; transcribed in it when the model knows it, else detected.

    A member who cannot be verified (deleted, disabled, not enrolled) is left out; with
    nobody left (or no roster), nothing may be transcribed: ``no_roster``. Unreadable
    settings raise SettingsUnavailable (``busy``). Takes one of the server's dictation slots.
    """
    members = []
    for public_id in settings.household():
        user = store.find_account(public_id)
        problem = standing(user)
        if problem:
            logger.info("household member %s left out of a command: %s", public_id[:8], problem)
            continue
        members.append(Member(user.name, user.display_name or user.name, user.voiceprint.centroid_vector()))
    if not members:
        raise SessionError("no_roster", "nobody may give voice commands here: an admin chooses the household "
                                        "on the settings screen, from enrolled users")
    return CommandSession(ctx, members, model_language(language, ctx.engines.transcriber.languages))
