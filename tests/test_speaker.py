"""The ECAPA speaker encoder on real speech: embeddings, and separation of the dev trials."""
from __future__ import annotations

import numpy as np
import pytest

from app.engines.speaker import EMBEDDING_DIM, centroid, cosine


@pytest.fixture(scope="module")
def ecapa(engines):
    """ECAPA as the server runs it, inside the fused encoder (app/engines/fused.py)."""
    return engines.speaker.ecapa


@pytest.fixture(scope="module")
def embedded(ecapa, speech):
    """The session encoder's embedding of each dev file, computed once for the module's tests.

    Embeddings are deterministic (the first test checks it), so the tests that compare the
    service's encoder with another need not embed the same files again.
    """
    cache: dict[str, np.ndarray] = {}

    def embed(file: str) -> np.ndarray:
        if file not in cache:
            cache[file] = ecapa.embed(speech.load(file))
        return cache[file]

    return embed


def test_embeddings_are_unit_length_and_deterministic(ecapa, speech):
    audio = speech.load("wav/ljspeech/LJ001-0004.wav")
    first = ecapa.embed(audio)
    second = ecapa.embed(audio)
    assert first.shape == (EMBEDDING_DIM,) and first.dtype == np.float32
    assert abs(float(np.linalg.norm(first)) - 1.0) < 1e-5
    assert cosine(first, second) > 0.9999


def test_every_same_speaker_trial_scores_above_every_different_speaker_trial(speech, embedded):
    genuine, impostor = [], []
    for enroll_files, test_file, same in speech.trials:
        score = cosine(centroid(np.stack([embedded(f) for f in enroll_files])), embedded(test_file))
        (genuine if same else impostor).append(score)
    print(f"\nsame speaker:      {len(genuine)} trials, scores {min(genuine):.3f} .. {max(genuine):.3f}")
    print(f"different speaker: {len(impostor)} trials, scores {min(impostor):.3f} .. {max(impostor):.3f}")
    assert len(genuine) == len(impostor) == 40
    assert min(genuine) > max(impostor)


def test_bfloat16_embeddings_score_like_float32_ones(ecapa, speech, embedded):
    """The fast precision must not move a decision: scores agree within 0.01 on the dev trials.

    Every trial where the CPU computes bfloat16 natively (where the service would use it);
    elsewhere bfloat16 is emulated and minutes slower, so a sample of trials still shows the
    arithmetic agrees without holding up the suite.
    """
    from app.engines.speaker import SpeakerEncoder, fast_bfloat16
    from tests.conftest import MODELS_DIR

    # The session's encoder is one of the two precisions; load only the other one.
    other = "float32" if ecapa.precision == "bfloat16" else "bfloat16"
    loaded = SpeakerEncoder(MODELS_DIR / "spkrec-ecapa-voxceleb", threads=1, precision=other, runtime="torch")
    encoders = {ecapa.precision: ecapa, other: loaded}
    assert loaded.precision == other
    # Without native bfloat16, one trial of each kind (every tenth trial can all be of one kind):
    # emulated, each file takes seconds of CPU.
    trials = speech.trials if fast_bfloat16() else (
        [t for t in speech.trials if t[2]][:1] + [t for t in speech.trials if not t[2]][:1])
    files = sorted({f for enroll, test, _ in trials for f in [*enroll, test]})
    embed = {p: embedded if encoders[p] is ecapa else lambda f, p=p: encoders[p].embed(speech.load(f))
             for p in encoders}
    embeddings = [{f: embed[p](f) for f in files} for p in ("float32", "bfloat16")]
    worst = 0.0
    for enroll_files, test_file, _ in trials:
        scores = [cosine(centroid(np.stack([e[f] for f in enroll_files])), e[test_file]) for e in embeddings]
        worst = max(worst, abs(scores[0] - scores[1]))
    print(f"\nlargest score difference over {len(trials)} trials, bfloat16 vs float32: {worst:.4f}")
    assert len({same for _, _, same in trials}) == 2  # the sample holds both kinds of trial
    assert worst < 0.01


def test_the_onnx_export_scores_like_speechbrain_in_pytorch(ecapa, speech, embedded):
    """ONNX Runtime on the export made at `flask models fetch` gives PyTorch float32's scores.

    Both run float32 on any CPU, so scores agree to the third decimal and no decision moves.
    """
    from app.engines.speaker import SpeakerEncoder, onnx_export_current
    from app.gate.policy import Policy
    from tests.conftest import MODELS_DIR

    directory = MODELS_DIR / "spkrec-ecapa-voxceleb"
    assert onnx_export_current(directory), "flask models fetch exports ECAPA to ONNX"
    assert ecapa.runtime == "onnx"  # what the service loads when the export is there
    reference = SpeakerEncoder(directory, threads=1, precision="float32", runtime="torch")
    trials = speech.trials[::9]  # genuine and impostor trials over 16 of the 21 files
    assert len({same for _, _, same in trials}) == 2
    files = sorted({f for enroll, test, _ in trials for f in [*enroll, test]})
    clips = {f: speech.load(f) for f in files}
    onnx = {f: embedded(f) for f in files}
    torch = {f: reference.embed(a) for f, a in clips.items()}
    assert min(cosine(onnx[f], torch[f]) for f in files) > 0.9999
    threshold = Policy().threshold
    worst = 0.0
    for enroll_files, test_file, _ in trials:
        scores = [cosine(centroid(np.stack([e[f] for f in enroll_files])), e[test_file]) for e in (onnx, torch)]
        worst = max(worst, abs(scores[0] - scores[1]))
        assert (scores[0] >= threshold) == (scores[1] >= threshold)
    print(f"\nlargest score difference over {len(trials)} trials, ONNX Runtime vs PyTorch: {worst:.5f}")
    assert worst < 0.001
    # A lone call on every core (the pool idle) gives the embedding of a call on one.
    idle = ecapa.idle
    try:
        ecapa.idle = lambda: True
        wide = ecapa.embed(clips[files[0]])
    finally:
        ecapa.idle = idle
    assert cosine(wide, onnx[files[0]]) > 0.99999
    # Equal-length windows of several streams embed in one call exactly as one by one.
    windows = [clips[f][:32000] for f in files[:4]]
    together = ecapa.embed_many(windows)
    assert all(cosine(together[i], ecapa.embed(w)) > 0.99999 for i, w in enumerate(windows))


def test_the_windows_of_many_live_streams_share_one_model_call(engines, speech):
    """Eight streams' voice-check windows that wait together are embedded in one call, each as it would be alone."""
    import threading
    import time

    from app.engines.batch import WindowBatcher
    from app.engines.pool import InferencePool

    pool = InferencePool(1, 8)
    batcher = WindowBatcher(engines.speaker, pool)
    windows = [speech.load(u.file)[:32000] for u in speech.utterances[:8]]
    alone = [engines.speaker.embed(w) for w in windows]
    held = threading.Event()
    pool.submit(held.wait, 60)  # the one worker is busy, as under load: the windows queue up
    results: list = [None] * len(windows)

    def stream(index: int) -> None:
        results[index] = batcher.embed(windows[index])

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(windows))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(batcher._waiting) < len(windows) and time.monotonic() < deadline:
        time.sleep(0.01)
    held.set()
    for thread in threads:
        thread.join(60)
    pool.shutdown()
    assert batcher.windows == len(windows) and batcher.calls == 1
    assert all(cosine(r, a) > 0.99999 for r, a in zip(results, alone))
