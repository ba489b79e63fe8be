"""Voice activity with the Silero VAD that faster-whisper ships (offline, ONNX).

The model is loaded once per process as one of the engines (``Vad``); faster-whisper is
imported only then, so the app factory stays free of it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000

# Tighter than faster-whisper's defaults (400 ms padding, 2 s silence), which are tuned
# to keep context for transcription and would count pauses as speech.
MEASURE_OPTIONS = dict(threshold=0.5, min_speech_duration_ms=120, min_silence_duration_ms=300, speech_pad_ms=60)


@dataclass(frozen=True)
class Segment:
    """A stretch of speech, in samples at 16 kHz."""

    start: int
    end: int

    @property
    def seconds(self) -> float:
        """Return the segment's length in seconds."""
        return (self.end - self.start) / SAMPLE_RATE


class Vad:
    """The Silero VAD, loaded once: speech segments of a clip, and endpointers for streams."""

    def __init__(self):
        from faster_whisper.vad import VadOptions, get_speech_timestamps, get_vad_model

        self._options = VadOptions(**MEASURE_OPTIONS)
        self._timestamps = get_speech_timestamps
        self.model = get_vad_model()  # cached by faster-whisper: one ONNX session per process

    def segments(self, audio: np.ndarray) -> list[Segment]:
        """Return the speech segments of 16 kHz mono float32 audio."""
        if audio.size == 0:
            return []
        stamps = self._timestamps(np.ascontiguousarray(audio, dtype=np.float32), self._options)
        return [Segment(int(s["start"]), int(s["end"])) for s in stamps]

    def seconds(self, audio: np.ndarray) -> float:
        """Return how many seconds of 16 kHz mono float32 audio are speech."""
        return sum(segment.seconds for segment in self.segments(audio))

    def endpointer(self, end_silence_ms: int = 600, max_utterance_s: float = 30.0) -> Endpointer:
        """Return a new streaming endpointer on this model."""
        return Endpointer(self.model, end_silence_ms, max_utterance_s)


def speech_only(audio: np.ndarray, segments: list[Segment]) -> np.ndarray:
    """Return the speech segments of ``audio`` joined together."""
    if not segments:
        return audio[:0]
    return np.concatenate([audio[s.start:s.end] for s in segments])


WINDOW = 512  # Silero scores 32 ms windows at 16 kHz
CONTEXT = 64


class Endpointer:
    """Find where utterances start and end in a 16 kHz stream, as the audio arrives.

    ``feed`` returns events ``("start", sample)`` and ``("end", sample)`` in stream
    samples. An utterance ends after ``end_silence_ms`` of silence, or is cut at
    ``max_utterance_s``. The VAD probability of every window is kept (31 floats a
    second) so that callers can look for pauses.
    """

    def __init__(self, model, end_silence_ms: int = 600, max_utterance_s: float = 30.0,
                 threshold: float = 0.5, min_speech_ms: int = 200):
        self._model = model
        self._threshold = threshold
        self._neg_threshold = max(threshold - 0.15, 0.01)
        self._end_windows = max(1, end_silence_ms * SAMPLE_RATE // 1000 // WINDOW)
        self._min_speech_windows = max(1, min_speech_ms * SAMPLE_RATE // 1000 // WINDOW)
        self._max_windows = int(max_utterance_s * SAMPLE_RATE / WINDOW)
        self._pending = np.zeros(0, dtype=np.float32)
        # The model's recurrent state and the 64-sample context it reads before each window.
        self._state = (np.zeros((1, 1, 128), dtype=np.float32), np.zeros((1, 1, 128), dtype=np.float32))
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self.probabilities: list[float] = []
        self.in_speech = False
        self._run = 0  # windows of speech (before a start) or of silence (inside an utterance)
        self._start_window = 0
        self.speech_windows = 0  # windows of speech in the current utterance

    @property
    def position(self) -> int:
        """Return how many samples have been scored."""
        return len(self.probabilities) * WINDOW

    @property
    def start_lag(self) -> int:
        """Return how far back (in samples) a start is dated from the position where it is found."""
        return self._min_speech_windows * WINDOW

    @property
    def utterance_speech_seconds(self) -> float:
        """Return the seconds of speech in the current utterance."""
        return self.speech_windows * WINDOW / SAMPLE_RATE

    def feed(self, audio: np.ndarray) -> list[tuple[str, int]]:
        """Score the new audio and return the utterance starts and ends it completes."""
        self._pending = np.concatenate([self._pending, np.asarray(audio, dtype=np.float32)])
        count = len(self._pending) // WINDOW
        if count == 0:
            return []
        windows, self._pending = self._pending[: count * WINDOW], self._pending[count * WINDOW:]
        events = []
        for probability in self._score(windows.reshape(count, WINDOW)):
            events.extend(self._step(float(probability)))
        return events

    def _score(self, windows: np.ndarray) -> np.ndarray:
        """Run Silero on whole windows, carrying its state across calls as one long pass does."""
        contexts = np.concatenate([self._context[None], windows[:-1, -CONTEXT:]])
        self._context = windows[-1, -CONTEXT:].copy()
        output, h, c = self._model.session.run(
            None, {"input": np.concatenate([contexts, windows], axis=1), "h": self._state[0], "c": self._state[1]}
        )
        self._state = (h, c)
        return np.ravel(output)

    @property
    def silence_start(self) -> int | None:
        """Return where the silence the open utterance is in began, as an end would be dated; None in speech or outside one."""
        if not self.in_speech or self._run == 0:
            return None
        return (len(self.probabilities) - self._run) * WINDOW

    def flush(self) -> list[tuple[str, int]]:
        """End the stream: close an open utterance where its speech stopped, else at the last scored sample."""
        if not self.in_speech:
            return []
        end = self.silence_start
        self.in_speech, self._run = False, 0
        return [("end", self.position if end is None else end)]

    def _step(self, probability: float) -> list[tuple[str, int]]:
        index = len(self.probabilities)
        self.probabilities.append(probability)
        if not self.in_speech:
            self._run = self._run + 1 if probability >= self._threshold else 0
            if self._run >= self._min_speech_windows:
                self.in_speech, self._start_window = True, index - self._run + 1
                self.speech_windows, self._run = self._run, 0
                return [("start", self._start_window * WINDOW)]
            return []
        if probability >= self._threshold:
            self.speech_windows += 1
        self._run = self._run + 1 if probability < self._neg_threshold else 0
        if self._run >= self._end_windows:
            self.in_speech = False
            end, self._run = (index - self._run + 1) * WINDOW, 0
            return [("end", end)]
        if index + 1 - self._start_window >= self._max_windows:
            # Cut an over-long utterance here and go straight on with the next.
            self._start_window, self.speech_windows, self._run = index + 1, 0, 0
            return [("end", (index + 1) * WINDOW), ("start", (index + 1) * WINDOW)]
        return []

    def speech_seconds_between(self, start: int, end: int) -> float:
        """Return the seconds of speech the VAD heard in [start, end) of the stream."""
        first, last = max(0, start // WINDOW), min(end // WINDOW, len(self.probabilities))
        return sum(p >= self._threshold for p in self.probabilities[first:last]) * WINDOW / SAMPLE_RATE

    def pause_in(self, start: int, end: int) -> int | None:
        """Return the quietest sample in [start, end) if the VAD hears no speech there, else None."""
        at = self.quietest(start, end)
        index = at // WINDOW
        if at == start or index >= len(self.probabilities) or self.probabilities[index] >= self._neg_threshold:
            return None
        return at

    def quietest(self, start: int, end: int) -> int:
        """Return the sample in [start, end) where the VAD is least sure of speech (a pause)."""
        first, last = start // WINDOW, min(end // WINDOW, len(self.probabilities))
        if last - first < 3:
            return start
        probabilities = np.convolve(self.probabilities[first:last], np.ones(5) / 5, mode="same")
        return (first + int(np.argmin(probabilities))) * WINDOW
