"""Voice activity with the Silero VAD that faster-whisper ships (offline, ONNX)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from faster_whisper.vad import VadOptions, get_speech_timestamps

SAMPLE_RATE = 16000

# Tighter than faster-whisper's defaults (400 ms padding, 2 s silence), which are tuned
# to keep context for transcription and would count pauses as speech.
MEASURE_OPTIONS = VadOptions(threshold=0.5, min_speech_duration_ms=120, min_silence_duration_ms=300, speech_pad_ms=60)


@dataclass(frozen=True)
class Segment:
    """A stretch of speech, in samples at 16 kHz."""

    start: int
    end: int

    @property
    def seconds(self) -> float:
        """Return the segment's length in seconds."""
        return (self.end - self.start) / SAMPLE_RATE


def speech_segments(audio: np.ndarray, options: VadOptions = MEASURE_OPTIONS) -> list[Segment]:
    """Return the speech segments of 16 kHz mono float32 audio."""
    if audio.size == 0:
        return []
    stamps = get_speech_timestamps(np.ascontiguousarray(audio, dtype=np.float32), options)
    return [Segment(int(s["start"]), int(s["end"])) for s in stamps]


def speech_seconds(audio: np.ndarray, options: VadOptions = MEASURE_OPTIONS) -> float:
    """Return how many seconds of 16 kHz mono float32 audio are speech."""
    return sum(segment.seconds for segment in speech_segments(audio, options))


def speech_only(audio: np.ndarray, segments: list[Segment]) -> np.ndarray:
    """Return the speech segments of ``audio`` joined together."""
    if not segments:
        return audio[:0]
    return np.concatenate([audio[s.start:s.end] for s in segments])
