"""Spoken challenges: random digits a voice login reads aloud, checked on the Whisper transcript.

A recording of the user cannot know the digits of a challenge issued after it was made.
"""
from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..store.models import utcnow

DIGITS = 6
CHALLENGE_SECONDS = 60
MODES = ("digits", "off")

# What Whisper may write for a spoken digit; homophones a careful reader produces count too.
_WORDS = {
    "zero": "0", "oh": "0", "o": "0", "nought": "0", "one": "1", "won": "1", "two": "2", "to": "2", "too": "2",
    "three": "3", "four": "4", "for": "4", "five": "5", "six": "6", "seven": "7", "eight": "8", "ate": "8",
    "nine": "9",
}
_TOKEN = re.compile(r"[a-z]+|\d")


@dataclass(frozen=True)
class Challenge:
    """Digits to say, and until when (UTC, naive like the database's times)."""

    digits: str
    expires_at: datetime
    id: str | None = None

    @property
    def text(self) -> str:
        """Return the digits as shown and sent: ``"4 7 1 9 0 2"``."""
        return " ".join(self.digits)

    def expires_in(self) -> int:
        """Return the whole seconds left (0 once expired)."""
        return max(0, math.ceil((self.expires_at - utcnow()).total_seconds()))

    def expired(self) -> bool:
        """Return True once the challenge may no longer be answered."""
        return utcnow() >= self.expires_at


def new_challenge(challenge_id: str | None = None) -> Challenge:
    """Return a fresh random challenge that expires in CHALLENGE_SECONDS."""
    digits = "".join(secrets.choice("0123456789") for _ in range(DIGITS))
    return Challenge(digits, utcnow() + timedelta(seconds=CHALLENGE_SECONDS), challenge_id)


def spoken_digits(transcript: str) -> str:
    """Return the digits said in ``transcript``: "four seven", "4, 7" and "47" all give "47".

    Words that are not digits (and punctuation) are skipped.
    """
    return "".join(_WORDS.get(token, token if token.isdigit() else "") for token in _TOKEN.findall(transcript.lower()))


def answered(challenge: Challenge, transcript: str) -> bool:
    """Return True when ``transcript`` says exactly the challenge's digits, in order."""
    return spoken_digits(transcript) == challenge.digits
