"""Speech to text with faster-whisper (CTranslate2, int8 on the CPU)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Transcript:
    """What was said: the joined text, its segments' texts, and the language."""

    text: str
    segments: tuple[str, ...]
    language: str


class Transcriber:
    """Transcribe 16 kHz mono float32 audio with one faster-whisper model."""

    def __init__(self, model: str, threads: int = 0, beam_size: int = 5, workers: int = 1):
        """Load ``model``; up to ``workers`` calls from different threads run in parallel."""
        # Imported here so that code which never transcribes never loads CTranslate2.
        from faster_whisper import WhisperModel

        self.model_name = model
        self.beam_size = beam_size
        # CTranslate2 runs one call per worker at a time and queues the rest, so calls
        # from the inference pool's threads need no lock of ours.
        self._model = WhisperModel(model, device="cpu", compute_type="int8", cpu_threads=threads, num_workers=workers)
        self.multilingual = self._model.model.is_multilingual

    def transcribe(self, audio: np.ndarray, language: str | None = None, beam_size: int | None = None) -> Transcript:
        """Return the transcript of ``audio``; ``language`` None lets a multilingual model detect it.

        ``beam_size`` 1 (greedy) is for quick partial results.
        """
        if not self.multilingual:
            language = "en"
        # transcribe() returns a lazy generator: decoding happens while it is consumed.
        segments, info = self._model.transcribe(
            np.ascontiguousarray(audio, dtype=np.float32),
            language=language,
            beam_size=beam_size or self.beam_size,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        texts = tuple(segment.text.strip() for segment in segments)
        return Transcript(" ".join(t for t in texts if t), texts, info.language)
