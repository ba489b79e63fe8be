"""CAM++ (3D-Speaker), the second speaker model, as a PyTorch network; and its export to ONNX.

Written from the paper (Wang et al., "CAM++: A Fast and Efficient Network for Speaker
Verification Using Context-Aware Masking", Interspeech 2023) to the shapes and names of the
shipped state dict (``speech_campplus_sv_zh_en_16k-common_advanced``), which it loads strictly:

- a front-end convolution module (FCM): a 2D convolution and two stages of two residual blocks
  that halve the frequency axis (80 -> 20 bands), a last convolution that halves it again, the
  32 channels × 10 bands then read as 320 channels per frame;
- a TDNN layer (kernel 5, stride 2: 20 ms frames), then three densely connected TDNN blocks
  (12, 24, 16 layers, each adding 32 channels). Each layer's output is masked by a context-aware
  mask (CAM) computed from the utterance's mean plus the mean of its 100-frame segment;
  transit layers halve the channels after each block;
- mean and standard deviation over time, and a dense layer to the 192-dim embedding.

Its input is ``fbank`` below. The server runs the ONNX export (campplus_encoder.py) and so
needs no torch; this module is for the export, its checks, and the benchmarks.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import modelstore
from .campplus_encoder import (EMBEDDING_DIM, EXPORT_FORMAT, MIN_SAMPLES, ONNX_ABOUT, ONNX_FILE, WEIGHTS_FILE, KaldiFbank,
                               onnx_session)
from .speaker import cosine, normalise, probe_signals

# Frames per segment of the CAM layers' segment pooling (the paper's 100).
SEGMENT = 100
# An export whose embeddings stray further than this from PyTorch's (cosine) is not kept.
ONNX_MIN_COSINE = 0.9999


def _bn_relu(channels: int) -> nn.Sequential:
    """Return batch norm then ReLU, named as the state dict names them (``….batchnorm``)."""
    return nn.Sequential(OrderedDict(batchnorm=nn.BatchNorm1d(channels), relu=nn.ReLU()))


class ResBlock(nn.Module):
    """A 2D residual block of the FCM; ``stride`` applies to the frequency axis only."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        # A projection on the skip path where the block changes the shape.
        self.shortcut = (nn.Sequential(nn.Conv2d(channels, channels, 1, stride=(stride, 1), bias=False),
                                       nn.BatchNorm2d(channels)) if stride != 1 else nn.Sequential())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class FCM(nn.Module):
    """Front-end convolution module: (batch, 80, frames) -> (batch, 320, frames)."""

    def __init__(self, channels: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.layer1 = nn.Sequential(ResBlock(channels, 2), ResBlock(channels, 1))
        self.layer2 = nn.Sequential(ResBlock(channels, 2), ResBlock(channels, 1))
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        out = self.layer2(self.layer1(out))
        out = F.relu(self.bn2(self.conv2(out)))
        return out.flatten(1, 2)  # channels × bands as the channels of each frame


def segment_means(x: torch.Tensor) -> torch.Tensor:
    """Return, at every frame, the mean of its SEGMENT-frame segment (the last one may be shorter).

    Padding and reshaping rather than avg_pool1d(ceil_mode=True), whose shorter last window
    exporters and runtimes do not all divide alike; the counts come from the same sums over ones.
    """
    frames = x.shape[-1]
    pad = (SEGMENT - frames % SEGMENT) % SEGMENT
    sums = F.pad(x, (0, pad)).unflatten(-1, (-1, SEGMENT)).sum(-1)
    counts = F.pad(torch.ones_like(x[:1, :1]), (0, pad)).unflatten(-1, (-1, SEGMENT)).sum(-1)
    means = sums / counts
    # Broadcasting, not expand(): the export then keeps the number of frames free.
    return (means.unsqueeze(-1) * torch.ones(SEGMENT, dtype=x.dtype)).flatten(-2)[..., :frames]


class CAMLayer(nn.Module):
    """A local convolution whose output is masked by the context: utterance mean plus segment mean."""

    def __init__(self, channels: int, out_channels: int, dilation: int):
        super().__init__()
        self.linear_local = nn.Conv1d(channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.linear1 = nn.Conv1d(channels, channels // 2, 1)
        self.linear2 = nn.Conv1d(channels // 2, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = x.mean(-1, keepdim=True) + segment_means(x)
        mask = torch.sigmoid(self.linear2(F.relu(self.linear1(context))))
        return self.linear_local(x) * mask


class DenseLayer(nn.Module):
    """One D-TDNN layer: BN-ReLU, a 1×1 bottleneck, BN-ReLU, then the CAM layer (32 new channels)."""

    def __init__(self, in_channels: int, dilation: int, bottleneck: int = 128, growth: int = 32):
        super().__init__()
        self.nonlinear1 = _bn_relu(in_channels)
        self.linear1 = nn.Conv1d(in_channels, bottleneck, 1, bias=False)
        self.nonlinear2 = _bn_relu(bottleneck)
        self.cam_layer = CAMLayer(bottleneck, growth, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class DenseBlock(nn.Module):
    """Densely connected layers: each sees every earlier output, concatenated with the input."""

    def __init__(self, layers: int, in_channels: int, dilation: int, growth: int = 32):
        super().__init__()
        for index in range(layers):
            self.add_module(f"tdnnd{index + 1}", DenseLayer(in_channels + index * growth, dilation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            x = torch.cat([x, layer(x)], dim=1)
        return x


class Transit(nn.Module):
    """BN-ReLU then a 1×1 convolution that halves the channels between blocks."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.nonlinear = _bn_relu(in_channels)
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class TDNN(nn.Module):
    """The first frame layer: kernel 5, stride 2 in time, then BN-ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, 5, stride=2, padding=2, bias=False)
        self.nonlinear = _bn_relu(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


class StatsPool(nn.Module):
    """Mean and (unbiased) standard deviation of each channel over the frames."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(-1)
        variance = (x - mean.unsqueeze(-1)).square().sum(-1) / (x.shape[-1] - 1)
        return torch.cat([mean, variance.sqrt()], dim=-1)


class Embedding(nn.Module):
    """The last layer: a 1×1 convolution on the pooled statistics, then batch norm without scale or shift."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.nonlinear = nn.Sequential(OrderedDict(batchnorm=nn.BatchNorm1d(out_channels, affine=False)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x.unsqueeze(-1)).squeeze(-1))


class CAMPPlus(nn.Module):
    """CAM++: mean-normalised fbank (batch, frames, 80) -> embedding (batch, 192), not normalised."""

    def __init__(self, bands: int = 80, channels: int = 128):
        super().__init__()
        self.head = FCM()
        xvector = {"tdnn": TDNN(32 * (bands // 8), channels)}
        for index, (layers, dilation) in enumerate(((12, 1), (24, 2), (16, 2)), start=1):
            xvector[f"block{index}"] = DenseBlock(layers, channels, dilation)
            channels += layers * 32
            xvector[f"transit{index}"] = Transit(channels, channels // 2)
            channels //= 2
        xvector["out_nonlinear"] = _bn_relu(channels)
        xvector["stats"] = StatsPool()
        xvector["dense"] = Embedding(channels * 2, EMBEDDING_DIM)
        self.xvector = nn.Sequential(OrderedDict(xvector))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.xvector(self.head(features.transpose(1, 2)))


def load(model_dir: str | os.PathLike, dtype: torch.dtype = torch.float32) -> CAMPPlus:
    """Return CAM++ with the weights in ``model_dir`` loaded strictly, in evaluation mode."""
    state = torch.load(Path(model_dir) / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    network = CAMPPlus()
    network.load_state_dict(state, strict=True)
    return network.to(dtype).eval()


def fbank(audio: np.ndarray) -> torch.Tensor:
    """Return CAM++'s input for 16 kHz mono float32 audio: Kaldi fbank (80 bands, no dither), mean-normalised."""
    import torchaudio

    features = torchaudio.compliance.kaldi.fbank(torch.from_numpy(np.asarray(audio, dtype=np.float32))[None],
                                                 num_mel_bins=80, sample_frequency=16000, dither=0.0)
    return features - features.mean(0, keepdim=True)


def embed(network: CAMPPlus, audio: np.ndarray) -> np.ndarray:
    """Return the unit-length embedding of 16 kHz audio with ``network`` on PyTorch (torchaudio's fbank)."""
    if audio.ndim != 1 or audio.size < MIN_SAMPLES:
        raise ValueError(f"embed() takes a 1-D array of at least {MIN_SAMPLES} samples at 16 kHz")
    dtype = next(network.parameters()).dtype
    with torch.inference_mode():
        return normalise(network(fbank(audio)[None].to(dtype))[0].double().numpy())


def export_onnx(model_dir: str | os.PathLike, log=print) -> Path:
    """Export CAM++ beside its weights to ONNX (fbank -> embedding), checked against PyTorch; return the file.

    The export is kept only when ONNX Runtime on numpy's fbank gives PyTorch's embeddings on
    torchaudio's fbank (cosine at least ONNX_MIN_COSINE) for the probe signals.
    """
    from .campplus_encoder import onnx_export_current

    directory = Path(model_dir)
    target = directory / ONNX_FILE
    if onnx_export_current(directory):
        log(f"campplus: ONNX export present in {directory}")
        return target
    network = load(directory)
    partial = target.with_name(target.name + ".partial")
    torch.onnx.export(network, (torch.randn(1, 250, 80),), str(partial), input_names=["features"],
                      output_names=["embedding"], opset_version=17, dynamo=False,
                      dynamic_axes={"features": {0: "batch", 1: "frames"}, "embedding": {0: "batch"}})
    try:
        worst = _worst_cosine(network, onnx_session(partial, 1))
    except Exception:
        partial.unlink()
        raise
    if worst < ONNX_MIN_COSINE:
        partial.unlink()
        raise modelstore.ModelError(f"the ONNX export of CAM++ differs from PyTorch (cosine {worst:.6f}); not kept")
    os.replace(partial, target)
    about = {"source_sha256": modelstore.MODELS["campplus"].sha256[WEIGHTS_FILE], "format": EXPORT_FORMAT,
             "torch": torch.__version__, "opset": 17, "min_cosine_to_pytorch": round(worst, 7)}
    (directory / ONNX_ABOUT).write_text(json.dumps(about, indent=1) + "\n")
    log(f"campplus: exported to ONNX in {directory} (cosine to PyTorch {worst:.6f})")
    return target


def _worst_cosine(network: CAMPPlus, session) -> float:
    """Return the lowest cosine between ``session`` on numpy's fbank and ``network`` on torchaudio's, over the probes.

    The probes cross the segment pooling's edges (100 frames of 20 ms) at several lengths.
    """
    features, worst = KaldiFbank(), 1.0
    longest = probe_signals()[-1]
    for audio in [*probe_signals(), longest[:32000], longest[:64321]]:
        if audio.size >= MIN_SAMPLES:
            exported = session.run(None, {"features": features(audio[None])})[0][0]
            worst = min(worst, cosine(embed(network, audio), exported))
    return worst
