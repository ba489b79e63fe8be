"""Channel copies of an enrollment clip: how the user's voice sounds over a telephone line.

Enrollment embeds the telephone copy of each accepted clip (in memory; the copy is never
stored, only its embedding), so that a login over a phone line is compared with the user's
voice as a phone line carries it (docs/threshold.md). The channel is deliberately not the one
bench/degrade.py tests with: 2nd-order filters here, 6th-order there.
"""
from __future__ import annotations

import math

import numpy as np

SAMPLE_RATE = 16000
# The channels a voiceprint keeps embeddings for, in stored order (app/store/models.py).
CHANNELS = ("phone",)


def phone(audio: np.ndarray) -> np.ndarray:
    """Return ``audio`` through a telephone channel: 300-3400 Hz, 8 kHz, G.711 mu-law, back to 16 kHz.

    The same steps as torchaudio's highpass_biquad, lowpass_biquad, resample (sinc, Hann window,
    6 zero crossings, rolloff 0.99) and mu_law_encoding/decoding, in numpy and scipy, so that
    enrolling loads no torch into the server (embeddings agree to a cosine of 0.99999).
    """
    x = np.ascontiguousarray(audio, dtype=np.float32)
    x = _lowpass(_highpass(x, SAMPLE_RATE, 300.0), SAMPLE_RATE, 3400.0).astype(np.float32)
    narrow = np.clip(_resample(x, SAMPLE_RATE, 8000), -1.0, 1.0)
    coded = _mu_law(narrow).astype(np.float32)
    return _resample(coded, 8000, SAMPLE_RATE)[: audio.size].astype(np.float32)


def _biquad(audio: np.ndarray, b: list[float], a: list[float]) -> np.ndarray:
    from scipy.signal import lfilter

    return np.clip(lfilter(np.array(b) / a[0], np.array(a) / a[0], audio), -1.0, 1.0)  # clamped, as torchaudio


def _highpass(audio: np.ndarray, rate: int, cutoff: float, q: float = 0.707) -> np.ndarray:
    w0 = 2 * math.pi * cutoff / rate
    alpha, c = math.sin(w0) / 2 / q, math.cos(w0)
    return _biquad(audio, [(1 + c) / 2, -1 - c, (1 + c) / 2], [1 + alpha, -2 * c, 1 - alpha])


def _lowpass(audio: np.ndarray, rate: int, cutoff: float, q: float = 0.707) -> np.ndarray:
    w0 = 2 * math.pi * cutoff / rate
    alpha, c = math.sin(w0) / 2 / q, math.cos(w0)
    return _biquad(audio, [(1 - c) / 2, 1 - c, (1 - c) / 2], [1 + alpha, -2 * c, 1 - alpha])


def _resample(audio: np.ndarray, orig: int, new: int, zeros: int = 6, rolloff: float = 0.99) -> np.ndarray:
    """Resample as torchaudio.functional.resample does by default (windowed sinc, Hann)."""
    g = math.gcd(orig, new)
    orig, new = orig // g, new // g
    base = min(orig, new) * rolloff
    width = math.ceil(zeros * orig / base)
    t = (np.arange(0, -new, -1, dtype=np.float64)[:, None] / new
         + np.arange(-width, width + orig, dtype=np.float64)[None, :] / orig) * base
    t = np.clip(t, -zeros, zeros)
    window = np.cos(t * math.pi / zeros / 2) ** 2
    t = t * math.pi
    kernel = (np.where(t == 0, 1.0, np.sin(t) / np.where(t == 0, 1.0, t)) * window * base / orig).astype(np.float32)
    padded = np.pad(audio.astype(np.float32), (width, width + orig))
    frames = (padded.size - kernel.shape[1]) // orig + 1
    index = np.arange(kernel.shape[1])[None, :] + orig * np.arange(frames)[:, None]
    return (padded[index] @ kernel.T).reshape(-1)[: math.ceil(new * audio.size / orig)]


def _mu_law(audio: np.ndarray, mu: int = 255) -> np.ndarray:
    """Encode to 8-bit mu-law and decode again (torchaudio's mu_law_encoding / mu_law_decoding)."""
    x = np.sign(audio) * np.log1p(mu * np.abs(audio)) / math.log1p(mu)
    y = np.floor((x + 1) / 2 * mu + 0.5) / mu * 2 - 1
    return np.sign(y) * (np.exp(np.abs(y) * math.log1p(mu)) - 1) / mu


def channel(name: str, audio: np.ndarray) -> np.ndarray:
    """Return ``audio`` through the named channel of ``CHANNELS``."""
    if name != "phone":
        raise ValueError(f"unknown channel {name!r}")
    return phone(audio)
