"""Two speaker models as one voice: ECAPA's and CAM++'s embeddings side by side in one unit vector.

With both parts unit length and weighted by the square roots of their shares, the cosine of two
such vectors is ``ECAPA_SHARE`` times ECAPA's cosine plus the rest times CAM++'s: a fixed linear
fusion of the two scores. Everything the gate does with one model's vectors (centroids, AS-norm
against a cohort, calibration, identification) then works on the pair unchanged, fitted anew.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

# ECAPA's share of the fused cosine. The cross-validated score fusion (bench/fusion.py, both
# halves of speech-more) weighed ECAPA's cosine at 0.27 to 0.30 of CAM++'s; a quarter of the
# sum is that ratio, rounded (docs/benchmarks.md, "A second speaker model").
ECAPA_SHARE = 0.25
PART_DIM = 192
FUSED_DIM = 2 * PART_DIM


def fuse(ecapa: np.ndarray, campplus: np.ndarray, share: float = ECAPA_SHARE) -> np.ndarray:
    """Return the fused unit vectors (… × 384, float32) of ECAPA's and CAM++'s embeddings (… × 192 each)."""
    ecapa = np.asarray(ecapa, dtype=np.float32)
    campplus = np.asarray(campplus, dtype=np.float32)
    parts = [np.sqrt(share) * _unit(ecapa), np.sqrt(1.0 - share) * _unit(campplus)]
    return np.concatenate(parts, axis=-1).astype(np.float32)


def ecapa_part(fused: np.ndarray) -> np.ndarray:
    """Return the unit ECAPA embeddings (… × 192) inside fused vectors: what ECAPA-only voiceprints are scored on."""
    return _unit(np.asarray(fused, dtype=np.float32)[..., :PART_DIM])


def in_space(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Return voices (a vector, or one per row) as a space of ``dim`` compares them: fused ones reduced to ECAPA's part.

    A voice of ECAPA alone cannot be lifted into the fused space: asked for, that is an error.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.shape[-1] == dim:
        return vectors
    if vectors.shape[-1] == FUSED_DIM and dim == PART_DIM:
        return ecapa_part(vectors)
    raise ValueError(f"a {vectors.shape[-1]}-dimensional voice cannot be compared in a {dim}-dimensional space")


def common(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return two voices in the richest space both have (fused when both are, else ECAPA's)."""
    dim = min(np.shape(a)[-1], np.shape(b)[-1])
    return in_space(a, dim), in_space(b, dim)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


# CAM++'s half of an embedding, run beside ECAPA's (FusedEncoder.embed_many, prefix): one thread
# a core, as many logins may end at once.
_beside = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="campplus")

# What a fused voiceprint's ``model_id`` says: both models and ECAPA's share of the cosine.
FUSED_MODEL_ID = f"ecapa+campplus@{ECAPA_SHARE}"


@dataclass(frozen=True)
class FusedPrefix:
    """The beginning of an utterance, the first ``samples`` of it: ECAPA's frames and CAM++'s embedding of it."""

    ecapa: object  # speaker.Prefix
    campplus: np.ndarray

    @property
    def samples(self) -> int:
        return self.ecapa.samples


class FusedEncoder:
    """ECAPA and CAM++ as one speaker encoder of fused 384-dim vectors (``fuse``), with ECAPA's interface.

    While an utterance is said, its beginning can be worked on (``prefix``): ECAPA's frames,
    and CAM++'s embedding of that beginning. After it ends only ECAPA's last frames are left
    (``embed_after``); CAM++'s part of the estimate is the beginning's, which leaves out the
    last fraction of a second (the close-call bands of early.py are measured on this estimate).
    """

    model_id = FUSED_MODEL_ID
    dim = FUSED_DIM

    def __init__(self, ecapa, campplus):
        self.ecapa, self.campplus = ecapa, campplus
        self.runtime, self.precision = ecapa.runtime, ecapa.precision

    @property
    def idle(self):
        return self.ecapa.idle

    @idle.setter
    def idle(self, test) -> None:
        # The engines set it: True when nothing else runs, so that one call may use every core.
        self.ecapa.idle = self.campplus.idle = test

    @property
    def streams(self) -> bool:
        """Return True when ECAPA's runtime can embed an utterance from a prefix."""
        return self.ecapa.streams

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """Return the fused unit vector (float32, 384) of 16 kHz mono float32 audio."""
        return self.embed_many([audio])[0]

    def embed_many(self, clips: list[np.ndarray]) -> np.ndarray:
        """Return the fused unit vectors (n × 384) of clips, each model in one call where they are equally long.

        The two models run at once: a dictation's last windows are checked after its last word, and a
        free second core takes CAM++'s share off that wait.
        """
        if not clips:
            return np.zeros((0, FUSED_DIM), dtype=np.float32)
        campplus = _beside.submit(self.campplus.embed_many, clips)
        return fuse(self.ecapa.embed_many(clips), campplus.result())

    def prefix(self, audio: np.ndarray, cancel=None) -> FusedPrefix:
        """Return an utterance's beginning ``audio`` worked on: ECAPA's prefix (SpeakerEncoder.prefix) and CAM++'s embedding.

        The two run at once; ``cancel`` ends both (the call then raises speaker.Cancelled).
        """
        campplus = _beside.submit(self.campplus.embed, audio, cancel)
        try:
            ecapa = self.ecapa.prefix(audio, cancel)
        finally:
            wait([campplus])  # also when ECAPA's part was cancelled: CAM++'s ends at once then
        return FusedPrefix(ecapa, campplus.result())

    def embed_after(self, audio: np.ndarray, prefix: FusedPrefix) -> np.ndarray:
        """Return an estimate of ``embed(audio)``: ECAPA's from ``prefix`` and the rest, CAM++'s of the beginning.

        The work left after a login's last word is ECAPA's last frames alone, which then has
        every core when the machine is quiet (SpeakerEncoder.idle).
        """
        if audio.size < prefix.samples:
            raise ValueError("the prefix is longer than the audio")
        return fuse(self.ecapa.embed_after(audio, prefix.ecapa), prefix.campplus)
