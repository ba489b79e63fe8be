"""Speaker embeddings with SpeechBrain's ECAPA-TDNN, and cosine scoring.

SpeechBrain is the source of the model. ``flask models fetch`` also exports it
(``export_onnx``): the embedding network's frame features to ONNX, their pooling into one
vector as matrices (pooling.py), and its filterbank features as the window and matrix they are
made with. ONNX Runtime and numpy then give SpeechBrain's scores without torch in the process
(about 500 MB less resident memory) and in less time (docs/benchmarks.md, "Runtimes"). Without
the export, SpeechBrain runs on PyTorch as before.

In two parts, an utterance's frame features can be computed while it is still being said
(``prefix``), and only its last frames after it ends (``embed_after``).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .pooling import Pooling
from .pooling import export as pooling_export

EMBEDDING_DIM = 192
# ECAPA's convolutions need a few frames; anything this short carries no voice anyway.
MIN_SAMPLES = 1600
MODEL_ID = "speechbrain/spkrec-ecapa-voxceleb"
# The ONNX export of the embedding network, and what it was made from (beside the weights).
FRAMES_FILE = "embedding_frames.onnx"
POOLING_FILE = "embedding_pooling.npz"
ONNX_ABOUT = "embedding_model.onnx.json"
EXPORT_FORMAT = "frames+pooling"
FEATURES_FILE = "fbank.npz"
SOURCE_FILE = "embedding_model.ckpt"
# An export whose embeddings stray further than this from PyTorch's (cosine) is not used.
ONNX_MIN_COSINE = 0.9999
# Frames of ECAPA's frame features (10 ms each) redone after a prefix: the last RIGHT of the
# prefix (they lacked the audio after them), and CONTEXT before those as their context, then
# dropped. ECAPA's layers see about 0.65 s each way, but its features mostly settle within 0.3 s:
# on speech-more (bench.early), the estimate's largest raw changes with prefixes 0.45 and 0.6 s
# before the end were the same with 0.3 s as with 0.5 s (0.061 and 0.077), and a quarter less
# work was left after stop. What the estimate costs in accuracy: docs/benchmarks.md, "Deciding
# while the person speaks".
PREFIX_RIGHT = 30
PREFIX_CONTEXT = 30

logger = logging.getLogger(__name__)


class SpeakerEncoder:
    """Turn 16 kHz mono float32 speech into L2-normalised 192-dim embeddings."""

    model_id = MODEL_ID
    dim = EMBEDDING_DIM

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
        self._frames = self._wide = self._pooling = None
        # Set by the engines: True when nothing else runs, so that one call may use every core.
        self.idle: Callable[[], bool] = lambda: False
        if runtime == "onnx" or (runtime == "auto" and onnx_export_current(directory)):
            # No torch and no SpeechBrain in this process: numpy features, ONNX Runtime network.
            self._frames = onnx_session(Path(directory) / FRAMES_FILE, threads or 1)
            # A second session on every core, for a call that has the machine to itself (see ``idle``).
            cores = os.cpu_count() or 1
            self._wide = onnx_session(Path(directory) / FRAMES_FILE, cores) if cores > (threads or 1) else None
            self._pooling = Pooling.load(Path(directory) / POOLING_FILE)
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
        if self._frames is not None:
            vectors = [self._pooling(frames) for frames in self._frame_features(self._features(batch))]
        else:
            torch = self._torch
            bfloat16 = self.precision == "bfloat16"
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
                vectors = self._model.encode_batch(torch.from_numpy(batch))[:, 0].float().numpy()
        return np.stack([normalise(vector) for vector in vectors])

    @property
    def streams(self) -> bool:
        """Return True when this runtime can embed an utterance from a prefix (``prefix``, ``embed_after``)."""
        return self._frames is not None

    def prefix(self, audio: np.ndarray, cancel: Cancel | None = None) -> Prefix:
        """Return the frame features of an utterance's beginning ``audio``, but for the last PREFIX_RIGHT.

        The features are normalised with this beginning's statistics, which the rest of the
        utterance changes a little: ``embed_after`` gives an estimate of ``embed``, not ``embed``.
        ``cancel``: a handle that ends the call early (it then raises Cancelled).
        """
        features = self._features(np.asarray(audio, dtype=np.float32)[None])
        frames = self._frame_features(features, cancel)[0, :, :max(0, features.shape[1] - PREFIX_RIGHT)]
        return Prefix(audio.size, frames, self._pooling.project(frames))

    def embed_after(self, audio: np.ndarray, prefix: Prefix) -> np.ndarray:
        """Return an estimate of ``embed(audio)`` from the frames of ``prefix`` (of audio's beginning) and the rest.

        Only the frames after the prefix are computed, from PREFIX_CONTEXT frames before them,
        with the whole utterance's statistics; all frames are then pooled as ``embed`` pools them.
        """
        if audio.size < prefix.samples:
            raise ValueError("the prefix is longer than the audio")
        features = self._features(np.asarray(audio, dtype=np.float32)[None])
        start = prefix.frames.shape[1]
        low = max(0, start - PREFIX_CONTEXT)
        rest = self._frame_features(np.ascontiguousarray(features[:, low:]))[0, :, start - low:]
        frames = np.concatenate([prefix.frames, rest], axis=1)
        return normalise(self._pooling(frames, np.concatenate([prefix.projected, self._pooling.project(rest)], axis=1)))

    def _frame_features(self, features: np.ndarray, cancel: Cancel | None = None) -> np.ndarray:
        """Run the frame part of the network: features (batch × frames × 80) → (batch × channels × frames)."""
        session = self._wide if self._wide is not None and self.idle() else self._frames
        try:
            return session.run(None, {"features": features}, cancel.options if cancel else None)[0]
        except Exception:
            if cancel is not None and cancel.cancelled:
                raise Cancelled("the call was cancelled") from None
            raise


class Cancelled(RuntimeError):
    """A call ended early through its ``Cancel`` handle."""


class Cancel:
    """A handle to end a running ``prefix`` call early, from another thread (ONNX Runtime's terminate flag)."""

    def __init__(self):
        import onnxruntime

        self.options = onnxruntime.RunOptions()
        self.cancelled = False

    def __call__(self) -> None:
        """End the call: ONNX Runtime stops between two of the network's operations."""
        self.cancelled = True
        self.options.terminate = True


@dataclass(frozen=True)
class Prefix:
    """ECAPA's frame features of the first ``samples`` of an utterance, but for its last frames."""

    samples: int
    frames: np.ndarray  # channels × frames
    projected: np.ndarray  # Pooling.project(frames)


def onnx_session(path: Path, threads: int):
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
    if (about.get("source_sha256") != pinned or about.get("format") != EXPORT_FORMAT
            or not all((directory / name).is_file() for name in (FRAMES_FILE, POOLING_FILE, FEATURES_FILE))):
        logger.warning("the ONNX export in %s is missing or not of the pinned ECAPA weights; PyTorch runs ECAPA", directory)
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
    target = directory / FRAMES_FILE
    if onnx_export_current(directory):
        log(f"ecapa: ONNX export present in {directory}")
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

    from speechbrain.lobes.models.ECAPA_TDNN import TDNNBlock

    class Frames(torch.nn.Module):
        """Features (batch × frames × 80) to frame features (batch × channels × frames): ECAPA up to its pooling."""

        def __init__(self):
            super().__init__()
            self.network = network

        def forward(self, batch):
            x, outputs = batch.transpose(1, 2), []
            for layer in self.network.blocks:
                x = layer(x) if isinstance(layer, TDNNBlock) else layer(x, lengths=None)
                outputs.append(x)
            return self.network.mfa(torch.cat(outputs[1:], dim=1))

    pooling = pooling_export(network)
    partial = target.with_name(target.name + ".partial")
    torch.onnx.export(Frames().eval(), (torch.randn(1, 200, 80),), str(partial), input_names=["features"],
                      output_names=["frames"], opset_version=17, dynamo=False,
                      dynamic_axes={"features": {0: "batch", 1: "frames"}, "frames": {0: "batch", 2: "frames"}})
    session = onnx_session(partial, 1)
    worst = 1.0
    for audio in probe_signals():
        exported = normalise(pooling(session.run(None, {"features": features(audio[None])})[0][0]))
        worst = min(worst, cosine(encoder.embed(audio), exported))
    if worst < ONNX_MIN_COSINE:
        partial.unlink()
        raise modelstore.ModelError(f"the ONNX export of ECAPA differs from SpeechBrain (cosine {worst:.6f}); not kept")
    features.save(directory / FEATURES_FILE)
    pooling.save(directory / POOLING_FILE)
    os.replace(partial, target)
    (directory / "embedding_model.onnx").unlink(missing_ok=True)  # the whole network, as earlier versions exported it
    about = {"source_sha256": modelstore.MODELS["ecapa"].sha256[SOURCE_FILE], "format": EXPORT_FORMAT,
             "torch": torch.__version__, "opset": 17, "min_cosine_to_speechbrain": round(worst, 7)}
    (directory / ONNX_ABOUT).write_text(json.dumps(about, indent=1) + "\n")
    log(f"ecapa: exported to ONNX in {directory} (cosine to SpeechBrain {worst:.6f})")
    return target


def probe_signals() -> list[np.ndarray]:
    """Return the export check's signals: noise with a voice-like spectral tilt and loudness changes, 0.1-7.3 s."""
    rng = np.random.default_rng(0)
    signals = []
    for seconds in (0.1, 1.0, 2.0, 7.3):
        audio = np.cumsum(rng.standard_normal(int(seconds * 16000))) * 0.01
        audio = (audio - np.convolve(audio, np.ones(64) / 64, "same")) * (1 + np.sin(np.arange(audio.size) / 1600))
        signals.append(audio.astype(np.float32))
    return signals


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
