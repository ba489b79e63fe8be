"""CAM++ speaker embeddings in the server: Kaldi fbank in numpy, the network in ONNX Runtime (no torch).

``flask models fetch`` exports the network (campplus.py) beside its weights; this module never
imports torch or campplus.py.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

from .speaker import Cancel, Cancelled, normalise, onnx_session

EMBEDDING_DIM = 192
# The network's first layers need a few frames; anything this short carries no voice anyway.
MIN_SAMPLES = 1600
WEIGHTS_FILE = "campplus_cn_en_common.pt"
ONNX_FILE = "campplus.onnx"
ONNX_ABOUT = "campplus.onnx.json"
EXPORT_FORMAT = "fbank->embedding"

logger = logging.getLogger(__name__)


class KaldiFbank:
    """Kaldi's fbank as torchaudio.compliance.kaldi.fbank computes it by default, then mean-normalised per clip.

    16 kHz, 25 ms frames every 10 ms (no padding at the edges), DC removed, pre-emphasis 0.97,
    Povey window, 512-point power spectrum, 80 triangular mel filters from 20 Hz to 8 kHz, natural
    log floored at float32's epsilon; no dither. Speaker models trained on this input see the
    same numbers here as under torchaudio.
    """

    def __init__(self, bands: int = 80, rate: int = 16000):
        self.length, self.shift, self.n_fft = rate * 25 // 1000, rate * 10 // 1000, 512
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(self.length) / (self.length - 1))) ** 0.85
        self.matrix = _mel_matrix(bands, self.n_fft, rate, low=20.0, high=rate / 2)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Return the normalised features (batch × frames × 80, float32) of equal-length clips (batch × samples)."""
        batch = np.asarray(batch, dtype=np.float64)
        count = 1 + (batch.shape[1] - self.length) // self.shift
        index = np.arange(self.length)[None, :] + self.shift * np.arange(count)[:, None]
        frames = batch[:, index]
        frames = frames - frames.mean(axis=-1, keepdims=True)
        # Pre-emphasis, the first sample against itself (Kaldi's choice).
        previous = np.concatenate([frames[..., :1], frames[..., :-1]], axis=-1)
        frames = (frames - 0.97 * previous) * self.window
        spectrum = np.fft.rfft(frames, n=self.n_fft, axis=-1)
        power = spectrum.real ** 2 + spectrum.imag ** 2
        features = np.log(np.maximum(power @ self.matrix, np.finfo(np.float32).eps))
        return (features - features.mean(axis=1, keepdims=True)).astype(np.float32)


def _mel_matrix(bands: int, n_fft: int, rate: int, low: float, high: float) -> np.ndarray:
    """Return Kaldi's mel filters as a (n_fft/2 + 1) × bands matrix: triangles in mel, the Nyquist bin unused."""
    def mel(hertz):
        return 1127.0 * np.log(1.0 + np.asarray(hertz, dtype=np.float64) / 700.0)

    edges = mel(low) + np.arange(bands + 2) * (mel(high) - mel(low)) / (bands + 1)
    bins = mel(np.arange(n_fft // 2) * rate / n_fft)[:, None]
    left, centre, right = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]
    weights = np.maximum(0.0, np.minimum((bins - left) / (centre - left), (right - bins) / (right - centre)))
    return np.vstack([weights, np.zeros((1, bands))])


class CampplusEncoder:
    """Turn 16 kHz mono float32 speech into L2-normalised 192-dim CAM++ embeddings (ONNX Runtime on the export)."""

    model_id = "3d-speaker/speech_campplus_sv_zh_en_16k-common_advanced"
    runtime = "onnx"

    def __init__(self, model_dir: str | os.PathLike, threads: int | None = None):
        """Load the export in ``model_dir``; without a current one, raise ModelError (PyTorch runs it in campplus.py)."""
        from .modelstore import ModelError

        directory = Path(model_dir)
        if not onnx_export_current(directory):
            raise ModelError(f"no current ONNX export of CAM++ in {directory}; run 'flask models fetch campplus'")
        self.idle: Callable[[], bool] = lambda: False
        self._session = onnx_session(directory / ONNX_FILE, threads or 1)
        self._features = KaldiFbank()

    def embed(self, audio: np.ndarray, cancel: Cancel | None = None) -> np.ndarray:
        """Return the unit-length embedding (float32, 192) of 16 kHz mono float32 audio.

        ``cancel``: a handle that ends the call early (it then raises Cancelled).
        """
        return self.embed_many([audio], cancel)[0]

    def embed_many(self, clips: list[np.ndarray], cancel: Cancel | None = None) -> np.ndarray:
        """Return the unit-length embeddings (n × 192) of clips, in one call when they are equally long."""
        for audio in clips:
            if audio.ndim != 1 or audio.size < MIN_SAMPLES:
                raise ValueError(f"embed() takes a 1-D array of at least {MIN_SAMPLES} samples at 16 kHz")
        if not clips:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        if len({audio.size for audio in clips}) > 1:
            return np.stack([self.embed_many([audio], cancel)[0] for audio in clips])
        features = self._features(np.stack([np.asarray(a, dtype=np.float32) for a in clips]))
        try:
            vectors = self._session.run(None, {"features": features}, cancel.options if cancel else None)[0]
        except Exception:
            if cancel is not None and cancel.cancelled:
                raise Cancelled("the call was cancelled") from None
            raise
        return np.stack([normalise(vector) for vector in vectors])


def onnx_export_current(model_dir: str | os.PathLike) -> bool:
    """Return True when ``model_dir`` holds an ONNX export of CAM++ made from the pinned weights there."""
    from . import modelstore

    directory = Path(model_dir)
    try:
        about = json.loads((directory / ONNX_ABOUT).read_text())
    except (OSError, ValueError):
        return False
    pinned = modelstore.MODELS["campplus"].sha256[WEIGHTS_FILE]
    if about.get("source_sha256") != pinned or about.get("format") != EXPORT_FORMAT or not (directory / ONNX_FILE).is_file():
        logger.warning("the ONNX export in %s is missing or not of the pinned CAM++ weights", directory)
        return False
    return True
