"""Channel copies of an enrollment clip: how the user's voice sounds over a telephone line.

Enrollment embeds the telephone copy of each accepted clip (in memory; the copy is never
stored, only its embedding), so that a login over a phone line is compared with the user's
voice as a phone line carries it (docs/threshold.md). The channel is deliberately not the one
bench/degrade.py tests with: 2nd-order filters here, 6th-order there.
"""
from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
# The channels a voiceprint keeps embeddings for, in stored order (app/models.py).
CHANNELS = ("phone",)


def phone(audio: np.ndarray) -> np.ndarray:
    """Return ``audio`` through a telephone channel: 300-3400 Hz, 8 kHz, G.711 mu-law, back to 16 kHz."""
    import torch
    import torchaudio.functional as F

    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
    x = F.highpass_biquad(x, SAMPLE_RATE, 300.0)
    x = F.lowpass_biquad(x, SAMPLE_RATE, 3400.0)
    narrow = F.resample(x, SAMPLE_RATE, 8000).clamp(-1.0, 1.0)
    coded = F.mu_law_decoding(F.mu_law_encoding(narrow, 256), 256)
    return F.resample(coded, 8000, SAMPLE_RATE)[0, : audio.size].numpy().astype(np.float32)


def channel(name: str, audio: np.ndarray) -> np.ndarray:
    """Return ``audio`` through the named channel of ``CHANNELS``."""
    if name != "phone":
        raise ValueError(f"unknown channel {name!r}")
    return phone(audio)
