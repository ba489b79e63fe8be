"""The ECAPA speaker encoder on real speech: embeddings, and separation of the dev trials."""
from __future__ import annotations

import numpy as np

from app.engines.speaker import EMBEDDING_DIM, centroid, cosine


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


def test_bfloat16_embeddings_score_like_float32_ones(engines, speech):
    """The fast precision must not move a decision: scores agree within 0.01 on every dev trial."""
    from app.engines.speaker import SpeakerEncoder
    from tests.conftest import MODELS_DIR

    exact = SpeakerEncoder(MODELS_DIR / "spkrec-ecapa-voxceleb", threads=1, precision="float32")
    fast = SpeakerEncoder(MODELS_DIR / "spkrec-ecapa-voxceleb", threads=1, precision="bfloat16")
    assert (exact.precision, fast.precision) == ("float32", "bfloat16")
    files = sorted({f for enroll, test, _ in speech.trials for f in [*enroll, test]})
    embeddings = [{f: encoder.embed(speech.load(f)) for f in files} for encoder in (exact, fast)]
    worst = 0.0
    for enroll_files, test_file, _ in speech.trials:
        scores = [cosine(centroid(np.stack([e[f] for f in enroll_files])), e[test_file]) for e in embeddings]
        worst = max(worst, abs(scores[0] - scores[1]))
    print(f"\nlargest score difference, bfloat16 vs float32: {worst:.4f}")
    assert worst < 0.01
