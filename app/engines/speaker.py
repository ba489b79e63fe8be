"""Speaker embeddings with SpeechBrain's ECAPA-TDNN, and cosine scoring.

SpeechBrain is the source of the model. ``flask models fetch`` also exports it
(``export_onnx``): the embedding network to ONNX, and its filterbank features as the window
and matrix they are made with. ONNX Runtime and numpy then give SpeechBrain's scores without
torch in the process (about 500 MB less resident memory) and in less time (docs/benchmarks.md,
"Runtimes"). Without the export, SpeechBrain runs on PyTorch as before.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

EMBEDDING_DIM = 192
# ECAPA's convolutions need a few frames; anything this short carries no voice anyway.
MIN_SAMPLES = 1600
MODEL_ID = "speechbrain/spkrec-ecapa-voxceleb"
# The ONNX export of the embedding network, and what it was made from (beside the weights).
ONNX_FILE = "embedding_model.onnx"
ONNX_ABOUT = "embedding_model.onnx.json"
FEATURES_FILE = "fbank.npz"
SOURCE_FILE = "embedding_model.ckpt"
# An export whose embeddings stray further than this from PyTorch's (cosine) is not used.
ONNX_MIN_COSINE = 0.9999

logger = logging.getLogger(__name__)


class SpeakerEncoder:
    """Turn 16 kHz mono float32 speech into L2-normalised 192-dim embeddings."""

    model_id = MODEL_ID

    def __init__(self, model_dir: str | os.PathLike, threads: int | None = None, precision: str = "auto",
                 runtime: str = "auto"):
        """Load ECAPA from ``model_dir``; ``precision`` is float32, bfloat16, or auto (see fast_bfloat16).

        ``runtime``: onnx (ONNX Runtime, float32, on the export), torch, or auto (onnx when a
        current export is in ``model_dir``).
        """
        if precision not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"precision must be auto, float32 or bfloat16, not {precision!r}")
        if runtime not in ("auto", "onnx", "torch"):
            raise ValueError(f"runtime must be auto, onnx or torch, not {runtime!r}")
        directory = str(Path(model_dir).resolve())
        self._session = self._wide = None
        # Set by the engines: True when nothing else runs, so that one call may use every core.
        self.idle: Callable[[], bool] = lambda: False
        if runtime == "onnx" or (runtime == "auto" and onnx_export_current(directory)):
            # No torch and no SpeechBrain in this process: numpy features, ONNX Runtime network.
            self._session = _onnx_session(Path(directory) / ONNX_FILE, threads or 1)
            # A second session on every core, for a call that has the machine to itself (see ``idle``).
            cores = os.cpu_count() or 1
            self._wide = _onnx_session(Path(directory) / ONNX_FILE, cores) if cores > (threads or 1) else None
            self._features = Fbank.load(Path(directory) / FEATURES_FILE)
            self.runtime, self.precision = "onnx", "float32"
            return
        # Imported here so that code which never embeds (migrations, the CLI) never loads torch.
        import torch
        from speechbrain.inference.speaker import EncoderClassifier
        from speechbrain.utils.fetching import LocalStrategy

        if threads:
            torch.set_num_threads(threads)
        # ECAPA's activations decay into denormal floats, which the CPU handles in microcode:
        # flushing them to zero cuts embedding time by about a third, with identical output.
        torch.set_flush_denormal(True)
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
        self.runtime = "torch"
        # bfloat16 runs ECAPA about 1.6 times as fast where the CPU computes it natively
        # (AMX or AVX-512 BF16); cosine scores move by at most 0.004 (docs/benchmarks.md).
        self.precision = "bfloat16" if precision == "bfloat16" or (precision == "auto" and fast_bfloat16()) else "float32"
        # No lock: the model keeps no state between calls (sentence-level feature
        # normalisation), so calls on parallel workers give identical results.

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """Return the unit-length embedding (float32, 192) of 16 kHz mono float32 audio."""
        return self.embed_many([audio])[0]

    def embed_many(self, clips: list[np.ndarray]) -> np.ndarray:
        """Return the unit-length embeddings (n × 192) of clips, in one model call when they are equally long.

        Each clip is normalised on its own (sentence-level), so a clip's embedding is the same
        alone or with others: the sliding windows of many streams can share one call.
        """
        for audio in clips:
            if audio.ndim != 1 or audio.size < MIN_SAMPLES:
                raise ValueError(f"embed() takes a 1-D array of at least {MIN_SAMPLES} samples at 16 kHz")
        if not clips:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        if len({audio.size for audio in clips}) > 1:
            return np.stack([self.embed_many([audio])[0] for audio in clips])
        batch = np.stack([np.asarray(a, dtype=np.float32) for a in clips])
        if self._session is not None:
            session = self._wide if self._wide is not None and self.idle() else self._session
            vectors = session.run(None, {"features": self._features(batch)})[0]
        else:
            torch = self._torch
            bfloat16 = self.precision == "bfloat16"
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
                vectors = self._model.encode_batch(torch.from_numpy(batch))[:, 0].float().numpy()
        return np.stack([normalise(vector) for vector in vectors])


def _onnx_session(path: Path, threads: int):
    """Open an ONNX Runtime session on ``path`` that runs one call on ``threads`` threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Calls come from the inference pool's threads; spinning idle workers would steal their cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_export_current(model_dir: str | os.PathLike) -> bool:
    """Return True when ``model_dir`` holds an ONNX export made from the pinned weights there."""
    from . import modelstore

    directory = Path(model_dir)
    try:
        about = json.loads((directory / ONNX_ABOUT).read_text())
    except (OSError, ValueError):
        return False
    pinned = modelstore.MODELS["ecapa"].sha256[SOURCE_FILE]
    if (about.get("source_sha256") != pinned or not (directory / ONNX_FILE).is_file()
            or not (directory / FEATURES_FILE).is_file()):
        logger.warning("the ONNX export in %s is not of the pinned ECAPA weights; PyTorch runs ECAPA", directory)
        return False
    return True


class Fbank:
    """SpeechBrain's ECAPA input in numpy: 80 log-mel filterbanks, mean-normalised per clip.

    The same steps as speechbrain.lobes.features.Fbank (centred STFT, power spectrum,
    triangular filters, dB clipped 80 dB under the clip's peak) and its sentence-level
    InputNormalization, with the window and filter matrix taken from SpeechBrain at export.
    """

    def __init__(self, window: np.ndarray, matrix: np.ndarray, hop: int, amin: float, multiplier: float,
                 db_offset: float, top_db: float):
        self.window, self.matrix, self.hop = window.astype(np.float32), matrix.astype(np.float32), int(hop)
        self.n_fft = self.window.size
        self.amin, self.multiplier, self.db_offset, self.top_db = float(amin), float(multiplier), float(db_offset), float(top_db)

    @classmethod
    def load(cls, path: Path) -> Fbank:
        """Read the window, matrix and constants that export_onnx saved."""
        with np.load(path) as data:
            return cls(data["window"], data["matrix"], int(data["hop"]), float(data["amin"]), float(data["multiplier"]),
                       float(data["db_offset"]), float(data["top_db"]))

    def save(self, path: Path) -> None:
        """Write the window, matrix and constants (no audio)."""
        with open(path, "wb") as handle:
            np.savez(handle, window=self.window, matrix=self.matrix, hop=self.hop, amin=self.amin,
                     multiplier=self.multiplier, db_offset=self.db_offset, top_db=self.top_db)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Return the normalised features (batch × frames × 80, float32) of equal-length clips (batch × samples)."""
        half = self.n_fft // 2
        padded = np.pad(batch, ((0, 0), (half, half)))  # torch.stft(center=True, pad_mode="constant")
        frames = 1 + (padded.shape[1] - self.n_fft) // self.hop
        index = np.arange(self.n_fft)[None, :] + self.hop * np.arange(frames)[:, None]
        spectrum = np.fft.rfft(padded[:, index] * self.window, axis=-1)
        power = (spectrum.real ** 2 + spectrum.imag ** 2).astype(np.float32)
        decibels = self.multiplier * np.log10(np.maximum(power @ self.matrix, self.amin)) - self.db_offset
        decibels = np.maximum(decibels, decibels.max(axis=(1, 2), keepdims=True) - self.top_db)
        return (decibels - decibels.mean(axis=1, keepdims=True)).astype(np.float32)


def export_onnx(model_dir: str | os.PathLike, log=print) -> Path:
    """Export ECAPA from SpeechBrain beside its weights: the network to ONNX, the features to numpy; return the ONNX file.

    The export is checked against SpeechBrain on PyTorch before it is kept.
    """
    import torch

    from . import modelstore

    directory = Path(model_dir)
    target = directory / ONNX_FILE
    if onnx_export_current(directory):
        log(f"ecapa: ONNX export present in {target}")
        return target
    encoder = SpeakerEncoder(directory, precision="float32", runtime="torch")
    mods = encoder._model.mods
    network, stft, filters = mods["embedding_model"], mods["compute_features"].compute_STFT, mods["compute_features"].compute_fbanks
    # What Fbank reproduces; another configuration would need other code, not other numbers.
    norm = mods["mean_var_norm"]
    if (not stft.center or stft.pad_mode != "constant" or stft.win_length != stft.n_fft or not filters.log_mel
            or mods["compute_features"].deltas or mods["compute_features"].context or norm.norm_type != "sentence"
            or norm.std_norm):
        raise modelstore.ModelError("this ECAPA's feature settings are not the ones the ONNX export reproduces")
    columns = filters.all_freqs_mat.shape[1]
    matrix = filters._create_fbank_matrix(filters.f_central.repeat(columns, 1).transpose(0, 1),
                                          filters.band.repeat(columns, 1).transpose(0, 1))
    features = Fbank(stft.window.numpy(), matrix.detach().numpy(), stft.hop_length, filters.amin,
                     filters.multiplier, filters.multiplier * filters.db_multiplier, filters.top_db)

    class Embedding(torch.nn.Module):
        """Features (batch × frames × 80) to embeddings (batch × 192)."""

        def __init__(self):
            super().__init__()
            self.network = network

        def forward(self, batch):
            return self.network(batch)[:, 0, :]

    partial = target.with_name(target.name + ".partial")
    torch.onnx.export(Embedding().eval(), (torch.randn(1, 200, 80),), str(partial), input_names=["features"],
                      output_names=["embedding"], opset_version=17, dynamo=False,
                      dynamic_axes={"features": {0: "batch", 1: "frames"}, "embedding": {0: "batch"}})
    session = _onnx_session(partial, 1)
    rng = np.random.default_rng(0)
    worst = 1.0
    for seconds in (0.1, 1.0, 2.0, 7.3):
        # Noise with a voice-like spectral tilt and loudness changes, as speech has.
        audio = np.cumsum(rng.standard_normal(int(seconds * 16000))) * 0.01
        audio = (audio - np.convolve(audio, np.ones(64) / 64, "same")) * (1 + np.sin(np.arange(audio.size) / 1600))
        audio = audio.astype(np.float32)
        exported = normalise(session.run(None, {"features": features(audio[None])})[0][0])
        worst = min(worst, cosine(encoder.embed(audio), exported))
    if worst < ONNX_MIN_COSINE:
        partial.unlink()
        raise modelstore.ModelError(f"the ONNX export of ECAPA differs from SpeechBrain (cosine {worst:.6f}); not kept")
    features.save(directory / FEATURES_FILE)
    os.replace(partial, target)
    about = {"source_sha256": modelstore.MODELS["ecapa"].sha256[SOURCE_FILE], "torch": torch.__version__,
             "opset": 17, "min_cosine_to_speechbrain": round(worst, 7)}
    (directory / ONNX_ABOUT).write_text(json.dumps(about, indent=1) + "\n")
    log(f"ecapa: exported to ONNX in {target} (cosine to SpeechBrain {worst:.6f})")
    return target


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
