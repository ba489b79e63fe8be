"""Embeddings and quality of every file of a speech set, computed once in this process and cached.

The cache lives outside the repository (``$VOICEGATE_CACHE`` or the system's temp folder), keyed by
the set's path; it holds embeddings and measurements, never audio.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .data import SpeechSet
from .paths import ROOT

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class Measured:
    """One file: its speaker embedding (ECAPA unless told), seconds of speech (VAD), and quality."""

    embedding: np.ndarray
    speech_seconds: float
    snr_db: float
    band: float


def cache_dir() -> Path:
    """Return the folder for cached embeddings (outside the repository)."""
    return Path(os.environ.get("VOICEGATE_CACHE", Path(tempfile.gettempdir()) / "voicegate-cache"))


def measure_set(speech: SpeechSet, files: list[Path], encoder=None, model: str = "ecapa") -> dict[Path, Measured]:
    """Return every file's measurements with speaker model ``model``, computing the missing ones (cached per set folder).

    ``fused``: ECAPA's and CAM++'s embeddings side by side (app/engines/fused.py), from their own caches.
    """
    from app.gate.calibration import measure_quality

    if model == "fused":
        from app.engines.fused import fuse

        ecapa = measure_set(speech, files, model="ecapa")
        campplus = measure_set(speech, files, model="campplus")
        return {p: replace(ecapa[p], embedding=fuse(ecapa[p].embedding, campplus[p].embedding)) for p in files}

    key = hashlib.sha256(str(speech.root).encode()).hexdigest()[:12]
    # ECAPA's cache keeps the name it had before there was a second model.
    path = cache_dir() / f"{'embeddings' if model == 'ecapa' else 'measured-' + model}-{speech.root.name}-{key}.npz"
    cached: dict[str, Measured] = {}
    if path.is_file():
        with np.load(path) as data:
            for label, row, meta in zip(data["labels"], data["embeddings"], data["meta"]):
                cached[str(label)] = Measured(row, *map(float, meta))
    missing = [p for p in files if speech.label(p) not in cached]
    if missing:
        from app.audio.vad import Vad

        speech_seconds = Vad().seconds

        encoder = encoder or model_encoder(model)
        logger.info("embedding %d files of %s (%d cached)", len(missing), speech.root, len(cached))
        for index, file in enumerate(missing):
            audio = speech.audio(file)
            speech_s = speech_seconds(audio)
            quality = measure_quality(audio, speech_s)
            cached[speech.label(file)] = Measured(encoder.embed(audio), speech_s, quality.snr_db, quality.band)
            if (index + 1) % 200 == 0 or index + 1 == len(missing):
                logger.info("embedded %d/%d", index + 1, len(missing))
                _save(path, cached)
            speech._audio.pop(file, None)  # keep memory flat on big sets
    return {p: cached[speech.label(p)] for p in files}


def _save(path: Path, cached: dict[str, Measured]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = sorted(cached)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, labels=np.array(labels), embeddings=np.stack([cached[k].embedding for k in labels]),
             meta=np.array([[cached[k].speech_seconds, cached[k].snr_db, cached[k].band] for k in labels]))
    tmp.replace(path)


def channel_set(speech: SpeechSet, files: list[Path], channels: tuple[str, ...] | None = None,
                encoder=None, model: str = "ecapa") -> dict[Path, np.ndarray]:
    """Return every file's embeddings by ``model`` through enrollment's channels (app/audio/augment.py), rows in channel order."""
    from app.audio.augment import CHANNELS, channel

    if model == "fused":
        from app.engines.fused import fuse

        ecapa = channel_set(speech, files, channels, model="ecapa")
        campplus = channel_set(speech, files, channels, model="campplus")
        return {p: fuse(ecapa[p], campplus[p]) for p in files}

    key = hashlib.sha256(str(speech.root).encode()).hexdigest()[:12]
    rows: dict[str, list[np.ndarray]] = {speech.label(p): [] for p in files}
    for name in channels or CHANNELS:
        prefix = "channel" if model == "ecapa" else f"channel-{model}"
        path = cache_dir() / f"{prefix}-{name}-{speech.root.name}-{key}.npz"
        cached: dict[str, np.ndarray] = {}
        if path.is_file():
            with np.load(path) as data:
                cached = {str(label): row for label, row in zip(data["labels"], data["embeddings"])}
        missing = [p for p in files if speech.label(p) not in cached]
        if missing:
            encoder = encoder or model_encoder(model, threads=2)
            logger.info("embedding %d files of %s through %s (%d cached)", len(missing), speech.root, name, len(cached))
            for index, file in enumerate(missing):
                cached[speech.label(file)] = encoder.embed(channel(name, speech.audio(file)))
                if (index + 1) % 50 == 0 or index + 1 == len(missing):
                    logger.info("embedded %d/%d", index + 1, len(missing))
                    labels = sorted(cached)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(".tmp.npz")
                    np.savez(tmp, labels=np.array(labels), embeddings=np.stack([cached[k] for k in labels]))
                    tmp.replace(path)
        for p in files:
            rows[speech.label(p)].append(cached[speech.label(p)])
    return {p: np.stack(rows[speech.label(p)]) for p in files}


def edge_set(speech: SpeechSet, files: list[Path]) -> dict[Path, float]:
    """Return every file's band edge (app.gate.calibration.band_edge, dB), cached like the embeddings."""
    from app.gate.calibration import band_edge

    key = hashlib.sha256(str(speech.root).encode()).hexdigest()[:12]
    path = cache_dir() / f"edges-{speech.root.name}-{key}.npz"
    cached: dict[str, float] = {}
    if path.is_file():
        with np.load(path) as data:
            cached = {str(label): float(value) for label, value in zip(data["labels"], data["edges"])}
    missing = [p for p in files if speech.label(p) not in cached]
    for file in missing:
        cached[speech.label(file)] = band_edge(speech.audio(file))
        speech._audio.pop(file, None)
    if missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        labels = sorted(cached)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, labels=np.array(labels), edges=np.array([cached[k] for k in labels]))
        tmp.replace(path)
    return {p: cached[speech.label(p)] for p in files}


def embedding_set(speech: SpeechSet, files: list[Path], model: str, encoder=None) -> dict[Path, np.ndarray]:
    """Return every file's embedding by speaker model ``model`` (ecapa or campplus), cached like the others.

    Only the embedding is kept (measure_set holds ECAPA's together with the speech measurements).
    """
    key = hashlib.sha256(str(speech.root).encode()).hexdigest()[:12]
    path = cache_dir() / f"{model}-{speech.root.name}-{key}.npz"
    cached: dict[str, np.ndarray] = {}
    if path.is_file():
        with np.load(path) as data:
            cached = {str(label): row for label, row in zip(data["labels"], data["embeddings"])}
    missing = [p for p in files if speech.label(p) not in cached]
    if missing:
        encoder = encoder or model_encoder(model)
        logger.info("embedding %d files of %s with %s (%d cached)", len(missing), speech.root, model, len(cached))
        for index, file in enumerate(missing):
            cached[speech.label(file)] = encoder.embed(speech.audio(file))
            speech._audio.pop(file, None)
            if (index + 1) % 100 == 0 or index + 1 == len(missing):
                logger.info("%s: embedded %d/%d", model, index + 1, len(missing))
                labels = sorted(cached)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp.npz")
                np.savez(tmp, labels=np.array(labels), embeddings=np.stack([cached[k] for k in labels]))
                tmp.replace(path)
    return {p: cached[speech.label(p)] for p in files}


def model_encoder(model: str, threads: int = 1):
    """Return the encoder of speaker model ``model`` as the server runs it (ONNX where exported)."""
    from app.engines import modelstore

    models = os.environ.get("VOICEGATE_MODELS_DIR", ROOT / "pretrained_models")
    if model == "campplus":
        from app.engines.campplus_encoder import CampplusEncoder

        return CampplusEncoder(modelstore.model_dir(models, "campplus"), threads=threads)
    from app.engines.speaker import SpeakerEncoder

    return SpeakerEncoder(modelstore.model_dir(models, "ecapa"), threads=threads, precision="float32")
