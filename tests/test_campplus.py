"""CAM++, the second speaker model, on its real weights and real dev speech: the network, its features, its export."""
from __future__ import annotations

import numpy as np
import pytest

from app.engines.speaker import centroid, cosine
from tests.conftest import MODELS_DIR

DIRECTORY = MODELS_DIR / "campplus-zh-en-common"


@pytest.fixture(scope="module")
def network():
    """Our CAM++ network with the shipped state dict, on PyTorch float32."""
    from app.engines import campplus

    return campplus.load(DIRECTORY)


@pytest.fixture(scope="module")
def encoder():
    """CAM++ as the server runs it: numpy fbank and the ONNX export (made by `flask models fetch`)."""
    from app.engines.campplus_encoder import CampplusEncoder, onnx_export_current

    assert onnx_export_current(DIRECTORY), "flask models fetch exports CAM++ to ONNX"
    return CampplusEncoder(DIRECTORY, threads=1)


def test_the_network_takes_every_tensor_of_the_state_dict(network):
    import torch

    state = torch.load(DIRECTORY / "campplus_cn_en_common.pt", map_location="cpu", weights_only=True)
    ours = network.state_dict()
    # load() is strict; say it here too, with the shapes.
    assert set(ours) == set(state) and len(state) == 937
    assert all(ours[name].shape == tensor.shape for name, tensor in state.items())
    assert sum(p.numel() for p in network.parameters()) == 6_848_544


def test_numpy_fbank_is_torchaudio_kaldi_fbank(speech):
    from app.engines import campplus
    from app.engines.campplus_encoder import KaldiFbank

    audio = speech.load("wav/ljspeech/LJ001-0004.wav")
    ours, theirs = KaldiFbank()(audio[None])[0], campplus.fbank(audio).numpy()
    assert ours.shape == theirs.shape == (1 + (audio.size - 400) // 160, 80)
    # torchaudio computes in float32, numpy in float64: log energies of quiet bands differ most.
    assert np.abs(ours - theirs).mean() < 1e-4 and np.abs(ours - theirs).max() < 1e-2


def test_float64_run_gives_the_float32_embedding(network, speech):
    """A second arithmetic path: the same module in float64 lands on the same embedding."""
    import torch

    from app.engines import campplus

    exact = campplus.load(DIRECTORY, dtype=torch.float64)
    audio = speech.load("wav/vctk-p287/p287_004.wav")
    assert cosine(campplus.embed(network, audio), campplus.embed(exact, audio)) > 0.9999


def test_onnx_export_scores_like_pytorch(network, encoder, speech):
    from app.engines import campplus

    for utterance in speech.utterances[::7]:  # one of each of three speakers, short and long
        audio = speech.load(utterance.file)
        onnx = encoder.embed(audio)
        assert onnx.dtype == np.float32 and abs(float(np.linalg.norm(onnx)) - 1) < 1e-5
        assert cosine(onnx, campplus.embed(network, audio)) >= 0.9999


def test_same_speaker_trials_score_far_above_different_speaker_ones(encoder, speech):
    files = sorted({f for enroll, test, _ in speech.trials for f in [*enroll, test]})
    embeddings = {f: encoder.embed(speech.load(f)) for f in files}
    genuine, impostor = [], []
    for enroll_files, test_file, same in speech.trials:
        score = cosine(centroid(np.stack([embeddings[f] for f in enroll_files])), embeddings[test_file])
        (genuine if same else impostor).append(score)
    print(f"\nCAM++ same speaker {min(genuine):.3f} .. {max(genuine):.3f}, "
          f"different {min(impostor):.3f} .. {max(impostor):.3f}")
    assert len(genuine) == len(impostor) == 40
    assert np.mean(genuine) - np.mean(impostor) > 0.4
    assert min(genuine) > max(impostor)


def test_embed_many_matches_embed_and_refuses_too_little_audio(encoder, speech):
    audio = speech.load(speech.utterances[0].file)
    together = encoder.embed_many([audio[:32000], audio[32000:64000]])
    assert cosine(together[0], encoder.embed(audio[:32000])) > 0.9999
    assert cosine(together[1], encoder.embed(audio[32000:64000])) > 0.9999
    with pytest.raises(ValueError):
        encoder.embed(audio[:1000])
