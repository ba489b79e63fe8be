"""Meeting recordings made from a speech set, and how to score what the meeting engine returns.

A meeting is a list of turns (a speaker's file), joined with a pause between them, with
none, or overlapping (one speaker interrupting another: the next voice starts before the
last has finished, both heard at once). Speakers on the roster are named by user name; a
stranger (not on the roster) is named ``None`` in the reference. Audio is made in memory.

Scores, on lines ``{speaker, start, end, text}``:
- attribution: the share of each roster speaker's reference words found in the text of the
  lines named for them (and plain Whisper's share on the same turns, for scale);
- cpWER: the word error rate of each roster speaker's lines against their own words, all
  speakers added up (speakers are named, so the permutation is the identity);
- leaks: words only the stranger said that came out in a partial or in a line that overlaps a
  stranger's turn (a line wholly inside roster turns holds none of the stranger's audio);
- line accuracy: the share of attributed line time that lies in a turn of the speaker it names;
- unattributed: the share of the roster speakers' turn time that lies in lines named for nobody
  (a stretch the engine could not give to one voice, left unnamed rather than guessed), and how
  much of it the stranger was speaking over;
- stranger clearance: how close a named line comes to where only the stranger speaks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .joined import words

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Turn:
    """One speaker's stretch in a meeting: who (None: a stranger), what they say, and where it lies."""

    speaker: str | None
    text: str
    audio: np.ndarray
    start: float = 0.0

    @property
    def end(self) -> float:
        """Return where the turn ends, in seconds."""
        return self.start + self.audio.size / SAMPLE_RATE


@dataclass(frozen=True)
class Meeting:
    """A recording of turns, and its name."""

    name: str
    turns: tuple[Turn, ...]
    audio: np.ndarray

    @property
    def seconds(self) -> float:
        """Return the meeting's length in seconds."""
        return self.audio.size / SAMPLE_RATE

    def stranger_words(self, heard: dict[str, str] | None = None) -> set[str]:
        """Return the words only the stranger said (nor any roster speaker, nor Whisper on their turns: ``heard``)."""
        own = {w for t in self.turns if t.speaker for w in words(t.text)}
        own |= {w for text in (heard or {}).values() for w in words(text)}
        return {w for t in self.turns if t.speaker is None for w in words(t.text)} - own


def compose(name: str, parts: list[tuple[str | None, str, np.ndarray]], gap: float | list[float] = 1.0,
            lead: float = 0.5, tail: float = 1.0) -> Meeting:
    """Join ``(speaker, text, audio)`` parts into a meeting, ``gap`` seconds apart (negative: overlapping).

    ``gap`` is one for all, or one per join (a list one shorter than ``parts``).
    """
    gaps = list(gap) if isinstance(gap, (list, tuple)) else [gap] * max(0, len(parts) - 1)
    turns, cursor = [], lead
    for index, (speaker, text, audio) in enumerate(parts):
        turns.append(Turn(speaker, text, audio.astype(np.float32), round(cursor, 3)))
        cursor = turns[-1].end + (gaps[index] if index < len(gaps) else 0.0)
    total = int((max(t.end for t in turns) + tail) * SAMPLE_RATE)
    mix = np.zeros(total, np.float32)
    for turn in turns:
        begin = int(turn.start * SAMPLE_RATE)
        mix[begin:begin + turn.audio.size] += turn.audio
    return Meeting(name, tuple(turns), np.clip(mix, -1, 1))


def _bag(text_words: list[str]) -> dict[str, int]:
    bag: dict[str, int] = {}
    for word in text_words:
        bag[word] = bag.get(word, 0) + 1
    return bag


def found(reference: list[str], hypothesis: list[str]) -> int:
    """Return how many reference words the hypothesis holds (each counted as often as it occurs)."""
    pool, count = _bag(hypothesis), 0
    for word in reference:
        if pool.get(word, 0) > 0:
            pool[word] -= 1
            count += 1
    return count


def by_speaker(lines: list[dict]) -> dict[str, str]:
    """Return the text of the lines named for each speaker, joined in order."""
    out: dict[str, list[str]] = {}
    for line in lines:
        if line.get("speaker") and line.get("text"):
            out.setdefault(line["speaker"], []).append(line["text"])
    return {speaker: " ".join(texts) for speaker, texts in out.items()}


def references(meeting: Meeting) -> dict[str, str]:
    """Return each roster speaker's words in the meeting, joined in order."""
    out: dict[str, list[str]] = {}
    for turn in meeting.turns:
        if turn.speaker:
            out.setdefault(turn.speaker, []).append(turn.text)
    return {speaker: " ".join(texts) for speaker, texts in out.items()}


def score(meeting: Meeting, lines: list[dict], partials: list[str] = (), heard: dict[str, str] | None = None,
          slack: float = 0.0, voiced=None) -> dict:
    """Score one meeting's lines (and partial texts) against its turns; counts, so that meetings add up.

    ``slack`` widens each turn by that many seconds on both sides when judging line time: for a
    timeline that is not the reference's sample for sample (a browser's fake microphone).
    ``voiced``: a function giving a turn's (start, end) of speech, silent ends left out (default: the whole turn).
    """
    import jiwer

    refs, hyps = references(meeting), by_speaker(lines)
    ref_words = {s: words(t) for s, t in refs.items()}
    hyp_words = {s: words(t) for s, t in hyps.items()}
    errors = 0
    for speaker in set(ref_words) | set(hyp_words):
        ref, hyp = ref_words.get(speaker, []), hyp_words.get(speaker, [])
        if not ref:
            errors += len(hyp)  # words given to someone who said nothing: all insertions
        else:
            measures = jiwer.process_words(" ".join(ref), " ".join(hyp) if hyp else "")
            errors += measures.substitutions + measures.deletions + measures.insertions
    theirs = meeting.stranger_words(heard)
    # A line wholly outside the stranger's turns holds none of their audio: what Whisper invents
    # there is no leak (as bench/joined.py counts). Partials have no end: they always count.
    strangers = [t for t in meeting.turns if t.speaker is None]
    texts = [line.get("text") for line in lines
             if any(line["start"] < t.end and line["end"] > t.start for t in strangers)] + list(partials)
    leaked = [w for text in texts for w in words(text) if w in theirs]
    roster_turns = [t for t in meeting.turns if t.speaker]
    unnamed_lines = [(line["start"], line["end"]) for line in lines if not line.get("speaker")]
    unnamed = sum(_overlap(span, (t.start, t.end)) for span in unnamed_lines for t in roster_turns)
    voiced = voiced or (lambda turn: (turn.start, turn.end))
    spoken = {id(turn): voiced(turn) for turn in meeting.turns}
    # Of that, the time both were speaking (interrupting; their speech, not their files' silent ends):
    # no roster word there can be released without the stranger's voice under it, so it is left
    # unnamed by rule, not by doubt.
    both = [(max(spoken[id(t)][0], spoken[id(o)][0]), min(spoken[id(t)][1], spoken[id(o)][1]))
            for t in roster_turns for o in strangers]
    alongside = sum(_overlap(span, pair) for span in unnamed_lines for pair in both)
    # How close each named line comes to where only the stranger speaks (their speech, less the named
    # speaker's own turn): negative, it reaches into it.
    clearances = []
    for line in lines:
        if line.get("speaker"):
            own = [(t.start, t.end) for t in roster_turns if t.speaker == line["speaker"]]
            for other in strangers:
                for lone in _minus(spoken[id(other)], own):
                    inside = _overlap((line["start"], line["end"]), lone)
                    clearances.append(round(-inside if inside else max(lone[0] - line["end"], line["start"] - lone[1]), 3))
    attributed = right = 0.0
    for line in lines:
        if not line.get("speaker"):
            continue
        span = line["end"] - line["start"]
        attributed += span
        right += sum(max(0.0, min(line["end"], t.end + slack) - max(line["start"], t.start - slack))
                     for t in meeting.turns if t.speaker == line["speaker"])
    return {
        "reference_words": sum(len(w) for w in ref_words.values()),
        "attributed_words": sum(found(ref_words[s], hyp_words.get(s, [])) for s in ref_words),
        "errors": errors,
        "leaked_words": leaked,
        "stranger_turns": sum(t.speaker is None for t in meeting.turns),
        "attributed_seconds": round(attributed, 3),
        "right_seconds": round(min(right, attributed), 3),
        "roster_seconds": round(sum(t.end - t.start for t in roster_turns), 3),
        "unattributed_seconds": round(unnamed, 3),
        "unattributed_alongside_stranger_seconds": round(alongside, 3),
        "stranger_clearances": clearances,
        "stranger_lines_named": sum(1 for line in lines if line.get("speaker") and any(
            t.speaker is None and min(line["end"], t.end) - max(line["start"], t.start) > 0.5 * (line["end"] - line["start"])
            for t in meeting.turns)),
    }


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def _minus(span: tuple[float, float], cuts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Return ``span`` less the intervals ``cuts``, as intervals."""
    pieces = [span]
    for low, high in cuts:
        pieces = [piece for a, b in pieces for piece in ((a, min(b, low)), (max(a, high), b)) if piece[1] > piece[0]]
    return pieces


def plain_found(meeting: Meeting, heard: dict[int, str]) -> int:
    """Return how many roster words plain Whisper finds on each roster turn alone (``heard`` by turn index)."""
    return sum(found(words(t.text), words(heard.get(i))) for i, t in enumerate(meeting.turns) if t.speaker)
