"""Speech to text with faster-whisper (CTranslate2, int8 on the CPU)."""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FRAMES_PER_SECOND = 100  # Whisper's mel frames
WINDOW_FRAMES = 3000  # the 30 s every Whisper encoder pass is trained on
# A draft (a partial) is encoded with 2 s of silence after it, rounded up to a whole second,
# instead of padded to 30 s (what whisper.cpp calls audio_ctx): a 5 s utterance takes about
# 90 ms instead of 440 on an AVX-512 machine. Its words differ now and then from the 30 s
# window's (woodcutters / wood cutters): over speech-more, 22.5% WER against plain's 22.0%.
SHORT_PAD_FRAMES = 200
# Text that stays (a final) is encoded over at least this many seconds, its audio then silence.
# That costs about half the encoder work of 30 s, and its words were at least as right as plain
# faster-whisper's over 30 s: 2.8% against 4.0% WER on speech-dev, 21.2% against 22.0% on
# speech-more, with 40% less CPU there (over 10 s: 3.4% and 21.9%, too close to call). Checked
# like a draft, and decoded again over 30 s when it looks wrong (28 of 280 speech-more files).
FINAL_MIN_SECONDS = 15.0
# The rest of an utterance whose beginning was decoded while it was spoken (GatedStream's pieces,
# each over FINAL_MIN_SECONDS) is a second or two: encoded over 8 s it takes about 110 ms
# instead of 190 (tiny.en, 1.5 s of speech, AVX-512), the wait a final has after the person stops.
REST_MIN_SECONDS = 8.0
# faster-whisper's own thresholds for a decode that has gone wrong (hallucination, loops):
# such a short decode is done again the standard way.
LOG_PROB_THRESHOLD = -1.0
COMPRESSION_RATIO_THRESHOLD = 2.4
NO_SPEECH_THRESHOLD = 0.6
# Failures those thresholds miss, seen on real speech: a loop of a few tokens ("old-est-est-est-..."),
# a phrase said twice ("were the immediate credit, which were the immediate credit", LJ001-0004
# cut at 60%), and a decode that stops well before the audio does (LJ001-0007's "... of about").
LOOP_REPEATS = 4
LOOP_MAX_TOKENS = 4
REPEATED_WORDS = 4  # a run of this many words that comes back later in the same draft
# A draft never holds more tokens than this per second of its audio, plus a few (dev speech
# runs at 4 to 6 a second with its timestamps): a decoder still going beyond that is looping, and
# is stopped there rather than run to Whisper's 224-token limit (seconds of CPU per partial,
# on a loaded machine long enough that no partial is ever seen).
DRAFT_TOKENS_PER_SECOND = 12
DRAFT_MIN_TOKENS = 16
# The decoder's last timestamp may fall short of the audio's end by a half word cut at the
# horizon (a draft is cut by design); a whole word or more missing is a truncated decode.
TRUNCATED_SECONDS = 1.0


# The languages multilingual Whisper writes (ISO-639-1 codes, as faster-whisper's tokenizer names them).
LANGUAGES = frozenset(
    "af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha haw he hi hr ht hu hy "
    "id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr ms mt my ne nl nn no oc pa pl ps pt ro ru sa "
    "sd si sk sl sn so sq sr su sv sw ta te tg th tk tl tr tt uk ur uz vi yi yo yue zh".split())


@dataclass(frozen=True)
class Transcript:
    """What was said: the joined text, its segments' texts, and the language (with Whisper's confidence when detected)."""

    text: str
    segments: tuple[str, ...]
    language: str
    language_probability: float = 1.0  # 1.0: the language was given, not detected


class Transcriber:
    """Transcribe 16 kHz mono float32 audio with one faster-whisper model."""

    def __init__(self, model: str, threads: int = 0, beam_size: int = 5, workers: int = 1, short_context: bool = True,
                 compute_type: str = "int8", wide: bool = False):
        """Load ``model``; up to ``workers`` calls from different threads run in parallel.

        ``short_context`` encodes an utterance over its own length rather than 30 s.
        ``compute_type`` is CTranslate2's (int8 is the fastest on every CPU measured: bench/studies/runtimes.py).
        ``wide`` also loads a copy that runs one call on every core, used while ``idle()`` says so.
        """
        # Imported here so that code which never transcribes never loads CTranslate2.
        from faster_whisper import WhisperModel

        self.model_name = model
        self.beam_size = beam_size
        self.short_context = short_context
        # CTranslate2 runs one call per worker at a time and queues the rest, so calls
        # from the inference pool's threads need no lock of ours.
        self._model = WhisperModel(model, device="cpu", compute_type=compute_type, cpu_threads=threads, num_workers=workers)
        self.multilingual = self._model.model.is_multilingual
        # A second copy on every core, for a call that has the machine to itself (see ``idle``).
        cores = os.cpu_count() or 1
        self._wide = (WhisperModel(model, device="cpu", compute_type=compute_type, cpu_threads=cores, num_workers=1)
                      if wide and threads and cores > threads else None)
        # Set by the engines: True when nothing else runs, so that one call may use every core.
        self.idle: Callable[[], bool] = lambda: False
        self.fallbacks = 0  # short-window decodes done again over the 30 s window because they looked wrong

    @property
    def languages(self) -> list[str]:
        """Return the language codes the model transcribes (["en"] for an English-only one)."""
        return list(self._model.supported_languages)

    def transcribe(self, audio: np.ndarray, language: str | None = None, beam_size: int | None = None,
                   draft: bool = False, among: tuple[str, ...] = (), rest: bool = False) -> Transcript:
        """Return the transcript of ``audio``; ``language`` None lets a multilingual model detect it.

        ``among``: the languages a detection chooses from (those spoken here; empty: any the model
        writes). ``beam_size`` None means the configured one. ``draft``: a partial the next final
        replaces, decoded over the audio's own length (fast); text that stays is decoded over at
        least FINAL_MIN_SECONDS, where its words are at least as right as over Whisper's 30 s
        window. Either falls back to the 30 s decode of plain faster-whisper when it looks wrong.
        ``rest``: the end of an utterance whose beginning is already decoded (REST_MIN_SECONDS).
        """
        if not self.multilingual:
            language = "en"
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        beam_size = beam_size or self.beam_size
        probability = 1.0
        if language is None and among:
            language, probability = self.detect_language(audio, among)
        if language and self.short_context and audio.size < (WINDOW_FRAMES - SHORT_PAD_FRAMES) * SAMPLE_RATE // FRAMES_PER_SECOND:
            window = 0.0 if draft else REST_MIN_SECONDS if rest else FINAL_MIN_SECONDS
            text = self._transcribe_short(audio, language, beam_size, window)
            if text is not None:
                return Transcript(text, (text,) if text else (), language, probability)
        # transcribe() returns a lazy generator: decoding happens while it is consumed.
        segments, info = self._model_now().transcribe(
            audio,
            language=language,
            beam_size=beam_size,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        texts = tuple(segment.text.strip() for segment in segments)
        return Transcript(" ".join(t for t in texts if t), texts, info.language,
                          probability if language else float(info.language_probability))

    def _model_now(self):
        """Return the copy to run a call on: every core when nothing else runs (``idle``), else one."""
        return self._wide if self._wide is not None and self.idle() else self._model

    def detect_language(self, audio: np.ndarray, among: tuple[str, ...]) -> tuple[str | None, float]:
        """Return the likeliest of the languages ``among`` in ``audio`` (its first 30 s) and its share of their probability.

        Whisper base takes Czech for Polish on a few seconds (right on 7 and 5 of 10 files of
        speech-more's two Czech speakers); among cs, nl, it and en it was right on 19 of 20 (one
        hand run of its detection on every file; bench/languages.py measures the service with it).
        None when the model writes none of ``among``.
        """
        known = [code for code in dict.fromkeys(among) if code in self._model.supported_languages]
        if len(known) <= 1:
            return (known[0], 1.0) if known else (None, 1.0)
        _, _, probabilities = self._model_now().detect_language(audio=audio)
        chances = {code: p for code, p in probabilities if code in known}
        best = max(known, key=lambda code: chances.get(code, 0.0))
        return best, chances.get(best, 0.0) / max(sum(chances.values()), 1e-9)

    def _transcribe_short(self, audio: np.ndarray, language: str, beam_size: int, min_seconds: float) -> str | None:
        """Decode an utterance under 28 s from an encoder pass over its length (at least ``min_seconds``); None if it looks wrong.

        Decoding with timestamps anchors the text to the audio: without them, the decoder
        sometimes says the utterance twice, the second time over the silent padding. Any
        segment that starts after the audio has ended is dropped for the same reason.
        """
        draft = self.decode_short(audio, language, beam_size, min_seconds)
        problem = draft.problem()
        if problem:
            self.fallbacks += 1
            logger.debug("%.1f s decoded again over 30 s: %s", audio.size / SAMPLE_RATE, problem)
            return None
        return draft.text

    def decode_short(self, audio: np.ndarray, language: str = "en", beam_size: int | None = None,
                     min_seconds: float = 0.0) -> ShortDecode:
        """Return the short-window decode of ``audio`` (over at least ``min_seconds``) with what is needed to judge it (no fallback)."""
        import ctranslate2
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        audio = np.ascontiguousarray(audio, dtype=np.float32)
        seconds = audio.size / SAMPLE_RATE
        silence = int(min_seconds * SAMPLE_RATE) - SHORT_PAD_FRAMES * SAMPLE_RATE // FRAMES_PER_SECOND - audio.size
        if silence > 0:  # silence after the speech, as in Whisper's 30 s window
            audio = np.concatenate([audio, np.zeros(silence, dtype=np.float32)])
        features = self._model.feature_extractor(audio)
        frames = features.shape[-1]
        length = min(WINDOW_FRAMES, -(-(frames + SHORT_PAD_FRAMES) // FRAMES_PER_SECOND) * FRAMES_PER_SECOND)
        padded = np.zeros((1, features.shape[0], length), dtype=np.float32)
        padded[0, :, :min(frames, length)] = features[:, :length]
        tokenizer = Tokenizer(self._model.hf_tokenizer, self.multilingual, task="transcribe", language=language)
        model = self._model_now()
        limit = min(self._model.max_length // 2, DRAFT_MIN_TOKENS + math.ceil(seconds * DRAFT_TOKENS_PER_SECOND))
        result = model.model.generate(
            ctranslate2.StorageView.from_array(padded),
            [list(tokenizer.sot_sequence)],
            beam_size=beam_size or self.beam_size,
            max_length=2 * limit,  # CTranslate2 generates at most half of it (OpenNMT/CTranslate2#1856)
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=list(get_suppressed_tokens(tokenizer, [-1])),
        )[0]
        tokens = result.sequences_ids[0]
        return ShortDecode(" ".join(_segments_within(tokens, tokenizer, seconds)), tuple(tokens), seconds,
                           result.scores[0] * len(tokens) / (len(tokens) + 1), result.no_speech_prob, tokenizer,
                           len(tokens) >= limit)


@dataclass(frozen=True)
class ShortDecode:
    """A short-window decode: its text, tokens, the audio's length, and the decoder's confidences."""

    text: str
    tokens: tuple[int, ...]
    seconds: float
    avg_logprob: float
    no_speech_prob: float
    tokenizer: object
    capped: bool = False  # stopped at the token limit for its length: still going, so looping

    def problem(self) -> str | None:
        """Return why this decode cannot be trusted (a loop, a repeat, a cut ending, ...), or None."""
        from faster_whisper.transcribe import get_compression_ratio

        tokens = list(self.tokens)
        if self.capped:
            return "too many tokens for its audio"
        if self.avg_logprob < LOG_PROB_THRESHOLD:
            return "low log probability"
        if get_compression_ratio(self.text) > COMPRESSION_RATIO_THRESHOLD:
            return "compression ratio"
        if self.no_speech_prob > NO_SPEECH_THRESHOLD:
            return "no speech"
        if _loops(tokens, self.tokenizer):
            return "token loop"
        if _repeats(self.text):
            return "repeated phrase"
        if truncated(tokens, self.tokenizer, self.seconds):
            return "truncated ending"
        return None


def _loops(tokens: list[int], tokenizer) -> bool:
    """Return True when a run of up to LOOP_MAX_TOKENS text tokens repeats LOOP_REPEATS times in a row."""
    text = [token for token in tokens if token < tokenizer.eot]
    for size in range(1, LOOP_MAX_TOKENS + 1):
        for start in range(len(text) - size * LOOP_REPEATS + 1):
            unit = text[start:start + size]
            if all(text[start + k * size:start + (k + 1) * size] == unit for k in range(1, LOOP_REPEATS)):
                return True
    return False


def _repeats(text: str) -> bool:
    """Return True when a run of REPEATED_WORDS words occurs twice in ``text`` (a phrase said again)."""
    words = [word.strip(".,;:!?\"'").lower() for word in text.split()]
    seen = set()
    for start in range(len(words) - REPEATED_WORDS + 1):
        run = tuple(words[start:start + REPEATED_WORDS])
        if run in seen:
            return True
        seen.add(run)
    return False


def truncated(tokens: list[int], tokenizer, seconds: float) -> bool:
    """Return True when the decoder's last timestamp is TRUNCATED_SECONDS or more before ``seconds`` (the audio's end)."""
    stamps = [token - tokenizer.timestamp_begin for token in tokens if token >= tokenizer.timestamp_begin]
    return (max(stamps) * 0.02 if stamps else 0.0) < seconds - TRUNCATED_SECONDS


def _segments_within(tokens: list[int], tokenizer, seconds: float) -> list[str]:
    """Return the texts of the timestamped segments in ``tokens`` that start before ``seconds``."""
    texts, words, start = [], [], 0.0
    for token in [*tokens, tokenizer.timestamp_begin + int(seconds / 0.02)]:
        if token < tokenizer.eot:
            words.append(token)
        elif token >= tokenizer.timestamp_begin:
            if words and start < seconds - 0.1:
                texts.append(tokenizer.decode(words).strip())
            words, start = [], (token - tokenizer.timestamp_begin) * 0.02
    return [text for text in texts if text]
