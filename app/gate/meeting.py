"""Meeting mode: one stream, a roster of enrolled users, every line labelled with who said it.

The identity gate of dictation (``dictation.py``) with a roster in place of one user. The
stream is split into utterances by the VAD and checked on the same grid of windows; each
check identifies its window against the roster, open-set (``decide.identify``: the best
roster voice above the calibrated threshold, by a margin over the runner-up, else nobody).
The release rule (``release.py``) is applied per speaker: a stretch is released as X's
only inside a check that named X and inside no check that named anyone else or nobody.
So a change of speaker within an utterance splits it into lines, and a stranger's speech
is a line with no text ("unverified speaker").

Turns are found, not guessed (``turn_between``). The 2 s checks on a 1 s grid cannot place
a change of voice finer than a second: where two checks that follow each other name two
roster members (A then B), or name nobody between an A and a B (a window half one voice,
half the other), 1 s windows every 0.25 s across the stretch in doubt look for the single
point where A's voice gives way to B's. Found, the checks are narrowed to meet there;
not found, the stretch stays no one's (unattributed), never guessed. Beside a check that
named nobody with no second voice past it (a stranger, perhaps), a voice is followed into
that check only as far as its own windows reach a stricter floor, and one step short of
that. Lines are
``{speaker, start, end, text}``; partials show the line in progress. The server keeps no
line after the meeting: the client holds them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from . import calibration, decide, store
from ..errors import SessionError
from .base import Context, run_model, seconds, standing
from .release import ACCEPT, PENDING, REJECT, SAMPLE_RATE, Check, horizon, spans
from .stream import GatedStream, Utterance, run_recording
from .transcript_export import UNVERIFIED_NAME as UNVERIFIED
from ..engines.fused import PART_DIM, in_space
from ..engines.speaker import cosine, normalise

logger = logging.getLogger(__name__)

MIN_ROSTER, MAX_ROSTER = 2, 10
# Turn finding: windows this long, this far apart (a change is placed to within a step).
TURN_WINDOW = SAMPLE_RATE
TURN_STEP = SAMPLE_RATE // 4
# A finer window names its side when that voice is its closest on the roster and at least this
# close (raw cosine): above the decision floor (policy.threshold), as 1 s says less than 2 s. Here
# the window lies between two checks that named two roster voices, and only asks which of them.
TURN_FLOOR = 0.30
# Beside a window that named nobody (perhaps a stranger), a voice is looked for alone, against a
# stricter floor (docs/threshold.md: 1.15% of other voices' 1 s phrases reach 0.40 on speech-more,
# and every window up to the turn must), and the stretch given to it stops one step short.
LONE_FLOOR = 0.40
# At most this many checks that named nobody lie between two voices for their turn to be searched.
MAX_BETWEEN = 2
# A finer window with less speech than this says nothing about who speaks (a pause): not required.
TURN_MIN_SPEECH = 0.5


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


def turn_between(centres: list[int], named: list[str | None], margins: list[float], low: int, high: int,
                 step: int = TURN_STEP) -> int | None:
    """Return where one voice gives way to the next in [low, high], or None when no single change fits.

    The candidates lie every ``step`` samples from ``low``. Each finer window is given by its
    centre, the side it names (``"left"``, ``"right"``, ``"quiet"`` for too little speech,
    anything else for neither) and its margin (left's cosine minus right's). At a change p, every
    window centred before p must name the left voice and every one after it the right, the one
    centred on p aside (half each) and quiet ones aside; of the points that fit, the one the
    margins favour most.
    """
    best, best_fit = None, None
    for point in range(low, high + 1, step):
        before = [i for i, c in enumerate(centres) if c < point and named[i] != "quiet"]
        after = [i for i, c in enumerate(centres) if c > point and named[i] != "quiet"]
        if not before or not after:
            continue
        if any(named[i] != "left" for i in before) or any(named[i] != "right" for i in after):
            continue
        fit = sum(margins[i] for i in before) - sum(margins[i] for i in after)
        if best_fit is None or fit > best_fit:
            best, best_fit = point, fit
    return best


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
    audit_kind = "meeting"  # what each line's audit row is (household commands reuse the meeting)
    TALLY = {"accept": "attributed", "reject": "unverified", "not_enough_speech": "too_short"}

    def __init__(self, ctx: Context, roster: list[Member], live: bool = True, shows_scores: bool = False,
                 opened_by: str | None = None):
        super().__init__(ctx, live)
        self.roster, self.shows_scores, self.opened_by = roster, shows_scores, opened_by
        # One space for the whole roster: while a member's voice is of ECAPA alone (or the server
        # runs ECAPA alone), everyone's is compared as ECAPA's (app/engines/fused.py).
        self._dim = min([member.voice.size for member in roster] + [getattr(ctx.engines.speaker, "dim", PART_DIM)])
        self._voices = {member.name: in_space(member.voice, self._dim) for member in roster}
        self._display = {member.name: member.display for member in roster}
        # The roster's unit voices as columns, for scoring a turn's finer windows in one product.
        self._names = [member.name for member in roster]
        self._columns = np.stack([normalise(self._voices[name]) for name in self._names], axis=1)
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
        embedding = in_space(self._embedding(begin, end), self._dim)
        if short:  # a phrase too short for a calibrated decision: raw cosine, stricter, as dictation does
            utterance.checks.append(self._identify_short(begin, end, embedding))
            return
        quality = calibration.measure_quality(audio, speech)
        match = decide.identify(embedding, self._voices, self.ctx.policy, quality)
        score = match.score if match.score is not None else -1.0
        utterance.checks.append(Identified(begin, end, match.user if match.state == "accept" else None, score))
        self._find_turn(utterance)

    def _find_turn(self, utterance: Utterance) -> None:
        """Where the newest checks change from one roster voice to another, narrow them to meet at the turn.

        A then B: searched in their overlap. A, nobody (one or two windows), B: searched across
        the windows that named nobody, which are then split between A and B. A then nobody, or
        nobody then B, with no second voice: A's (B's) stretch followed into the window that
        named nobody (see ``_turn``). Nothing already sent is searched or changed.
        """
        checks = utterance.checks
        if len(checks) >= 2 and _named_pair(checks[-2], checks[-1]):
            left, right = checks[-2], checks[-1]
            point = self._turn(utterance, left, right, right.begin, left.end)
            if point is not None:
                checks[-2], checks[-1] = replace(left, end=point), replace(right, begin=point)
            return
        if len(checks) >= 2 and checks[-1].speaker is None and checks[-2].speaker and _follows(checks[-2], checks[-1]):
            left, nobody = checks[-2], checks[-1]  # A, then nobody: how far into the window does A's voice reach?
            point = self._turn(utterance, left, nobody, nobody.begin, left.end)
            if point is not None and point - TURN_STEP > nobody.begin:
                checks[-1] = replace(nobody, begin=point - TURN_STEP)
            return
        between = _nobody_between(checks)
        if not between and len(checks) >= 2 and checks[-2].speaker is None and checks[-1].speaker \
                and _follows(checks[-2], checks[-1]):
            nobody, right = checks[-2], checks[-1]  # nobody (not between two voices), then B: from where is it B?
            point = self._turn(utterance, nobody, right, right.begin, nobody.end)
            if point is not None and point + TURN_STEP < nobody.end:
                checks[-2] = replace(nobody, end=point + TURN_STEP)
            return
        if between:
            left, right = checks[-2 - between], checks[-1]
            low, high = checks[-1 - between].begin, checks[-2].end
            point = self._turn(utterance, left, right, low, high)
            if point is not None:
                checks[-2 - between:] = [replace(left, end=min(left.end, point)),
                                         *(part for part in (replace(left, begin=low, end=point),
                                                             replace(right, begin=point, end=high))
                                           if part.end > part.begin),
                                         replace(right, begin=max(right.begin, point))]

    def _turn(self, utterance: Utterance, left: Identified, right: Identified, low: int, high: int) -> int | None:
        """Return where ``left``'s voice gives way to ``right``'s in [low, high], from 1 s windows; None if unclear.

        One side may have named nobody (``speaker`` None): then the other side's voice is looked
        for alone, against a higher floor, and anything else counts as the nobody side.
        """
        low = max(low, utterance.emitted_until)
        if high <= low:
            return None
        half = TURN_WINDOW // 2
        # Beside nobody, the named voice is looked for only where it is in doubt: not re-proved where already accepted.
        first = low if not right.speaker else low - half
        last = high if not left.speaker else high + half
        centres = [c for c in range(first, last + 1, TURN_STEP)
                   if c - half >= max(left.begin, utterance.start) and c + half <= right.end]
        if not centres:
            return None
        clips = [self._slice(c - half, c + half) for c in centres]
        if any(clip.size != TURN_WINDOW for clip in clips):
            return None
        try:
            embeddings = run_model(self.ctx, self.ctx.engines.speaker.embed_many, clips)
        except SessionError as error:
            if error.code != "busy":
                raise
            return None  # a full pool: the stretch stays no one's rather than the meeting ending
        names = self._names
        scores = in_space(embeddings, self._dim) @ self._columns
        floor = TURN_FLOOR if left.speaker and right.speaker else LONE_FLOOR
        named, margins = [], []
        for c, row in zip(centres, scores):
            a = row[names.index(left.speaker)] if left.speaker else floor
            b = row[names.index(right.speaker)] if right.speaker else floor
            margins.append(float(a - b))
            best = names[int(np.argmax(row))]
            voice = best if row.max() >= floor else None
            if self._endpointer.speech_seconds_between(c - half, c + half) < TURN_MIN_SPEECH:
                named.append("quiet")
            elif voice and voice == left.speaker:
                named.append("left")
            elif voice and voice == right.speaker:
                named.append("right")
            else:  # neither voice: the nobody side's, if there is one
                named.append("right" if right.speaker is None else "left" if left.speaker is None else None)
        return turn_between(centres, named, margins, low, high)

    def _settled(self, utterance: Utterance) -> int | None:
        """As the release rule, but hold back a voice's end while the windows after it named nobody.

        They may yet lie between this voice and another (A, nobody, B): the turn is found when
        the next voice is named, and the stretch before them must still be open then (at most
        ``MAX_BETWEEN`` windows: a line waits at most that many seconds more).
        """
        settled = horizon(utterance.checks, utterance.end)
        checks = utterance.checks
        if utterance.end is not None or settled is None:
            return settled
        trailing = next((k for k, check in enumerate(reversed(checks)) if check.speaker), len(checks))
        if 1 <= trailing <= MAX_BETWEEN and trailing < len(checks):
            return min(settled, checks[-trailing].begin)
        return settled

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
            self.request_id, self.audit_kind, state, claimed_user=self.opened_by, matched_user=whose,
            score=score, threshold=None,  # decided on calibrated scores
            reason=reason or (None if state == "accept" else "unknown_speaker" if state == "reject" else state),
            audio_seconds=seconds(end - begin),
        ))


def _nobody_between(checks: list[Identified]) -> int:
    """Return how many checks named nobody between the newest and the last that named another voice (0: not so).

    At most ``MAX_BETWEEN``, each overlapping the next: one stretch where the voices meet.
    """
    for count in range(1, min(MAX_BETWEEN, len(checks) - 2) + 1):
        middle = checks[-1 - count:-1]
        if any(c.speaker for c in middle):
            return 0
        run = checks[-2 - count:]
        if checks[-2 - count].speaker:
            if all(_follows(a, b) for a, b in zip(run, run[1:])) and _two_voices(run[0], run[-1]):
                return count
            return 0
    return 0


def _follows(left: Identified, right: Identified) -> bool:
    """Return True when ``right`` is the next window after ``left``, overlapping it."""
    return left.begin < right.begin < left.end


def _two_voices(left: Identified, right: Identified) -> bool:
    """Return True when two checks name two different roster members."""
    return bool(left.speaker and right.speaker and left.speaker != right.speaker)


def _named_pair(left: Identified, right: Identified) -> bool:
    """Return True when two checks name two different roster members, the second the next window after the first."""
    return _two_voices(left, right) and _follows(left, right)


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
