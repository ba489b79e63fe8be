"""Meeting mode: one stream, a roster of enrolled users, every line labelled with who said it.

The identity gate of dictation (``dictation.py``) with a roster in place of one user. The
stream is split into utterances by the VAD and checked on the same grid of windows; each
check identifies its window against the roster, open-set (``decide.identify``: the best
roster voice above the calibrated threshold, by a margin over the runner-up, else nobody).
The release rule (``release.py``) is applied per speaker: a stretch is released as X's
only inside a check that named X and inside no check that named anyone else or nobody.
So a change of speaker within an utterance splits it into lines, the stretch where the
two voices' checks overlap goes to no one, and a stranger's speech is a line with no
text ("unverified speaker"). Lines are ``{speaker, start, end, text}``; partials show the
line in progress. The server keeps no line after the meeting: the client holds them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from . import calibration, decide, store
from ..errors import SessionError
from .base import Context, seconds, standing
from .release import ACCEPT, PENDING, REJECT, Check, spans
from .stream import GatedStream, Utterance, run_recording
from .transcript_export import UNVERIFIED_NAME as UNVERIFIED
from ..engines.speaker import cosine

logger = logging.getLogger(__name__)

MIN_ROSTER, MAX_ROSTER = 2, 10


@dataclass(frozen=True)
class Identified:
    """One check of a window [begin, end): the roster member it named (None: nobody), and the best raw score."""

    begin: int
    end: int
    speaker: str | None
    score: float


@dataclass(frozen=True)
class Part:
    """A stretch [begin, end) with one state (accept, reject, pending) and, when accepted, its speaker."""

    begin: int
    end: int
    state: str
    speaker: str | None = None
    score: float | None = None


def attributed(start: int, end: int, checks: list[Identified], settled: int | None) -> list[Part]:
    """Split [start, end) into stretches released to one speaker, rejected, or pending.

    The release rule for each speaker X, with "passed" meaning "named X": accepted as X's
    where inside a check that named X, inside none that named another or nobody, and
    settled. Rejected: under a check that named nobody, or under checks that disagree.
    """
    def as_checks(passes) -> list[Check]:
        return [Check(c.begin, c.end, c.score, passes(c)) for c in checks]

    own = {name: spans(start, end, as_checks(lambda c, name=name: c.speaker == name), settled)
           for name in sorted({c.speaker for c in checks if c.speaker})}
    anyone = spans(start, end, as_checks(lambda c: c.speaker is not None), settled)
    points = sorted({start, end} | {p for parts in (*own.values(), anyone) for s in parts for p in (s.begin, s.end)})
    out: list[Part] = []
    for begin, stop in zip(points, points[1:]):
        part = None
        for name, parts in own.items():
            span = _covering(parts, begin, stop)
            if span.state == ACCEPT:
                part = Part(begin, stop, ACCEPT, name, span.score)
                break
        if part is None:
            span = _covering(anyone, begin, stop)
            # Every check over it named someone, and they disagree: two voices meet here; no one's.
            part = Part(begin, stop, PENDING if span.state == PENDING else REJECT, None, span.score)
        if out and (out[-1].state, out[-1].speaker) == (part.state, part.speaker):
            scores = [s for s in (out[-1].score, part.score) if s is not None]
            out[-1] = Part(out[-1].begin, stop, part.state, part.speaker, min(scores) if scores else None)
        else:
            out.append(part)
    return out


def _covering(parts, begin: int, stop: int):
    return next(span for span in parts if span.begin <= begin and stop <= span.end)


@dataclass(frozen=True)
class Member:
    """One roster member: user name, the name shown for them, and their enrolled voice."""

    name: str
    display: str
    voice: np.ndarray


class MeetingSession(GatedStream):
    """A meeting behind the identity gate: ``audio`` in, partials and lines out (see the module docstring).

    Takes one of the server's dictation slots for the whole meeting, live or uploaded.
    ``shows_scores``: lines carry the best raw score (admins only).
    """

    mode = "meeting"
    noun = "meeting"
    TALLY = {"accept": "attributed", "reject": "unverified", "not_enough_speech": "too_short"}

    def __init__(self, ctx: Context, roster: list[Member], live: bool = True, shows_scores: bool = False,
                 opened_by: str | None = None):
        super().__init__(ctx, live)
        self.roster, self.shows_scores, self.opened_by = roster, shows_scores, opened_by
        self._voices = {member.name: member.voice for member in roster}
        self._display = {member.name: member.display for member in roster}
        self._take_slot()

    def roster_names(self) -> list[dict]:
        """Return the roster as ``{user, name}`` pairs (user name, and the name to show)."""
        return [{"user": m.name, "name": m.display} for m in self.roster]

    def _result(self) -> dict:
        return {"type": "result", "mode": "meeting", "request_id": self.request_id,
                "roster": self.roster_names(), "lines": len(self.emitted), **self._tally}

    def _partial_message(self, begin: int, whose: str | None, text: str) -> dict:
        return {"type": "partial", "line": len(self.emitted) + 1, "speaker": whose, "name": self._display[whose],
                "start": seconds(begin), "text": text}

    def _check(self, utterance: Utterance, begin: int, end: int, short: bool = False) -> None:
        """Identify the window [begin, end) against the roster, if it holds enough speech."""
        window = self._window(utterance, begin, end, short)
        if window is None:
            return
        begin, speech = window
        audio = self._slice(begin, end)
        embedding = self._embed(audio)
        if short:  # a phrase too short for a calibrated decision: raw cosine, stricter, as dictation does
            utterance.checks.append(self._identify_short(begin, end, embedding))
            return
        quality = calibration.measure_quality(audio, speech)
        match = decide.identify(embedding, self._voices, self.ctx.policy, quality)
        score = match.score if match.score is not None else -1.0
        utterance.checks.append(Identified(begin, end, match.user if match.state == "accept" else None, score))

    def _identify_short(self, begin: int, end: int, embedding: np.ndarray) -> Identified:
        policy = self.ctx.policy
        scores = sorted(((cosine(embedding, voice), name) for name, voice in self._voices.items()), reverse=True)
        (best, name), runner_up = scores[0], scores[1][0] if len(scores) > 1 else -1.0
        named = best >= policy.short_threshold and best - runner_up >= policy.identify_margin
        return Identified(begin, end, name if named else None, best)

    def _parts(self, start: int, end: int, checks: list[Identified], settled: int) -> list[Part]:
        return attributed(start, end, checks, settled)

    def _message(self, part: Part, state: str, text: str | None, begin: int) -> dict:
        line = {"type": "line", "line": len(self.emitted) + 1, "state": state, "speaker": part.speaker,
                "name": self._display[part.speaker] if part.speaker else UNVERIFIED,
                "start": seconds(begin), "end": seconds(part.end), "text": text}
        if self.shows_scores:
            line["score"] = None if part.score is None else round(part.score, 4)
        return line

    def _record(self, state: str, whose: str | None, begin: int, end: int, score: float | None,
                reason: str | None = None) -> None:
        """Audit one line's decision: who, how long, the score; never its text."""
        store.record(self.ctx.audit(
            self.request_id, "meeting", state, claimed_user=self.opened_by, matched_user=whose,
            score=score, threshold=None,  # decided on calibrated scores
            reason=reason or (None if state == "accept" else "unknown_speaker" if state == "reject" else state),
            audio_seconds=seconds(end - begin),
        ))


# --------------------------------------------------------------------------- opening a meeting

def roster_names(value) -> list[str]:
    """Return the roster a request names (a list, or a comma-separated string), each once; raise ``bad_roster``."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise SessionError("bad_roster", "roster must be a list of user names")
    names = list(dict.fromkeys(name.strip() for name in value if name.strip()))
    if not MIN_ROSTER <= len(names) <= MAX_ROSTER:
        raise SessionError("bad_roster", f"a meeting's roster names {MIN_ROSTER} to {MAX_ROSTER} users")
    return names


def open_meeting(ctx: Context, names, caller: str | None, *, admin: bool, live: bool = True) -> MeetingSession:
    """Return a meeting of the roster ``names``, or raise SessionError.

    Who may choose a roster: an admin, any enrolled users; a signed-in user (``caller``, proved
    by a session token or the sign-in cookie), enrolled users and themselves among them, so that
    nobody can run a meeting of other people's voices behind their backs. Anyone else: no one.
    Every member must be active and enrolled: an unusable member ends the meeting before it starts.
    """
    roster = roster_names(names)
    if not admin:
        if not caller:
            raise SessionError("not_allowed", "a meeting needs a signed-in user (a session token) or an admin")
        if caller not in roster:
            raise SessionError("not_allowed", "a signed-in user's meeting roster must include themselves")
    members = []
    for name in roster:
        user = store.find_user(name)
        problem = standing(user)
        if problem:
            raise SessionError("bad_roster", f"{name} cannot be in a meeting: "
                                             f"{'no such user' if problem == 'unknown_user' else problem.replace('_', ' ')}")
        members.append(Member(user.name, user.display_name or user.name, user.voiceprint.centroid_vector()))
    return MeetingSession(ctx, members, live=live, shows_scores=admin, opened_by=caller)


def transcribe_meeting(session: MeetingSession, audio: np.ndarray) -> list[dict]:
    """Run a whole recording through the meeting; return every message, the closing ``result`` last."""
    return run_recording(session, audio)
