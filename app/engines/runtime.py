"""The models of one process, loaded once, and the pool that runs them."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import modelstore
from .pool import InferencePool, StreamSlots
from .speaker import SpeakerEncoder
from .transcriber import Transcriber

logger = logging.getLogger(__name__)


@dataclass
class Engines:
    """The loaded speaker encoder and transcriber, with the bounded inference pool."""

    speaker: SpeakerEncoder
    transcriber: Transcriber
    pool: InferencePool
    streams: StreamSlots
    load_seconds: dict[str, float] = field(default_factory=dict)
    # The configured name of the loaded Whisper model (tiny.en, base, a directory, a hub name).
    whisper_name: str | None = None


def resolve_whisper(models_dir: str | os.PathLike, name: str) -> str:
    """Return what faster-whisper should load for the configured model ``name``.

    A known name (``tiny.en``, ``base``) means our verified local copy; an existing
    directory is used as it is; anything else is handed to faster-whisper as a hub
    name, which works only for users with internet and HF_HUB_OFFLINE unset.
    """
    if name in modelstore.WHISPER_MODELS:
        if not modelstore.is_complete(models_dir, name):
            raise modelstore.ModelError(
                f"Whisper model {name!r} is not in {modelstore.model_dir(models_dir, name)}; run 'flask models fetch {name}'"
            )
        return str(modelstore.model_dir(models_dir, name))
    if Path(name).is_dir():
        return str(Path(name).resolve())
    return name


def load_engines(models_dir: str | os.PathLike, whisper_model: str, workers: int, queue: int, beam_size: int = 5,
                 threads: int = 1, speaker_precision: str = "auto", max_streams: int | None = None) -> Engines:
    """Load both models from ``models_dir`` and start the inference pool.

    Each model call runs on ``threads`` threads. One per call, with one worker per core,
    serves parallel sessions best: a lone call is faster on two threads, but two such
    calls at once fight over the cores (docs/benchmarks.md).
    At most ``max_streams`` dictations run at once (default: two per worker, what
    the benchmark shows keeps up in real time).
    """
    if not modelstore.is_complete(models_dir, "ecapa"):
        raise modelstore.ModelError(
            f"the ECAPA speaker model is not in {modelstore.model_dir(models_dir, 'ecapa')}; run 'flask models fetch'"
        )
    timings = {}
    started = time.perf_counter()
    speaker = SpeakerEncoder(modelstore.model_dir(models_dir, "ecapa"), threads=threads, precision=speaker_precision)
    timings["speaker"] = time.perf_counter() - started
    started = time.perf_counter()
    transcriber = load_transcriber(models_dir, whisper_model, threads=threads, beam_size=beam_size, workers=workers)
    timings["whisper"] = time.perf_counter() - started
    logger.info("models loaded: ECAPA (%s) in %.1f s, Whisper %s in %.1f s", speaker.precision, timings["speaker"],
                whisper_model, timings["whisper"])
    streams = StreamSlots(max_streams or 2 * workers)
    return Engines(speaker, transcriber, InferencePool(workers, queue), streams, timings, whisper_model)


def load_transcriber(models_dir: str | os.PathLike, whisper_model: str, threads: int = 1, beam_size: int = 5,
                     workers: int = 1) -> Transcriber:
    """Load the Whisper model ``whisper_model`` (a name as in resolve_whisper) for ``workers`` parallel calls."""
    return Transcriber(resolve_whisper(models_dir, whisper_model), threads=threads, beam_size=beam_size, workers=workers)
