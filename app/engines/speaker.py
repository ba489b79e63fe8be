"""Speaker embeddings with SpeechBrain's ECAPA-TDNN, and cosine scoring."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

EMBEDDING_DIM = 192
# ECAPA's convolutions need a few frames; anything this short carries no voice anyway.
MIN_SAMPLES = 1600
MODEL_ID = "speechbrain/spkrec-ecapa-voxceleb"


class SpeakerEncoder:
    """Turn 16 kHz mono float32 speech into L2-normalised 192-dim embeddings."""

    model_id = MODEL_ID

    def __init__(self, model_dir: str | os.PathLike, threads: int | None = None, precision: str = "auto"):
        """Load ECAPA from ``model_dir``; ``precision`` is float32, bfloat16, or auto (see fast_bfloat16)."""
        # Imported here so that code which never embeds (migrations, the CLI) never loads torch.
        import torch
        from speechbrain.inference.speaker import EncoderClassifier
        from speechbrain.utils.fetching import LocalStrategy

        if threads:
            torch.set_num_threads(threads)
        # ECAPA's activations decay into denormal floats, which the CPU handles in microcode:
        # flushing them to zero cuts embedding time by about a third, with identical output.
        torch.set_flush_denormal(True)
        directory = str(Path(model_dir).resolve())
        self._torch = torch
        self._model = EncoderClassifier.from_hparams(
            source=directory,
            savedir=directory,
            # The shipped hyperparams point at the hub; load from the local copy instead.
            overrides={"pretrained_path": directory},
            run_opts={"device": "cpu"},
            local_strategy=LocalStrategy.NO_LINK,
        )
        self._model.eval()
        if precision not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"precision must be auto, float32 or bfloat16, not {precision!r}")
        # bfloat16 runs ECAPA about 1.6 times as fast where the CPU computes it natively
        # (AMX or AVX-512 BF16); cosine scores move by at most 0.004 (docs/benchmarks.md).
        self.precision = "bfloat16" if precision == "bfloat16" or (precision == "auto" and fast_bfloat16()) else "float32"
        # No lock: the model keeps no state between calls (sentence-level feature
        # normalisation), so calls on parallel workers give identical results.

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """Return the unit-length embedding (float32, 192) of 16 kHz mono float32 audio."""
        if audio.ndim != 1 or audio.size < MIN_SAMPLES:
            raise ValueError(f"embed() takes a 1-D array of at least {MIN_SAMPLES} samples at 16 kHz")
        tensor = self._torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
        bfloat16 = self.precision == "bfloat16"
        with self._torch.inference_mode(), self._torch.autocast("cpu", dtype=self._torch.bfloat16, enabled=bfloat16):
            vector = self._model.encode_batch(tensor)[0, 0].float().numpy()
        return normalise(vector)


def fast_bfloat16() -> bool:
    """Return True when this CPU computes bfloat16 natively (AMX tiles or AVX-512 BF16)."""
    import torch

    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def normalise(vector: np.ndarray) -> np.ndarray:
    """Scale a vector to unit length (as float32)."""
    vector = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:
        raise ValueError("cannot normalise a zero vector")
    return vector / norm


def centroid(embeddings: np.ndarray) -> np.ndarray:
    """Return the unit-length mean of unit-length embeddings (shape n × dim)."""
    return normalise(np.asarray(embeddings, dtype=np.float32).mean(axis=0))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Return the cosine similarity of two embeddings."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def to_bytes(vectors: np.ndarray) -> bytes:
    """Serialise embeddings as little-endian float32 bytes (how the database keeps them)."""
    return np.asarray(vectors, dtype="<f4").tobytes()


def from_bytes(data: bytes, dim: int) -> np.ndarray:
    """Read little-endian float32 bytes back into an array of rows of ``dim`` values."""
    return np.frombuffer(data, dtype="<f4").reshape(-1, dim)
