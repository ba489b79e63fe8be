"""ECAPA-TDNN's last part in numpy: attentive statistics pooling of the frame features, and the embedding layer.

The weights come from SpeechBrain at export (``export``). In numpy, the part of the attention
that looks at each frame alone (``project``) can be kept for the frames of an utterance's
beginning, so that after its end only the new frames need it: the rest of the pooling looks at
the whole utterance (its mean and spread) and is cheap.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# SpeechBrain's floor under a variance before its square root.
EPS = 1e-12


@dataclass(frozen=True)
class Pooling:
    """Attentive statistics pooling with global context (SpeechBrain's AttentiveStatisticsPooling), then
    its batch norm and the linear layer to the embedding, as matrices.

    ``frame``, ``mean``, ``spread`` (attention × channels) split the attention's first layer by
    its input (the frames, their mean, their standard deviation); ``scale``/``shift`` are its
    batch norm; ``attend`` and ``attend_bias`` its second layer; ``out`` and ``out_bias`` the
    embedding layer with the pooled statistics' batch norm folded in.
    """

    frame: np.ndarray
    mean: np.ndarray
    spread: np.ndarray
    bias: np.ndarray
    scale: np.ndarray
    shift: np.ndarray
    attend: np.ndarray
    attend_bias: np.ndarray
    out: np.ndarray
    out_bias: np.ndarray

    @classmethod
    def load(cls, path: Path) -> Pooling:
        """Read the matrices that ``save`` wrote."""
        with np.load(path) as data:
            return cls(**{name: data[name].astype(np.float32) for name in cls.__dataclass_fields__})

    def save(self, path: Path) -> None:
        """Write the matrices (weights only)."""
        with open(path, "wb") as handle:
            np.savez(handle, **{name: getattr(self, name) for name in self.__dataclass_fields__})

    def project(self, frames: np.ndarray) -> np.ndarray:
        """Return the attention's view of each frame alone (attention × frames) for frame features (channels × frames)."""
        return self.frame @ frames

    def __call__(self, frames: np.ndarray, projected: np.ndarray | None = None) -> np.ndarray:
        """Return the embedding (192, not normalised) of one clip's frame features (channels × frames).

        ``projected``: ``project(frames)``, when it was kept from earlier calls.
        """
        projected = self.project(frames) if projected is None else projected
        mean, spread = _statistics(frames)
        context = self.mean @ mean + self.spread @ spread + self.bias
        hidden = np.tanh(np.maximum(projected + context[:, None], 0.0) * self.scale[:, None] + self.shift[:, None])
        # In place: after a login's last word this is part of the wait, on channels × frames.
        weights = self.attend @ hidden
        weights += self.attend_bias[:, None]
        weights -= weights.max(axis=1, keepdims=True)
        np.exp(weights, out=weights)
        weights /= weights.sum(axis=1, keepdims=True)
        pooled_mean, pooled_spread = _statistics(frames, weights)
        return self.out @ np.concatenate([pooled_mean, pooled_spread]) + self.out_bias


def _statistics(frames: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return the weighted mean and standard deviation of each channel over the frames (None: weighed alike)."""
    mean = frames.mean(axis=1) if weights is None else np.einsum("ij,ij->i", frames, weights)
    squares = frames - mean[:, None]
    squares *= squares
    variance = squares.mean(axis=1) if weights is None else np.einsum("ij,ij->i", weights, squares)
    return mean, np.sqrt(np.maximum(variance, EPS))


def export(network) -> Pooling:
    """Return the pooling of SpeechBrain's ECAPA_TDNN ``network`` (its ``asp``, ``asp_bn`` and ``fc``) as matrices."""

    def weights(conv):  # SpeechBrain's Conv1d around torch's, kernel size 1
        return conv.conv.weight.detach().numpy()[:, :, 0], conv.conv.bias.detach().numpy()

    def affine(norm):  # SpeechBrain's BatchNorm1d around torch's, in evaluation
        norm = norm.norm
        scale = norm.weight.detach().numpy() / np.sqrt(norm.running_var.numpy() + norm.eps)
        return scale, norm.bias.detach().numpy() - norm.running_mean.numpy() * scale

    asp = network.asp
    first, bias = weights(asp.tdnn.conv)
    channels = first.shape[1] // 3
    scale, shift = affine(asp.tdnn.norm)
    attend, attend_bias = weights(asp.conv)
    out, out_bias = weights(network.fc)
    pooled_scale, pooled_shift = affine(network.asp_bn)
    return Pooling(first[:, :channels], first[:, channels:2 * channels], first[:, 2 * channels:], bias, scale, shift,
                   attend, attend_bias, (out * pooled_scale[None, :]).astype(np.float32),
                   (out @ pooled_shift + out_bias).astype(np.float32))
