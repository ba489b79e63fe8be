"""Joined recordings: an enrolled speaker and another voice in one stream, to try the identity gate.

Each recording is the owner's utterance and another voice's (a real speaker of the set, or
espeak-ng), in either order, with a pause between them. What the gate returns is scored by
two measures: the other voice's words that came out (leaks; the goal is none) and the
share of the owner's words that came out, beside plain Whisper on the owner's part alone.
Audio is made in memory; nothing is written to disk.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import espeak

SAMPLE_RATE = 16000
PAUSES = (0.0, 0.25, 1.0)
ORDERS = ("owner_first", "other_first")
# espeak-ng voices and sentences that no speaker of the sets says.
SYNTHETIC = (
    ("en-us+m3", "Please send the quarterly report to the finance team before Friday afternoon."),
    ("en+f2", "Our neighbour bought seventeen yellow umbrellas during the winter sale yesterday."),
)


@dataclass(frozen=True)
class Part:
    """One voice's stretch: its audio, what it says, and a label."""

    label: str
    audio: np.ndarray
    text: str


@dataclass(frozen=True)
class Joined:
    """One recording: the owner's part and another voice's, in ``order``, ``pause`` seconds apart."""

    owner: Part
    other: Part
    order: str
    pause: float

    @property
    def name(self) -> str:
        """Return a short name for reports and test ids."""
        return f"{self.owner.label}+{self.other.label}/{self.order}/{self.pause:g}s"

    @property
    def owner_span(self) -> tuple[float, float]:
        """Return where the owner speaks in the recording, in seconds."""
        length = self.owner.audio.size / SAMPLE_RATE
        if self.order == "owner_first":
            return 0.0, length
        begin = self.other.audio.size / SAMPLE_RATE + self.pause
        return begin, begin + length

    @property
    def audio(self) -> np.ndarray:
        """Return the joined 16 kHz float32 audio."""
        gap = np.zeros(int(self.pause * SAMPLE_RATE), np.float32)
        first, second = (self.owner, self.other) if self.order == "owner_first" else (self.other, self.owner)
        return np.concatenate([first.audio, gap, second.audio]).astype(np.float32)


def synthetic_parts() -> list[Part]:
    """Return the espeak-ng voices, one sentence each."""
    return [Part(f"espeak-{voice}", espeak(voice, text, speed=150), text) for voice, text in SYNTHETIC]


def recordings(owner: Part, others: list[Part], pauses=PAUSES, orders=ORDERS) -> list[Joined]:
    """Return every joined recording of ``owner`` with each of ``others``, in each order and pause."""
    return [Joined(owner, other, order, pause) for other in others for order in orders for pause in pauses]


def words(text: str | None) -> list[str]:
    """Return the words of ``text`` after Whisper's English normalisation."""
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()(text or "").split()


Text = str | None | tuple[str | None, float, float]


def leaks(joined: Joined, texts: list[Text], owner_heard: str | None = None) -> list[str]:
    """Return the words of ``texts`` that only the other voice said.

    A word counts when the other voice's transcript has it and the owner's does not, nor what
    plain Whisper heard in the owner's part alone (``owner_heard``): on hard speech Whisper
    mishears the owner too ("the" for "her"), and such a word is no leak. A text may come with
    its segment's times, ``(text, start, end)``: a segment that lies wholly inside the owner's
    part holds none of the other voice's audio, so what Whisper invents there ("Thank you for
    watching" on a mumble) is no leak either. Texts without times are always counted.
    """
    own = set(words(joined.owner.text)) | set(words(owner_heard))
    theirs = set(words(joined.other.text)) - own
    low, high = joined.owner_span
    found = []
    for text in texts:
        if isinstance(text, tuple):
            text, start, end = text
            if start >= low - 1e-3 and end <= high + 1e-3:
                continue
        found += [word for word in words(text) if word in theirs]
    return found


def timed(shown: list[tuple[str | None, float | None, float | None]]) -> list[Text]:
    """Return texts in the order shown, ``(text, start, end)`` for finals and, for partials, the next final's times.

    A partial is the accepted stretch still growing; the next final settles that same stretch
    from the same start and at least as far, so the partial's audio lies within the final's
    times. A partial with no final after it keeps no times (it is always counted).
    """
    out: list[Text] = []
    times = None
    for text, start, end in reversed(shown):
        if start is not None:
            times = (start, end)
            out.append((text, start, end))
        else:
            out.append(text if times is None else (text, *times))
    return out[::-1]


def recall(reference: str, text: str | None) -> float:
    """Return the share of ``reference``'s words found in ``text`` (each word counted as often as it occurs)."""
    wanted, heard = words(reference), words(text)
    pool = {}
    for word in heard:
        pool[word] = pool.get(word, 0) + 1
    found = 0
    for word in wanted:
        if pool.get(word, 0) > 0:
            pool[word] -= 1
            found += 1
    return found / len(wanted) if wanted else 1.0
