"""The models run directly in this process on whole files: the baselines, and their real-time factors.

The same weights the server loads (app.engines.speaker.SpeakerEncoder, app.engines.transcriber.Transcriber),
in their stock configuration (float32 ECAPA, faster-whisper's 30 s window: what a plain
SpeechBrain + faster-whisper service does), one call at a time while the server is not
running, so the timings are the stock models' own.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.engines import modelstore
from app.engines.runtime import resolve_whisper
from app.engines.speaker import SpeakerEncoder
from app.engines.transcriber import Transcriber

from .data import SAMPLE_RATE, SpeechSet, Utterance

logger = logging.getLogger(__name__)


@dataclass
class Timings:
    """Seconds of compute and of audio, per call."""

    compute: list[float] = field(default_factory=list)
    audio: list[float] = field(default_factory=list)

    def add(self, compute: float, audio: np.ndarray) -> None:
        """Record one call."""
        self.compute.append(compute)
        self.audio.append(audio.size / SAMPLE_RATE)

    def summary(self) -> dict:
        """Return the median and overall real-time factor (compute seconds per audio second)."""
        if not self.compute:
            return {"calls": 0, "rtf_p50": None, "rtf_total": None}
        ratios = np.array(self.compute) / np.array(self.audio)
        return {"calls": len(self.compute), "rtf_p50": round(float(np.median(ratios)), 4),
                "rtf_p95": round(float(np.percentile(ratios, 95)), 4),
                "rtf_total": round(sum(self.compute) / sum(self.audio), 4),
                "audio_seconds": round(sum(self.audio), 1)}


class Models:
    """ECAPA and Whisper loaded in this process, with the threads per call the server gives them."""

    def __init__(self, models_dir: str | os.PathLike, whisper: str, beam_size: int, threads: int):
        self.threads = threads
        self._whisper = resolve_whisper(models_dir, whisper)
        # Stock behaviour: float32 ECAPA, and faster-whisper's 30 s window for every utterance.
        self.speaker = SpeakerEncoder(modelstore.model_dir(models_dir, "ecapa"), threads=self.threads, precision="float32",
                                      runtime="torch")
        self.transcriber = Transcriber(self._whisper, threads=self.threads, beam_size=beam_size, short_context=False)
        self.embedding_timings = Timings()
        self.transcription_timings = Timings()

    def embed_files(self, speech: SpeechSet, files: list[Path]) -> dict[Path, np.ndarray]:
        """Return the embedding of every whole file, timing each call after one warm-up."""
        if not files:
            return {}
        self.speaker.embed(speech.audio(files[0]))  # the first call pays one-off set-up costs
        embeddings = {}
        for path in files:
            audio = speech.audio(path)
            began = time.perf_counter()
            embeddings[path] = self.speaker.embed(audio)
            self.embedding_timings.add(time.perf_counter() - began, audio)
        return embeddings

    def transcribe_files(self, speech: SpeechSet, utterances: list[Utterance]) -> dict[Path, dict]:
        """Return the transcript of every whole file (language detected as the server does), timed."""
        if not utterances:
            return {}
        self.transcriber.transcribe(speech.audio(utterances[0].path))
        transcripts = {}
        for utterance in utterances:
            audio = speech.audio(utterance.path)
            began = time.perf_counter()
            result = self.transcriber.transcribe(audio)
            elapsed = time.perf_counter() - began
            self.transcription_timings.add(elapsed, audio)
            transcripts[utterance.path] = {"text": result.text, "language": result.language, "seconds": elapsed}
        return transcripts

    def with_threads(self, threads: int, speech: SpeechSet, files: list[Path], utterances: list[Utterance]) -> dict:
        """Time the same calls with another number of threads per call: what the server's setting buys or costs."""
        import torch

        embedding, transcription = Timings(), Timings()
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            self.speaker.embed(speech.audio(files[0]))
            for path in files:
                audio = speech.audio(path)
                began = time.perf_counter()
                self.speaker.embed(audio)
                embedding.add(time.perf_counter() - began, audio)
        finally:
            torch.set_num_threads(previous)
        if utterances:
            transcriber = Transcriber(self._whisper, threads=threads, beam_size=self.transcriber.beam_size, short_context=False)
            transcriber.transcribe(speech.audio(utterances[0].path))
            for utterance in utterances:
                audio = speech.audio(utterance.path)
                began = time.perf_counter()
                transcriber.transcribe(audio)
                transcription.add(time.perf_counter() - began, audio)
        return {"threads": threads, "embedding": embedding.summary(), "transcription": transcription.summary()}
