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
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from . import calibration, decide, store
from .base import Context, SessionError, new_request_id, run_model, seconds, standing
from .dictation import BLOCK, LEAD_IN, MIN_TEXT_SECONDS, MIN_WINDOW_SPEECH, SNAP_SECONDS
from .transcript_export import UNVERIFIED_NAME as UNVERIFIED
from .release import ACCEPT, PENDING, REJECT, STEP_SAMPLES, WINDOW_SAMPLES, Check, horizon, spans
from ..audio.vad import SAMPLE_RATE
from ..engines.pool import Busy
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


@dataclass
class _Utterance:
    """One stretch of speech in the stream, in stream samples, with the checks made on it so far."""

    start: int
    end: int | None = None
    checks: list[Identified] = field(default_factory=list)
    emitted_until: int = 0
    partial_sent: bool = False

    def __post_init__(self):
        self.emitted_until = self.start


@dataclass(frozen=True)
class Member:
    """One roster member: user name, the name shown for them, and their enrolled voice."""

    name: str
    display: str
    voice: np.ndarray


class MeetingSession:
    """A meeting behind the identity gate: ``audio`` in, partials and lines out (see the module docstring).

    Takes one of the server's dictation slots for the whole meeting, live or uploaded.
    ``shows_scores``: lines carry the best raw score (admins only).
    """

    mode = "meeting"

    def __init__(self, ctx: Context, roster: list[Member], live: bool = True, shows_scores: bool = False,
                 opened_by: str | None = None):
        self.ctx, self.roster, self.shows_scores, self.opened_by = ctx, roster, shows_scores, opened_by
        self.request_id = new_request_id()
        self.done = False
        policy = ctx.policy
        self.partials = live and policy.partial_interval != float("inf")
        self._voices = {member.name: member.voice for member in roster}
        self._display = {member.name: member.display for member in roster}
        self._endpointer = ctx.engines.vad.endpointer(policy.end_silence_ms, policy.max_utterance_seconds)
        self._audio = np.zeros(0, dtype=np.float32)
        self._offset = 0
        self._received = 0
        self._utterance: _Utterance | None = None
        self._next_check = 0
        self._lines = 0
        self._partial: tuple[int, str, Future] | None = None  # (span begin, speaker, transcription)
        self._last_partial = 0
        self._accepted_until: int | None = None  # end of the last attributed speech (context for short phrases)
        self._partial_speaker: str | None = None  # whose partial text the client has been shown
        self._tally = {"attributed": 0, "unverified": 0, "too_short": 0}
        self.lines: list[dict] = []  # every line, for callers that answer once (HTTP); dropped with the session
        self._slot = ctx.engines.streams.acquire()  # last: nothing after it can fail and leave the slot taken
        if not self._slot:
            raise SessionError("busy", f"the server is taking all the dictations it can keep up with "
                                       f"({ctx.engines.streams.limit}); try again in a moment")

    # -- adapter interface (as DictateSession's)

    def audio(self, samples: np.ndarray) -> list[dict]:
        """Take more of the stream; return partials and lines that are ready."""
        self._received += samples.size
        if self._received > self.ctx.policy.max_dictation_seconds * SAMPLE_RATE:
            raise SessionError("too_long", f"a meeting may last at most {self.ctx.policy.max_dictation_seconds:g} s")
        self._audio = np.concatenate([self._audio, samples])
        messages = []
        for kind, at in self._endpointer.feed(samples):
            messages += self._event(kind, at)
        if self._utterance is not None:
            self._run_checks(self._endpointer.position)
            messages += self._settle()
            self._start_partial()
        else:
            # A start is dated back from where it is found: keep its lead-in whatever the framing (as dictation).
            self._trim(self._endpointer.position - self._endpointer.start_lag - int(LEAD_IN * SAMPLE_RATE))
        return messages + self.poll()

    def stop(self) -> list[dict]:
        """End the stream: finish the open utterance and report the totals."""
        messages = []
        for kind, at in self._endpointer.flush():
            messages += self._event(kind, at)
        self.done = True
        return messages + [{"type": "result", "mode": "meeting", "request_id": self.request_id,
                            "roster": self.roster_names(), "lines": self._lines, **self._tally}]

    def close(self) -> None:
        """Give back the slot, and audit text a vanished client was shown; adapters always call this."""
        utterance = self._utterance
        try:
            if not self.done and utterance is not None and utterance.partial_sent and self._partial_speaker:
                utterance.partial_sent = False
                self._record(ACCEPT, self._partial_speaker, utterance.emitted_until, self._endpointer.position, None,
                             reason="client_left")
        finally:
            if self._slot:
                self._slot = False
                self.ctx.engines.streams.release()

    def roster_names(self) -> list[dict]:
        """Return the roster as ``{user, name}`` pairs (user name, and the name to show)."""
        return [{"user": m.name, "name": m.display} for m in self.roster]

    def partial_in_flight(self) -> bool:
        """Return True while a partial transcript is being computed (``poll`` returns it when done)."""
        return self._partial is not None and not self._partial[2].done()

    def poll(self) -> list[dict]:
        """Return a partial transcript that has finished computing, if it still stands."""
        if self._partial is None or not self._partial[2].done():
            return []
        begin, speaker, future = self._partial
        self._partial = None
        utterance = self._utterance
        if utterance is None or utterance.emitted_until != begin:
            return []  # that stretch has been settled by a line meanwhile
        text = future.result().text
        if not text:
            return []
        utterance.partial_sent, self._partial_speaker = True, speaker
        return [{"type": "partial", "line": self._lines + 1, "speaker": speaker, "name": self._display[speaker],
                 "start": seconds(begin), "text": text}]

    # -- utterances and checks

    def _event(self, kind: str, at: int) -> list[dict]:
        if kind == "start":
            start = max(self._offset, at - int(LEAD_IN * SAMPLE_RATE))
            self._utterance = _Utterance(start)
            self._next_check = start + WINDOW_SAMPLES
            self._last_partial = start
            return []
        utterance = self._utterance
        if utterance is None:
            return []
        self._run_checks(at)
        utterance.end = at
        messages = self._finish(utterance)
        self._utterance = None
        self._trim(at)
        return messages

    def _run_checks(self, until: int) -> None:
        """Make the grid checks of the open utterance that end by ``until`` (as dictation does)."""
        while self._next_check <= until:
            self._check(self._utterance, self._next_check - WINDOW_SAMPLES, self._next_check)
            self._next_check += STEP_SAMPLES

    def _check(self, utterance: _Utterance, begin: int, end: int, short: bool = False) -> None:
        """Identify the window [begin, end) against the roster, if it holds enough speech."""
        begin = max(begin, utterance.start)
        speech = self._endpointer.speech_seconds_between(begin, end)
        if speech < min(MIN_WINDOW_SPEECH, self.ctx.policy.min_verify_speech) and not short:
            return
        audio = self._slice(begin, end)
        embedding = run_model(self.ctx, self.ctx.engines.speaker.embed, audio)
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

    def _finish(self, utterance: _Utterance) -> list[dict]:
        """Check an ended utterance to its end and settle all of it."""
        end = utterance.end
        if not utterance.checks:
            speech = self._endpointer.speech_seconds_between(utterance.start, end)
            if speech >= self.ctx.policy.min_verify_speech:
                self._check(utterance, end - WINDOW_SAMPLES, end)
            elif self._short_phrase_allowed(utterance):
                self._check(utterance, utterance.start, end, short=True)
        elif max(check.end for check in utterance.checks) < end:
            self._check(utterance, end - WINDOW_SAMPLES, end)
        return self._settle(utterance)

    def _short_phrase_allowed(self, utterance: _Utterance) -> bool:
        policy = self.ctx.policy
        return (policy.short_context_seconds > 0 and self._accepted_until is not None
                and utterance.start - self._accepted_until <= policy.short_context_seconds * SAMPLE_RATE)

    def _settle(self, utterance: _Utterance | None = None) -> list[dict]:
        """Send the lines of every stretch of the utterance that nothing can change any more."""
        utterance = utterance or self._utterance
        ended = utterance.end is not None
        end = utterance.end if ended else self._endpointer.position
        settled = horizon(utterance.checks, utterance.end)
        if settled is None or settled <= utterance.emitted_until:
            return []
        parts = attributed(utterance.start, end, utterance.checks, settled)
        # While the utterance is open, the stretch reaching the horizon may still grow: it waits.
        ready = [p for p in parts if p.end > utterance.emitted_until and (ended or p.end < settled)]
        messages = []
        for part in ready:
            index = parts.index(part)
            before = parts[index - 1] if index else None
            after = parts[index + 1] if index + 1 < len(parts) else None
            messages += self._line(part, utterance, before, after)
        return messages

    def _line(self, part: Part, utterance: _Utterance, before: Part | None, after: Part | None) -> list[dict]:
        """Decide one settled stretch: transcribe it if attributed; audit it; return its line (if worth one)."""
        begin = max(part.begin, utterance.emitted_until)
        utterance.emitted_until = part.end
        if part.state != ACCEPT and part.end - begin < MIN_TEXT_SECONDS * SAMPLE_RATE:
            return []  # a sliver between checks: too short to hold a word
        state = {ACCEPT: "accept", REJECT: "reject", PENDING: "not_enough_speech"}[part.state]
        text = None
        if state == "accept":
            other = lambda p: p is not None and (p.state != ACCEPT or p.speaker != part.speaker)  # noqa: E731
            cut_begin = self._snap(begin, +1) if other(before) else begin
            cut_end = self._snap(part.end, -1) if other(after) else part.end
            text = self._transcribe(cut_begin, cut_end)
            self._accepted_until = part.end
        utterance.partial_sent, self._partial_speaker = False, None
        self._lines += 1
        self._tally[{"accept": "attributed", "reject": "unverified"}.get(state, "too_short")] += 1
        self._record(state, part.speaker, begin, part.end, part.score)
        line = {"type": "line", "line": self._lines, "state": state, "speaker": part.speaker,
                "name": self._display[part.speaker] if part.speaker else UNVERIFIED,
                "start": seconds(begin), "end": seconds(part.end), "text": text}
        if self.shows_scores:
            line["score"] = None if part.score is None else round(part.score, 4)
        self.lines.append(line)
        return [line]

    def _snap(self, at: int, direction: int) -> int:
        """Move a cut at ``at`` into the attributed side (``direction``) to a pause close by, if there is one."""
        reach = int(SNAP_SECONDS * SAMPLE_RATE)
        low, high = (at, at + reach) if direction > 0 else (at - reach, at)
        pause = self._endpointer.pause_in(max(low, self._offset), high)
        return at if pause is None else pause

    def _transcribe(self, begin: int, end: int) -> str:
        if end - begin < MIN_TEXT_SECONDS * SAMPLE_RATE:
            return ""
        return run_model(self.ctx, self.ctx.engines.transcriber.transcribe, self._slice(begin, end)).text

    def _record(self, state: str, speaker: str | None, begin: int, end: int, score: float | None,
                reason: str | None = None) -> None:
        """Audit one line's decision: who, how long, the score; never its text."""
        store.record(self.ctx.audit(
            self.request_id, "meeting", state, claimed_user=self.opened_by, matched_user=speaker,
            score=score, threshold=None,  # decided on calibrated scores
            reason=reason or (None if state == "accept" else "unknown_speaker" if state == "reject" else state),
            audio_seconds=seconds(end - begin),
        ))

    def _start_partial(self) -> None:
        """Transcribe the attributed stretch that is still growing, when a worker is free and enough is new."""
        utterance = self._utterance
        pool = self.ctx.engines.pool
        if not self.partials or self._partial is not None or pool.pending >= pool.workers:
            return  # partials are a courtesy: never queue them behind decisions
        settled = horizon(utterance.checks, None)
        if settled is None or settled - self._last_partial < self.ctx.policy.partial_interval * SAMPLE_RATE:
            return
        parts = attributed(utterance.start, settled, utterance.checks, settled)
        growing = parts[-1] if parts else None
        if growing is None or growing.state != ACCEPT or growing.begin != utterance.emitted_until:
            return
        self._last_partial = settled
        try:
            future = pool.submit(partial(self.ctx.engines.transcriber.transcribe, draft=True),
                                 self._slice(growing.begin, settled))
            self._partial = (growing.begin, growing.speaker, future)
        except Busy:
            self._partial = None

    def _slice(self, begin: int, end: int) -> np.ndarray:
        return self._audio[max(0, begin - self._offset): max(0, end - self._offset)]

    def _trim(self, keep_from: int) -> None:
        """Drop audio before ``keep_from`` that no open utterance needs (it is never stored)."""
        if self._utterance is not None:
            keep_from = min(keep_from, self._utterance.start)
        drop = keep_from - self._offset
        if drop > 0:
            self._audio = self._audio[drop:]
            self._offset = keep_from


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
    messages = []
    for start in range(0, audio.size, BLOCK):
        messages += session.audio(audio[start:start + BLOCK])
    return messages + session.stop()
