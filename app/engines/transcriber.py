"""Speech to text with faster-whisper (CTranslate2, int8 on the CPU)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
FRAMES_PER_SECOND = 100  # Whisper's mel frames
WINDOW_FRAMES = 3000  # the 30 s every Whisper encoder pass is trained on
# A draft (a partial) is encoded with 2 s of silence after it, rounded up to a whole second,
# instead of padded to 30 s (what whisper.cpp calls audio_ctx): a 5 s utterance takes about
# 90 ms instead of 440 on an AVX-512 machine. Its words differ now and then from the 30 s
# window's (woodcutters / wood cutters), so text that stays is never decoded this way.
SHORT_PAD_FRAMES = 200
# faster-whisper's own thresholds for a decode that has gone wrong (hallucination, loops):
# such a short decode is done again the standard way.
LOG_PROB_THRESHOLD = -1.0
COMPRESSION_RATIO_THRESHOLD = 2.4
NO_SPEECH_THRESHOLD = 0.6
# A failure those thresholds miss, seen on real speech: a loop of a few tokens ("old-est-est-est-...").
LOOP_REPEATS = 4
LOOP_MAX_TOKENS = 4


@dataclass(frozen=True)
class Transcript:
    """What was said: the joined text, its segments' texts, and the language."""

    text: str
    segments: tuple[str, ...]
    language: str


class Transcriber:
    """Transcribe 16 kHz mono float32 audio with one faster-whisper model."""

    def __init__(self, model: str, threads: int = 0, beam_size: int = 5, workers: int = 1, short_context: bool = True):
        """Load ``model``; up to ``workers`` calls from different threads run in parallel.

        ``short_context`` encodes an utterance over its own length rather than 30 s.
        """
        # Imported here so that code which never transcribes never loads CTranslate2.
        from faster_whisper import WhisperModel

        self.model_name = model
        self.beam_size = beam_size
        self.short_context = short_context
        # CTranslate2 runs one call per worker at a time and queues the rest, so calls
        # from the inference pool's threads need no lock of ours.
        self._model = WhisperModel(model, device="cpu", compute_type="int8", cpu_threads=threads, num_workers=workers)
        self.multilingual = self._model.model.is_multilingual

    def transcribe(self, audio: np.ndarray, language: str | None = None, beam_size: int | None = None,
                   draft: bool = False) -> Transcript:
        """Return the transcript of ``audio``; ``language`` None lets a multilingual model detect it.

        ``beam_size`` None means the configured one. ``draft``: a partial the next final replaces,
        decoded over the audio's own length (fast); text that stays is decoded over Whisper's
        30 s window, as plain faster-whisper does, so that no word is traded for speed.
        """
        if not self.multilingual:
            language = "en"
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        beam_size = beam_size or self.beam_size
        if draft and language and self.short_context and audio.size < (WINDOW_FRAMES - SHORT_PAD_FRAMES) * SAMPLE_RATE // FRAMES_PER_SECOND:
            text = self._transcribe_short(audio, language, beam_size)
            if text is not None:
                return Transcript(text, (text,) if text else (), language)
        # transcribe() returns a lazy generator: decoding happens while it is consumed.
        segments, info = self._model.transcribe(
            audio,
            language=language,
            beam_size=beam_size,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        texts = tuple(segment.text.strip() for segment in segments)
        return Transcript(" ".join(t for t in texts if t), texts, info.language)

    def _transcribe_short(self, audio: np.ndarray, language: str, beam_size: int) -> str | None:
        """Decode an utterance under 28 s from an encoder pass over just its length; None if it looks wrong.

        Decoding with timestamps anchors the text to the audio: without them, the decoder
        sometimes says the utterance twice, the second time over the silent padding. Any
        segment that starts after the audio has ended is dropped for the same reason.
        """
        import ctranslate2
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

        features = self._model.feature_extractor(audio)
        frames = features.shape[-1]
        length = min(WINDOW_FRAMES, -(-(frames + SHORT_PAD_FRAMES) // FRAMES_PER_SECOND) * FRAMES_PER_SECOND)
        padded = np.zeros((1, features.shape[0], length), dtype=np.float32)
        padded[0, :, :min(frames, length)] = features[:, :length]
        tokenizer = Tokenizer(self._model.hf_tokenizer, self.multilingual, task="transcribe", language=language)
        result = self._model.model.generate(
            ctranslate2.StorageView.from_array(padded),
            [list(tokenizer.sot_sequence)],
            beam_size=beam_size,
            max_length=self._model.max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=list(get_suppressed_tokens(tokenizer, [-1])),
        )[0]
        tokens = result.sequences_ids[0]
        text = " ".join(_segments_within(tokens, tokenizer, audio.size / SAMPLE_RATE))
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        if (avg_logprob < LOG_PROB_THRESHOLD or get_compression_ratio(text) > COMPRESSION_RATIO_THRESHOLD
                or result.no_speech_prob > NO_SPEECH_THRESHOLD or _loops(tokens, tokenizer)):
            return None
        return text


def _loops(tokens: list[int], tokenizer) -> bool:
    """Return True when a run of up to LOOP_MAX_TOKENS text tokens repeats LOOP_REPEATS times in a row."""
    text = [token for token in tokens if token < tokenizer.eot]
    for size in range(1, LOOP_MAX_TOKENS + 1):
        for start in range(len(text) - size * LOOP_REPEATS + 1):
            unit = text[start:start + size]
            if all(text[start + k * size:start + (k + 1) * size] == unit for k in range(1, LOOP_REPEATS)):
                return True
    return False


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
