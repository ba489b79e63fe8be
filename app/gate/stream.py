"""What dictation and meetings share: a stream cut into utterances, checked on a grid, settled by the release rule.

``GatedStream`` takes audio as it arrives, finds utterances with the VAD, checks each one
on the grid of windows of ``release.py`` while it is spoken, and hands Whisper only the
stretches the release rule settles. At a pause that may end an utterance, the checks of that
end are made ahead, and its text decoded (sent only if it does end there). What a
check decides (one user's voice, or who of a roster), how settled stretches are split, and what
is sent for each is the subclass's: ``dictation.DictateSession`` and ``meeting.MeetingSession``.
"""
from __future__ import annotations

from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from ..errors import SessionError
from ..observe import metrics
from .base import Context, embed_window, new_request_id, run_model
from .release import ACCEPT, PENDING, REJECT, STEP_SAMPLES, WINDOW_SAMPLES, horizon
from ..audio.vad import SAMPLE_RATE
from ..engines.pool import Busy

# Audio kept before an utterance's first voiced window, so its first word is not clipped.
# With TRAIL it stays inside the end_silence (600 ms) the VAD heard between two utterances.
LEAD_IN = 0.3
# Silence kept after an utterance's last voiced window: the VAD dates an end to where its
# confidence first drops, which can clip a soft last syllable (faster-whisper pads its own
# VAD segments likewise). It is silence to the VAD, so it holds no other voice's words.
TRAIL = 0.3
# A check needs this much speech in its window; windows with less are left to their neighbours.
MIN_WINDOW_SPEECH = 1.0
# At a boundary with another voice, an accepted stretch is cut at a pause up to this far
# inside it, if there is one, so that Whisper is not handed half a word (inward never leaks).
SNAP_SECONDS = 0.3
# Accepted stretches shorter than this hold no word worth transcribing.
MIN_TEXT_SECONDS = 0.3
# A draft of less than this is mostly Whisper's guess ("We'll see you next time." on the first
# half second of a voice just after a turn): partials wait until the stretch is this long.
MIN_PARTIAL_SECONDS = 1.0
# Whisper's confidence in a language it detected from which a stream keeps that language; below
# it, the next stretch is detected again (base tells Czech from Polish badly on a few seconds).
LANGUAGE_SURE = 0.5
# Audio is handed to an engine in blocks this long, as a live stream would arrive.
BLOCK = SAMPLE_RATE // 4
# A lone live stream that has shown no text for this many seconds of its audio waits for the
# partial being computed (or, with none started, for the piece decoded ahead that keeps it from
# starting): on a CPU shared with other processes a draft can take longer than the utterance,
# and would then never be seen. Streams with company never wait (courtesy).
PARTIAL_DUE = 3.0
# How long such a wait may last at most (a stuck draft must not stall the stream).
PARTIAL_WAIT = 10.0
# A live stream decodes its settled, accepted speech while the person goes on talking, in pieces
# of at least AHEAD_SECONDS, each cut in the middle of a pause of AHEAD_PAUSE (s) where the VAD
# hears no speech, so that no word is cut in two: a final then waits only for what came after
# the last piece. Cut at any pause (a comma's), speech-dev's LJ sentences lost words to the missing
# context ("that | as an example" came back "that has an example"): WER 2.5% -> 4.2%; cut at
# pauses of 0.2 s it stayed 2.5% and the median final came 110 ms sooner (in-process, 6 files).
AHEAD_SECONDS = 2.0
AHEAD_PAUSE = 0.2


@dataclass(frozen=True)
class Piece:
    """Settled, accepted audio [begin, end) of the open utterance, decoded ahead as a final would be."""

    begin: int
    end: int
    future: Future


@dataclass
class Utterance:
    """One stretch of speech in the stream, in stream samples, with the checks made on it so far."""

    start: int
    end: int | None = None
    speech_end: int | None = None  # where the VAD heard its speech end (``end`` may add TRAIL of silence)
    checks: list = field(default_factory=list)
    emitted_until: int = 0  # messages have been sent for everything before this sample
    partial_sent: bool = False

    def __post_init__(self):
        self.emitted_until = self.start


class GatedStream:
    """The utterance machinery of a gated stream (see the module docstring); subclasses decide.

    A subclass implements ``_check`` (one window, or a short phrase), ``_parts`` (the settled
    stretches of an utterance), ``_message`` (one settled stretch's), ``_result``,
    ``_partial_message`` and ``_record`` (one audit row), and names the result's counters in ``TALLY``.
    """

    mode = ""
    noun = "stream"
    TALLY: dict[str, str] = {}  # a settled stretch's state -> the result counter it adds to

    def __init__(self, ctx: Context, live: bool, language: str | None = None):
        self.ctx = ctx
        self.request_id = new_request_id()
        # What Whisper writes: the asked language, or (None) the one it detects in the first
        # transcribed stretch where it is sure (LANGUAGE_SURE), kept for the rest of the stream so
        # that every stretch is in one language and the fast short-window decode applies (it needs one).
        self.language = language
        self.detected: str | None = None  # the language detected last while none was kept
        self.done = False
        policy = ctx.policy
        self.partials = live and policy.partial_interval != float("inf")
        self._live = live
        self._endpointer = ctx.engines.vad.endpointer(policy.end_silence_ms, policy.max_utterance_seconds)
        self._audio = np.zeros(0, dtype=np.float32)
        self._offset = 0  # stream sample of self._audio[0]
        self._received = 0
        self._utterance: Utterance | None = None
        self._next_check = 0
        self._partial: tuple[int, str | None, Future] | None = None  # (span begin, whose, transcription)
        self._ahead: list[Piece] = []  # consecutive pieces of the growing accepted stretch, decoded ahead
        # Embeddings of the windows an utterance's end would check, started at a pause that may be
        # its end (``_prepare_end``), by the exact stretch of the stream they embed.
        self._early: dict[tuple[int, int], Future] = {}
        self._prepared: tuple[int, int] | None = None  # (speech end, utterance end) of the pause last prepared for
        # The text of the accepted stretch an end at that pause would settle: ((begin, end, rest), its
        # decoding); (None, None) when that end would send none; None while not yet decided.
        self._decoded_at_pause: tuple[tuple[int, int, bool] | None, Future | None] | None = None
        self._shown: str | None = None  # whose partial text the client has been shown in the open utterance
        self._last_partial = 0
        self._last_shown = 0  # stream sample where the client last got text, or the open utterance began
        self._accepted_until: int | None = None  # end of the last accepted speech (context for short phrases)
        self._slot = False
        self.emitted: list[dict] = []  # every settled stretch's message, for callers that answer once (HTTP)
        self._tally = dict.fromkeys(self.TALLY.values(), 0)

    @property
    def written_language(self) -> str | None:
        """Return the language the stream's text is written in: the kept one, else the last detected; None before any text."""
        return self.language or self.detected

    def _take_slot(self) -> None:
        """Hold one of the server's dictation slots; call it last, so nothing after it can fail and leave it taken."""
        self._slot = self.ctx.engines.streams.acquire()
        if not self._slot:
            raise SessionError("busy", f"the server is taking all the dictations it can keep up with "
                                       f"({self.ctx.engines.streams.limit}); try again in a moment")

    # -- adapter interface

    def audio(self, samples: np.ndarray) -> list[dict]:
        """Take more of the stream; return the partials and settled messages that are ready."""
        self._received += samples.size
        limit = self.ctx.policy.max_dictation_seconds
        if self._received > limit * SAMPLE_RATE:
            raise SessionError("too_long", f"a {self.noun} may last at most {limit:g} s")
        self._audio = np.concatenate([self._audio, samples])
        messages = []
        for kind, at in self._endpointer.feed(samples):
            messages += self._event(kind, at)
        if self._utterance is not None:
            self._run_checks(self._endpointer.position)
            messages += self._settle()
            self._prepare_end()  # first: at a pause, the end's work comes before courtesy drafts
            self._start_partial()
            self._decode_ahead()
            self._wait_for_due_partial()
        else:
            # A start is found only after some speech, and dated back: keep enough for its lead-in
            # whatever the framing, so that every surface cuts the same utterance.
            self._trim(self._endpointer.position - self._endpointer.start_lag - int(LEAD_IN * SAMPLE_RATE))
        return messages + self.poll()

    def stop(self) -> list[dict]:
        """End the stream: finish the open utterance and report the totals."""
        messages = []
        for kind, at in self._endpointer.flush():
            messages += self._event(kind, at)
        self.done = True
        return messages + [self._result()]

    def close(self) -> None:
        """Give back the slot, and audit text a vanished client was shown; adapters always call this."""
        utterance = self._utterance
        self._drop_prepared()
        try:
            if not self.done and utterance is not None and utterance.partial_sent:
                # The client left mid-utterance after seeing partial text: that text needs its row too.
                utterance.partial_sent = False
                self._record(ACCEPT, self._shown, utterance.emitted_until, self._endpointer.position, None,
                             reason="client_left")
        finally:
            if self._slot:
                self._slot = False
                self.ctx.engines.streams.release()

    def partial_in_flight(self) -> bool:
        """Return True while a partial transcript is being computed (``poll`` returns it when done)."""
        return self._partial is not None and not self._partial[2].done()

    def poll(self) -> list[dict]:
        """Return a partial transcript that has finished computing, if it still stands."""
        if self._partial is None or not self._partial[2].done():
            return []
        begin, whose, future = self._partial
        self._partial = None
        utterance = self._utterance
        if utterance is None or utterance.emitted_until != begin:
            return []  # that stretch has been settled meanwhile
        text = future.result().text
        if not text:
            return []
        utterance.partial_sent, self._shown = True, whose
        self._last_shown = self._endpointer.position
        return [self._partial_message(begin, whose, text)]

    # -- utterances and checks

    def _event(self, kind: str, at: int) -> list[dict]:
        if kind == "start":
            start = max(self._offset, at - int(LEAD_IN * SAMPLE_RATE))
            self._utterance = Utterance(start)
            self._next_check = start + WINDOW_SAMPLES
            self._last_partial = self._last_shown = start
            return []
        utterance = self._utterance
        if utterance is None:
            return []
        utterance.speech_end = at
        at = self._trailed(at)
        self._run_checks(at)
        utterance.end = at
        messages = self._finish(utterance)
        self._drop_prepared()
        self._utterance, self._ahead = None, []
        self._trim(at)
        return messages

    def _trailed(self, speech_end: int) -> int:
        """Return where an utterance whose speech ended at ``speech_end`` ends: TRAIL of silence later, as much of it as came.

        An end found for length keeps its speech, and ends where it was cut.
        """
        trail = min(speech_end + int(TRAIL * SAMPLE_RATE), self._endpointer.position)
        return trail if self._endpointer.speech_seconds_between(speech_end, trail) == 0 else speech_end

    def _run_checks(self, until: int) -> None:
        """Make the periodic checks of the open utterance that end by ``until``.

        They end on a fixed grid from the utterance's start, so every surface decides
        alike whatever its framing (50 ms browser frames, Kõnele's 200 ms, a whole upload).
        """
        while self._next_check <= until:
            self._check(self._utterance, self._next_check - WINDOW_SAMPLES, self._next_check)
            self._next_check += STEP_SAMPLES

    def _window(self, utterance: Utterance, begin: int, end: int, short: bool) -> tuple[int, float] | None:
        """Return where a check of [begin, end) starts and its seconds of speech, or None when it has too little."""
        begin = max(begin, utterance.start)
        speech = self._endpointer.speech_seconds_between(begin, end)
        if speech < min(MIN_WINDOW_SPEECH, self.ctx.policy.min_verify_speech) and not short:
            return None
        return begin, speech

    def _embed(self, audio: np.ndarray) -> np.ndarray:
        return embed_window(self.ctx, audio)  # batched with other live streams' windows

    def _embedding(self, begin: int, end: int) -> np.ndarray:
        """Return the embedding of the stream's [begin, end): the one started early for it, if any, else computed now."""
        early = self._early.get((begin, end))
        if early is not None and not early.cancelled() and early.exception() is None:
            return early.result()
        return self._embed(self._slice(begin, end))

    def _prepare_end(self) -> None:
        """At a pause of TRAIL in a live utterance, start embedding the windows its end there would check.

        The utterance may end at that pause (the endpointer says so ``end_silence_ms`` later, or
        the client stops): its last checks are then done, and only its decoding is left. Speech
        that goes on leaves them unused. The decisions are the same either way (each embedding is
        of the very stretch a check takes). It is the stream's own end's work, queued as required
        work (a draft in flight only delays it), for a lone live stream only.
        """
        utterance, pause = self._utterance, self._endpointer.silence_start
        # A lone stream only, as a precaution: most pauses do not end the utterance, and with company
        # the work done in vain would hold up the others' checks. Beside a CPU-bound process, 4
        # streams fell behind alike with it (then as courtesy work) and without it
        # (docs/benchmarks.md), so it is not measured to matter either way.
        if not self._live or utterance is None or pause is None or self.ctx.engines.streams.open > 1:
            return
        if self._prepared is None or self._prepared[0] != pause:
            end = self._trailed(pause)
            if end - pause < int(TRAIL * SAMPLE_RATE):
                return
            self._drop_prepared()
            self._prepared = pause, end
            for begin, stop in self._end_windows(utterance, pause, end):
                try:
                    self._early[(begin, stop)] = self.ctx.engines.pool.submit(
                        self.ctx.engines.speaker.embed, self._slice(begin, stop))
                except Busy:
                    break
        self._decode_at_pause()

    def _decode_at_pause(self) -> None:
        """When the checks an end at the prepared pause needs are embedded, decide that end on a copy, and decode its text.

        The copy's checks are the ones the end would make, on the same embeddings, so its accepted
        stretch is what the end would settle: verified, the whole utterance's last window and last
        second included. Its text is used only when the utterance does end there and settles that
        very stretch (``_transcribe``); speech that goes on drops it unseen.
        """
        transcriber = self.ctx.engines.transcriber
        language = self.language if transcriber.multilingual else "en"
        if language is None or self._decoded_at_pause is not None:
            return
        # Waited for here, as a check is: the audio that comes meanwhile waits in the connection.
        wait(list(self._early.values()))
        stretch = self._last_accepted_at(*self._prepared)
        if stretch is None:
            self._decoded_at_pause = None, None  # that end would send no text: nothing to decode
            return
        begin, end, rest = stretch
        try:
            future = self.ctx.engines.pool.submit(partial(transcriber.transcribe, language=language, rest=rest),
                                                  self._slice(begin, end))
        except Busy:
            self._decoded_at_pause = None, None  # the end decodes it, as without a pause
            return
        self._decoded_at_pause = stretch, future

    def _last_accepted_at(self, speech_end: int, end: int) -> tuple[int, int, bool] | None:
        """Return what a final would decode if the open utterance ended at ``end``: (begin, end, rest); None unless accepted."""
        utterance = self._utterance
        trial = Utterance(utterance.start, end, speech_end, list(utterance.checks))
        trial.emitted_until = utterance.emitted_until
        state = self._decision_state()
        try:
            self._end_checks(trial)
        finally:
            self._restore_decision_state(state)
        parts = self._parts(trial.start, end, trial.checks, end)
        ready = [part for part in parts if part.end > trial.emitted_until]
        if not ready or ready[-1].state != ACCEPT:
            return None
        part = ready[-1]
        index = parts.index(part)
        begin, stop = self._cut(part, max(part.begin, trial.emitted_until), parts[index - 1] if index else None, None)
        pieces = self._pieces(begin, stop)
        return (pieces[-1].end, stop, True) if pieces else (begin, stop, False)

    def _drop_prepared(self) -> None:
        """Forget what was prepared for an end at a pause (the pool drops work that has not begun)."""
        decoding = self._decoded_at_pause[1] if self._decoded_at_pause is not None else None
        if decoding is not None:
            metrics.count_pause_decode("dropped")
        for future in [*self._early.values(), *([decoding] if decoding is not None else [])]:
            future.cancel()
        self._early, self._prepared, self._decoded_at_pause = {}, None, None

    def _decision_state(self) -> object:
        """Return what the session's checks change besides the utterance's list (subclasses), to put back after a trial."""
        return None

    def _restore_decision_state(self, state: object) -> None:
        """Put back what ``_decision_state`` returned (subclasses)."""

    def _end_windows(self, utterance: Utterance, speech_end: int, end: int) -> list[tuple[int, int]]:
        """Return the stretches ``_finish`` would embed if the utterance's speech ended at ``speech_end`` and it at ``end``."""
        return [(max(utterance.start, begin), end) for begin, _ in self._last_windows(utterance, end)]

    def _finish(self, utterance: Utterance) -> list[dict]:
        """Check an ended utterance to its end and settle all of it."""
        self._end_checks(utterance)
        return self._settle(utterance)

    def _end_checks(self, utterance: Utterance) -> None:
        """Make the checks an ended utterance gets at its end."""
        for begin, short in self._last_windows(utterance, utterance.end):
            self._check(utterance, begin, utterance.end, short=short)
        self._check_end(utterance)

    def _last_windows(self, utterance: Utterance, end: int) -> list[tuple[int, bool]]:
        """Return where the windows an utterance ending at ``end`` is checked on there begin, and whether each is a short phrase."""
        if not utterance.checks:
            speech = self._endpointer.speech_seconds_between(utterance.start, end)
            if speech >= self.ctx.policy.min_verify_speech:
                return [(end - WINDOW_SAMPLES, False)]
            # A short phrase right after accepted speech: decided on its own, stricter.
            return [(utterance.start, True)] if self._short_phrase_allowed(utterance) else []
        if max(check.end for check in utterance.checks) < end:
            return [(end - WINDOW_SAMPLES, False)]
        return []

    def _check_end(self, utterance: Utterance) -> None:
        """Check the newest part of an ended utterance's last window, which no later window vouches for (subclasses)."""

    def _short_phrase_allowed(self, utterance: Utterance) -> bool:
        """Return True when a phrase too short to verify alone follows accepted speech closely."""
        return self._soon_after(self._accepted_until, utterance.start)

    def _soon_after(self, mark: int | None, at: int) -> bool:
        """Return True when ``at`` is at most short_context_seconds after ``mark`` (the context short speech leans on)."""
        context = self.ctx.policy.short_context_seconds
        return context > 0 and mark is not None and at - mark <= context * SAMPLE_RATE

    def _settle(self, utterance: Utterance | None = None) -> list[dict]:
        """Send the messages of every stretch of the utterance that nothing can change any more."""
        utterance = utterance or self._utterance
        ended = utterance.end is not None
        end = utterance.end if ended else self._endpointer.position
        settled = self._settled(utterance)
        if settled is None or settled <= utterance.emitted_until:
            return []
        parts = self._parts(utterance.start, end, utterance.checks, settled)
        # While the utterance is open, the stretch reaching the horizon may still grow: it waits.
        ready = [p for p in parts if p.end > utterance.emitted_until and (ended or p.end < settled)]
        messages = []
        for part in ready:
            index = parts.index(part)
            before = parts[index - 1] if index else None
            after = parts[index + 1] if index + 1 < len(parts) else None
            begin = max(part.begin, utterance.emitted_until)
            utterance.emitted_until = part.end
            if part.state != ACCEPT and part.end - begin < MIN_TEXT_SECONDS * SAMPLE_RATE:
                continue  # a sliver between checks: too short to hold a word
            utterance.partial_sent, self._shown = False, None
            self._last_shown = self._endpointer.position
            messages += self._emit(part, begin, before, after)
        return messages

    def _settled(self, utterance: Utterance) -> int | None:
        """Return the sample before which nothing of the utterance can change any more (the release rule's horizon)."""
        return horizon(utterance.checks, utterance.end)

    def _outcome(self, part, begin: int, before, after) -> tuple[str, str | None]:
        """Return a settled stretch's state (accept, reject, not_enough_speech) and, when accepted, its text."""
        state = {ACCEPT: "accept", REJECT: "reject", PENDING: "not_enough_speech"}[part.state]
        if state != "accept":
            return state, None
        self._accepted_until = part.end
        return state, self._transcribe(*self._cut(part, begin, before, after))

    def _emit(self, part, begin: int, before, after) -> list[dict]:
        """Decide one settled stretch: transcribe it if accepted; audit it; return its message."""
        state, text = self._outcome(part, begin, before, after)
        self._tally[self.TALLY[state]] += 1
        self._record(state, _whose(part), begin, part.end, part.score)
        message = self._message(part, state, text, begin)
        self.emitted.append(message)
        return [message]

    def _cut(self, part, begin: int, before, after) -> tuple[int, int]:
        """Return where to cut an accepted stretch for Whisper: pulled inward to a pause at a change of voice."""
        cut_begin = self._snap(begin, +1) if self._changes(part, before) else begin
        cut_end = self._snap(part.end, -1) if self._changes(part, after) else part.end
        return cut_begin, cut_end

    @staticmethod
    def _changes(part, neighbour) -> bool:
        """Return True when ``neighbour`` is not the same voice's accepted speech as ``part``."""
        return neighbour is not None and (neighbour.state != ACCEPT or _whose(neighbour) != _whose(part))

    def _snap(self, at: int, direction: int) -> int:
        """Move a cut at ``at`` into the accepted side (``direction``) to a pause within SNAP_SECONDS, if there is one."""
        reach = int(SNAP_SECONDS * SAMPLE_RATE)
        low, high = (at, at + reach) if direction > 0 else (at - reach, at)
        pause = self._endpointer.pause_in(max(low, self._offset), high)
        return at if pause is None else pause

    def _transcribe(self, begin: int, end: int, rest: bool = False) -> str:
        """Return the text of [begin, end); ``rest``: what follows pieces decoded ahead (Transcriber.transcribe)."""
        pieces = [] if rest else self._pieces(begin, end)
        if pieces:
            # Decoded while the person spoke: only the rest is left to do (the texts join at pauses).
            metrics.count_final_transcript("ahead")
            texts = [piece.future.result().text for piece in pieces]
            return joined([*texts, self._transcribe(pieces[-1].end, end, rest=True)])
        if end - begin < MIN_TEXT_SECONDS * SAMPLE_RATE:
            return ""
        at_pause = self._decoded_at_pause
        if at_pause is not None and at_pause[0] == (begin, end, rest) and not at_pause[1].cancelled() \
                and at_pause[1].exception() is None:
            # The very stretch decoded at the pause where the utterance has now ended.
            self._decoded_at_pause = None
            metrics.count_pause_decode("used")
            if self._live and not rest:
                metrics.count_final_transcript("pause")
            return at_pause[1].result().text
        if self._live and not rest:
            metrics.count_final_transcript("whole")
        transcript = run_model(self.ctx, partial(self.ctx.engines.transcriber.transcribe, language=self.language,
                                                 among=self.ctx.policy.detect_among, rest=rest),
                               self._slice(begin, end))
        if self.language is None and transcript.text:
            self.detected = transcript.language
            if transcript.language_probability >= LANGUAGE_SURE:
                self.language = transcript.language
        return transcript.text

    def _growing(self):
        """Return the open utterance's settled horizon and its accepted stretch still growing (None, None if none).

        The stretch is the last settled one, accepted, with nothing of it sent yet: what a partial
        shows and what pieces decoded ahead are cut from.
        """
        utterance = self._utterance
        settled = horizon(utterance.checks, None)
        parts = [] if settled is None else self._parts(utterance.start, settled, utterance.checks, settled)
        growing = parts[-1] if parts else None
        if growing is None or growing.state != ACCEPT or growing.begin != utterance.emitted_until:
            return None, None
        return settled, growing

    def _start_partial(self) -> None:
        """Transcribe the accepted stretch that is still growing, when a worker is free and enough is new."""
        pool = self.ctx.engines.pool
        if not self.partials or self._partial is not None or not pool.courtesy_room():
            return  # partials are a courtesy: never queue them, nor let them hold up decisions
        settled, growing = self._growing()
        if growing is None or settled - self._last_partial < self.ctx.policy.partial_interval * SAMPLE_RATE \
                or settled - growing.begin < MIN_PARTIAL_SECONDS * SAMPLE_RATE:
            return
        self._last_partial = settled
        try:
            # Not counted as load by admission (pool.StreamSlots): streams are admitted for what they must do.
            future = pool.submit_courtesy(partial(self.ctx.engines.transcriber.transcribe, language=self.language,
                                                  draft=True, among=self.ctx.policy.detect_among),
                                          self._slice(growing.begin, settled))
            self._partial = (growing.begin, _whose(growing), future)
        except Busy:
            self._partial = None

    def _decode_ahead(self) -> None:
        """Decode the next piece of the growing accepted stretch that is settled and ends at a pause.

        Only settled, accepted audio (the release rule's, as for a partial), only once the stream's
        language is fixed (every piece and the rest are then decoded alike), one piece at a time,
        and only on a worker nothing else needs (courtesy): under load, finals decode it all at the end.
        """
        transcriber = self.ctx.engines.transcriber
        language = self.language if transcriber.multilingual else "en"
        if not self._live or language is None or (self._ahead and not self._ahead[-1].future.done()):
            return
        settled, growing = self._growing()
        if growing is None:
            return
        if self._ahead and (self._ahead[0].begin != growing.begin or any(p.future.exception() for p in self._ahead)):
            # A stretch settled meanwhile (these pieces belong to no final any more), or a decode failed.
            self._ahead = []
        begin = self._ahead[-1].end if self._ahead else growing.begin
        if settled - begin < AHEAD_SECONDS * SAMPLE_RATE or not self.ctx.engines.pool.courtesy_room():
            return
        pause = self._endpointer.pause_in(begin + int(AHEAD_SECONDS * SAMPLE_RATE), settled)
        half = int(AHEAD_PAUSE / 2 * SAMPLE_RATE)
        if pause is None or self._endpointer.speech_seconds_between(pause - half, pause + half) > 0:
            return
        try:
            future = self.ctx.engines.pool.submit_courtesy(partial(transcriber.transcribe, language=language),
                                                           self._slice(begin, pause))
        except Busy:
            return
        self._ahead.append(Piece(begin, pause, future))

    def _pieces(self, begin: int, end: int) -> list[Piece]:
        """Return the pieces decoded ahead that cover [begin, end) from its start (none if they do not fit it)."""
        pieces = [piece for piece in self._ahead if piece.end <= end]
        if not pieces or pieces[0].begin != begin or any(piece.future.exception() for piece in pieces):
            return []
        return pieces

    def _wait_for_due_partial(self) -> None:
        """Wait for a partial when this lone live stream has shown no text for PARTIAL_DUE s.

        With none started, a piece decoded ahead may be what holds the courtesy room a draft
        needs: the stream waits for that piece, starts the draft, and waits for it.
        """
        if not self.partials or self.ctx.engines.streams.open > 1 \
                or self._endpointer.position - self._last_shown < PARTIAL_DUE * SAMPLE_RATE:
            return  # with other live streams, partials yield: their checks and finals come first
        if self._partial is None and self._ahead and not self._ahead[-1].future.done():
            wait([self._ahead[-1].future], timeout=PARTIAL_WAIT)
            self._start_partial()
        if self.partial_in_flight():
            wait([self._partial[2]], timeout=PARTIAL_WAIT)

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

    # -- what subclasses decide

    def _check(self, utterance: Utterance, begin: int, end: int, short: bool = False) -> None:
        raise NotImplementedError

    def _parts(self, start: int, end: int, checks: list, settled: int) -> list:
        raise NotImplementedError

    def _message(self, part, state: str, text: str | None, begin: int) -> dict:
        """Return the message that tells the client of one settled stretch (``begin`` to its end)."""
        raise NotImplementedError

    def _result(self) -> dict:
        raise NotImplementedError

    def _partial_message(self, begin: int, whose: str | None, text: str) -> dict:
        raise NotImplementedError

    def _record(self, state: str, whose: str | None, begin: int, end: int, score: float | None,
                reason: str | None = None) -> None:
        raise NotImplementedError


def joined(texts: list[str]) -> str:
    """Return consecutive pieces of one stretch's text as one.

    Whisper ends every piece it is given as a sentence; the next says whether it really ended
    there: a piece's closing full stop goes when the next goes on in lower case.
    """
    out = ""
    for text in (t.strip() for t in texts):
        if not text:
            continue
        if out.endswith(".") and not out.endswith("..") and text[0].islower():
            out = out[:-1]
        out = f"{out} {text}" if out else text
    return out


def _whose(part) -> str | None:
    """Return whose voice an accepted stretch is (a meeting's speaker; None in a one-user dictation)."""
    return getattr(part, "speaker", None)


def run_recording(session: GatedStream, audio: np.ndarray) -> list[dict]:
    """Run a whole recording through a gated stream; return every message, the closing ``result`` last."""
    messages = []
    for start in range(0, audio.size, BLOCK):
        messages += session.audio(audio[start:start + BLOCK])
    return messages + session.stop()
