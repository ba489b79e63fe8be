"""The ECAPA speaker encoder on real speech: embeddings, and separation of the dev trials."""
from __future__ import annotations

import numpy as np

from app.speaker import EMBEDDING_DIM, centroid, cosine


def test_embeddings_are_unit_length_and_deterministic(engines, speech):
    audio = speech.load("wav/ljspeech/LJ001-0004.wav")
    first = engines.speaker.embed(audio)
    second = engines.speaker.embed(audio)
    assert first.shape == (EMBEDDING_DIM,) and first.dtype == np.float32
    assert abs(float(np.linalg.norm(first)) - 1.0) < 1e-5
    assert cosine(first, second) > 0.9999


def test_every_same_speaker_trial_scores_above_every_different_speaker_trial(engines, speech):
    cache: dict[str, np.ndarray] = {}

    def embed(file: str) -> np.ndarray:
        if file not in cache:
            cache[file] = engines.speaker.embed(speech.load(file))
        return cache[file]

    genuine, impostor = [], []
    for enroll_files, test_file, same in speech.trials:
        score = cosine(centroid(np.stack([embed(f) for f in enroll_files])), embed(test_file))
        (genuine if same else impostor).append(score)
    print(f"\nsame speaker:      {len(genuine)} trials, scores {min(genuine):.3f} .. {max(genuine):.3f}")
    print(f"different speaker: {len(impostor)} trials, scores {min(impostor):.3f} .. {max(impostor):.3f}")
    assert len(genuine) == len(impostor) == 40
    assert min(genuine) > max(impostor)
