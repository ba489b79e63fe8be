"""Turn uploaded or streamed audio bytes into 16 kHz mono float32 for the models."""
from __future__ import annotations

import functools
import io
import logging
import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import VoiceGateError

if TYPE_CHECKING:
    import av
    import torchaudio

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MIN_RATE = 8000
MAX_RATE = 192000
ENCODINGS = ("pcm_s16le", "pcm_f32le", "container")

_PCM_DTYPES = {"pcm_s16le": np.dtype("<i2"), "pcm_f32le": np.dtype("<f4")}
_ACCEPTED = "WAV, FLAC, Ogg/Opus, WebM/Opus, MP3 or raw pcm_s16le/pcm_f32le"
# A rate whose ratio to 16 kHz only reduces to huge integers would need a filter bank of
# about orig*new taps; above this many it is snapped to 100 Hz (at most 0.6 % pitch error).
_MAX_TAPS = 1 << 20
# Demuxers whose header duration is exact; others (e.g. MP3 without a Xing tag, ADTS)
# get it from the bitrate, which can be off several-fold, so it proves nothing.
_EXACT_DURATION = {"flac", "ogg", "matroska,webm", "mov,mp4,m4a,3gp,3g2,mj2"}


class AudioError(VoiceGateError):
    """Audio that cannot be used; ``code`` is a stable machine-readable reason."""


@dataclass(frozen=True)
class AudioFormat:
    """How incoming bytes are encoded."""

    encoding: str  # "pcm_s16le" | "pcm_f32le" | "container"
    sample_rate: int = SAMPLE_RATE  # pcm_* only
    channels: int = 1  # pcm_* only

    def validate(self) -> AudioFormat:
        """Raise AudioError unless the format is usable; return self."""
        if self.encoding not in ENCODINGS:
            raise AudioError("bad_format", f"Unknown encoding {self.encoding!r}; use one of {', '.join(ENCODINGS)}.")
        if self.encoding != "container":
            if not 1 <= self.channels <= 8:
                raise AudioError("bad_format", f"{self.channels} channels is not supported; send 1 to 8.")
            _check_rate(self.sample_rate)
        return self


@dataclass(frozen=True)
class AudioLimits:
    """Bounds on what one clip or stream may use."""

    max_bytes: int = 32 * 1024 * 1024
    max_seconds: float = 120.0


def decode(data: bytes, fmt: AudioFormat | None = None, limits: AudioLimits = AudioLimits()) -> np.ndarray:
    """Decode a whole clip to 16 kHz mono float32.

    ``fmt`` None or "container" lets FFmpeg sniff the container; pcm_* reads raw
    interleaved samples. Non-finite samples become 0 and all are clamped to [-1, 1].
    """
    fmt = (fmt or AudioFormat("container")).validate()
    if not data:
        raise AudioError("empty_audio", "The audio is empty (0 bytes); send a recording.")
    if len(data) > limits.max_bytes:
        raise AudioError("too_large", f"The audio is {len(data)} bytes; at most {limits.max_bytes} are accepted.")
    if fmt.encoding == "container":
        audio, rate = _decode_container(data, limits)
    else:
        frame = _PCM_DTYPES[fmt.encoding].itemsize * fmt.channels
        _check_seconds(len(data) / frame / fmt.sample_rate, limits)
        audio, rate = pcm_to_float(data, fmt.encoding, fmt.channels), fmt.sample_rate
    return resample(audio, rate)


def pcm_to_float(data: bytes, encoding: str, channels: int) -> np.ndarray:
    """Convert interleaved raw PCM bytes to mono float32 at the source rate.

    Channels are averaged, s16 is scaled by 1/32768, NaN/inf become 0, and the
    result is clamped to [-1, 1].
    """
    dtype = _PCM_DTYPES.get(encoding)
    if dtype is None:
        raise AudioError("bad_format", f"Unknown PCM encoding {encoding!r}; use pcm_s16le or pcm_f32le.")
    frame = dtype.itemsize * channels
    if len(data) % frame:
        raise AudioError(
            "truncated",
            f"Raw {encoding} with {channels} channel(s) must be a multiple of {frame} bytes; "
            f"got {len(data)}, so the last sample frame is cut off.",
        )
    samples = np.frombuffer(data, dtype).astype(np.float32).reshape(-1, channels)
    if encoding == "pcm_s16le":
        samples /= 32768.0
    return _sanitize(samples.mean(axis=1))


def resample(audio: np.ndarray, rate: int) -> np.ndarray:
    """Resample mono float32 audio from ``rate`` to 16 kHz with torchaudio."""
    _check_rate(rate)
    audio = np.asarray(audio, dtype=np.float32)
    if rate == SAMPLE_RATE or not len(audio):
        return audio
    import torch  # PyAV, torch and torchaudio load on first use: the app factory never imports them

    out = _resampler(rate)(torch.tensor(audio))
    # The sinc filter can overshoot full scale slightly.
    return np.clip(out.numpy(), -1.0, 1.0)


class PcmStream:
    """Turn raw PCM frames arriving in arbitrary sizes into 16 kHz mono float32 blocks.

    A partial sample frame is carried over to the next ``feed``; one still held
    at ``flush`` is dropped.
    """

    def __init__(self, fmt: AudioFormat, limits: AudioLimits = AudioLimits()):
        if fmt.validate().encoding == "container":
            raise AudioError("bad_format", "A stream takes raw pcm_s16le or pcm_f32le, not a container.")
        self._fmt = fmt
        self._limits = limits
        self._frame = _PCM_DTYPES[fmt.encoding].itemsize * fmt.channels
        self._partial = b""
        self._received = 0
        self._resampler = _ResampleStream(fmt.sample_rate)

    @property
    def seconds(self) -> float:
        """Total seconds of input received so far."""
        return self._received / self._frame / self._fmt.sample_rate

    def feed(self, data: bytes) -> np.ndarray:
        """Add raw PCM bytes; return the 16 kHz samples that became available (maybe none)."""
        # The stream never holds its input, so max_bytes bounds one chunk, not the total.
        if len(data) > self._limits.max_bytes:
            raise AudioError("too_large", f"A chunk of {len(data)} bytes is over {self._limits.max_bytes} bytes.")
        self._received += len(data)
        _check_seconds(self.seconds, self._limits)
        buffer = self._partial + data
        whole = len(buffer) - len(buffer) % self._frame
        self._partial = buffer[whole:]
        return self._resampler.push(pcm_to_float(buffer[:whole], self._fmt.encoding, self._fmt.channels))

    def flush(self) -> np.ndarray:
        """Return the samples still held back at the end of the stream."""
        if self._partial:
            logger.debug("Dropping %d bytes of an incomplete final sample frame", len(self._partial))
            self._partial = b""
        return self._resampler.finish()


class _ResampleStream:
    """Resample a growing signal so the joined output equals one ``resample`` of the whole.

    torchaudio's sinc resampler makes output block k (``new`` samples) as its kernel
    times input[k*orig - width, (k+1)*orig + width), zero-padded at both ends. Here the
    same product runs block by block, keeping ``width`` samples of left context and
    emitting a block once its right context has arrived. It runs in numpy because a
    small torch call per chunk costs milliseconds when torch's threads compete for CPU.
    """

    def __init__(self, rate: int):
        if rate == SAMPLE_RATE:
            # Identity: not even torchaudio is loaded, so a server fed 16 kHz never imports torch (500 MB).
            self._orig = self._new = 1
            self._kernel, width = np.ones((1, 1), np.float32), 0
        elif (resampler := _resampler(rate)).orig_freq // resampler.gcd == resampler.new_freq // resampler.gcd:
            self._orig = self._new = 1
            self._kernel, width = np.ones((1, 1), np.float32), 0
        else:
            self._orig, self._new = resampler.orig_freq // resampler.gcd, resampler.new_freq // resampler.gcd
            self._kernel, width = resampler.kernel[:, 0, :].numpy().T, resampler.width  # (taps, new)
        self._held = np.zeros(width, np.float32)  # the zero padding before the start
        self._received = 0
        self._emitted = 0

    def push(self, audio: np.ndarray) -> np.ndarray:
        """Add source-rate samples; return the 16 kHz samples now fully determined."""
        self._held = np.concatenate([self._held, audio])
        self._received += len(audio)
        blocks = (len(self._held) - len(self._kernel)) // self._orig + 1
        return self._emit(blocks, blocks * self._new)

    def finish(self) -> np.ndarray:
        """Return the remaining samples, as if the signal were followed by silence."""
        remaining = math.ceil(self._received * self._new / self._orig) - self._emitted
        blocks = -(-remaining // self._new)
        missing = (blocks - 1) * self._orig + len(self._kernel) - len(self._held)
        if missing > 0:
            self._held = np.concatenate([self._held, np.zeros(missing, np.float32)])
        return self._emit(blocks, remaining)

    def _emit(self, blocks: int, count: int) -> np.ndarray:
        if blocks <= 0:
            return np.zeros(0, np.float32)
        windows = np.lib.stride_tricks.sliding_window_view(self._held, len(self._kernel))[:: self._orig][:blocks]
        out = (windows @ self._kernel).ravel()[:count]
        self._held = self._held[blocks * self._orig :]
        self._emitted += count
        return np.clip(out, -1.0, 1.0)


def _decode_container(data: bytes, limits: AudioLimits) -> tuple[np.ndarray, int]:
    """Decode the first audio stream of a container to mono float32 at its own rate."""
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except av.error.FFmpegError as exc:
        raise AudioError("undecodable", f"The audio could not be read ({exc.strerror}); send {_ACCEPTED}.") from exc
    with container:
        if not container.streams.audio:
            raise AudioError("bad_format", f"The file has no audio track; send {_ACCEPTED}.")
        stream = container.streams.audio[0]
        rate = stream.sample_rate or 0
        _check_rate(rate)
        promised = _promised_seconds(data, container, stream)
        if promised is not None:
            _check_seconds(promised, limits)
        audio = _decode_stream(container, stream, rate, limits)
    if not len(audio):
        raise AudioError("empty_audio", "The file contains no audio samples; send a recording.")
    got = len(audio) / rate
    if promised is not None and got < 0.9 * promised and promised - got > 0.1:
        raise AudioError(
            "truncated", f"The file is cut short: its header promises {promised:.2f} s but only {got:.2f} s decode."
        )
    return audio, rate


def _decode_stream(
    container: av.container.InputContainer, stream: av.AudioStream, rate: int, limits: AudioLimits
) -> np.ndarray:
    """Decode ``stream`` to mono float32, stopping once it passes ``limits.max_seconds``."""
    import av

    chunks: list[np.ndarray] = []
    count = 0
    converter, shape = None, None
    try:
        for packet in container.demux(stream):
            for frame in packet.decode():
                # Chained streams may change layout or format mid-way; the converter cannot.
                if (frame.format.name, frame.layout.name, frame.sample_rate) != shape:
                    shape = (frame.format.name, frame.layout.name, frame.sample_rate)
                    converter = av.AudioResampler(format="fltp", rate=rate)
                for out in converter.resample(frame):
                    chunks.append(out.to_ndarray().mean(axis=0, dtype=np.float32))
                    count += out.samples
                _check_seconds(count / rate, limits)
    except av.error.FFmpegError as exc:
        if not count:
            raise AudioError("undecodable", f"The audio could not be decoded ({exc.strerror}).") from exc
        # A cut-off last packet is common; the truncation check judges what was decoded.
        logger.info("Stopped decoding after %.2f s at bad data: %s", count / rate, exc)
    return _sanitize(np.concatenate(chunks)) if chunks else np.zeros(0, np.float32)


def _promised_seconds(data: bytes, container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    """Return the duration the header declares, or None where it declares none reliably."""
    import av

    name = container.format.name
    if name == "wav":
        return _wav_seconds(data)
    if name not in _EXACT_DURATION and not (name == "mp3" and _has_xing(data)):
        return None
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / av.time_base if container.duration else None


def _wav_seconds(data: bytes) -> float | None:
    """Return the duration a RIFF/WAVE header's data chunk declares."""
    # FFmpeg clamps a WAV's duration to the bytes present, which hides truncation.
    pos, rate, align = 12, 0, 0
    while pos + 8 <= len(data):
        chunk, size = struct.unpack_from("<4sI", data, pos)
        if chunk == b"fmt " and pos + 22 <= len(data):
            rate, _, align = struct.unpack_from("<IIH", data, pos + 12)
        elif chunk == b"data":
            # Writers that cannot seek back leave 0 or a huge placeholder size.
            return size / align / rate if rate and align and 0 < size < 0x7FFF0000 else None
        pos += 8 + size + (size & 1)
    return None


def _has_xing(data: bytes) -> bool:
    """Tell whether an MP3's first frame carries a Xing/Info/VBRI length tag."""
    start = 0
    if data[:3] == b"ID3" and len(data) >= 10:
        start = 10 + sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(data[6:10]))
    head = data[start : start + 64]
    return any(tag in head for tag in (b"Xing", b"Info", b"VBRI"))


@functools.lru_cache(maxsize=8)
def _resampler(rate: int) -> torchaudio.transforms.Resample:
    """Return a cached torchaudio resampler from ``rate`` (snapped if needed) to 16 kHz."""
    import torchaudio

    gcd = math.gcd(rate, SAMPLE_RATE)
    if (rate // gcd) * (SAMPLE_RATE // gcd) > _MAX_TAPS:
        rate = round(rate / 100) * 100
    return torchaudio.transforms.Resample(rate, SAMPLE_RATE)


def _sanitize(audio: np.ndarray) -> np.ndarray:
    """Replace NaN/inf with 0 and clamp to [-1, 1], in place."""
    np.nan_to_num(audio, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(audio, -1.0, 1.0, out=audio)


def _check_rate(rate: int) -> None:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError("bad_sample_rate", f"A rate of {rate} Hz is not supported; use {MIN_RATE} to {MAX_RATE} Hz.")


def _check_seconds(seconds: float, limits: AudioLimits) -> None:
    if seconds > limits.max_seconds:
        raise AudioError("too_long", f"The audio is over {limits.max_seconds:g} s ({seconds:.1f} s); send less.")
