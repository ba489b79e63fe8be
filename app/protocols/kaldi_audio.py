"""Audio as kaldi-gstreamer-server clients send it: GStreamer caps, and bytes that carry their own header.

``parse_caps`` reads the ``content-type`` parameter; ``AudioIntake`` turns the bytes of one
request into 16 kHz mono float32 as they arrive. Raw PCM and PCM WAV stream block by block;
other containers (FLAC, Ogg, MP3, WebM) are kept and decoded whole at the end.
"""
from __future__ import annotations

import logging
import re
import struct

import numpy as np

from ..audio.decode import AudioError, AudioFormat, AudioLimits, PcmStream, decode

logger = logging.getLogger(__name__)

# What a client means when it sends no content-type at all (kaldi-gstreamer-server's default).
DEFAULT_FORMAT = AudioFormat("pcm_s16le", 16000, 1)
_RAW_TYPES = ("audio/x-raw", "audio/x-raw-int", "audio/x-raw-float")
_CONTAINER_TYPES = ("audio/x-flac", "audio/flac", "audio/x-wav", "audio/wav", "audio/wave", "audio/ogg",
                    "application/ogg", "audio/x-opus+ogg", "audio/mpeg", "audio/webm", "audio/x-matroska")
_SAMPLE_FORMATS = {"S16LE": "pcm_s16le", "F32LE": "pcm_f32le"}
_FIELD = re.compile(r"^\s*([\w-]+)\s*=\s*(?:\(\s*\w+\s*\))?\s*\"?([^\"]*?)\"?\s*$")
# A WAV header longer than this (odd metadata chunks first) is left to FFmpeg.
_MAX_HEADER = 64 * 1024
_WAV_FORMATS = {(1, 16): "pcm_s16le", (3, 32): "pcm_f32le"}
_WAVE_EXTENSIBLE = 0xFFFE


def parse_caps(value: str | None) -> AudioFormat | None:
    """Return the format a ``content-type`` parameter names; None when the bytes must tell.

    Absent means 16 kHz mono S16LE; empty (or a container type) means the bytes carry
    their own header. Raises AudioError ``bad_content_type`` for anything else.
    """
    if value is None:
        return DEFAULT_FORMAT
    parts = [part for part in re.split(r"[,;]", value) if part.strip()]
    if not parts:
        return None
    media = parts[0].strip().lower()
    fields = {}
    for part in parts[1:]:
        match = _FIELD.match(part)
        if match is None:
            raise AudioError("bad_content_type", f"cannot read {part.strip()!r} in content-type {value!r}; "
                             "expected key=(type)value fields as GStreamer caps have")
        fields[match.group(1).lower()] = match.group(2).strip()
    if media in _CONTAINER_TYPES:
        return None
    if media not in _RAW_TYPES:
        raise AudioError("bad_content_type", f"unsupported content-type {media!r}: send audio/x-raw "
                         "(S16LE or F32LE), audio/x-flac, or an empty content-type with a WAV, FLAC, Ogg or MP3 file")
    if fields.get("layout", "interleaved").lower() != "interleaved":
        raise AudioError("bad_content_type", "only interleaved raw audio is supported")
    sample_format = fields.get("format", "F32LE" if media == "audio/x-raw-float" else "S16LE").upper()
    if sample_format not in _SAMPLE_FORMATS:
        raise AudioError("bad_content_type", f"raw format {sample_format!r} is not supported; use S16LE or F32LE")
    try:
        rate, channels = int(fields.get("rate", 16000)), int(fields.get("channels", 1))
    except ValueError:
        raise AudioError("bad_content_type", "rate and channels must be integers") from None
    return AudioFormat(_SAMPLE_FORMATS[sample_format], rate, channels).validate()


def has_header(data: bytes) -> bool:
    """Return True when ``data`` starts like a WAV, FLAC, Ogg, MP3 or Matroska/WebM file."""
    return data[:4] in (b"RIFF", b"fLaC", b"OggS", b"\x1aE\xdf\xa3") or data[:3] == b"ID3"


class AudioIntake:
    """Turn one request's bytes into 16 kHz mono float32 blocks.

    ``fmt`` raw PCM streams at once; None sniffs the first bytes: a PCM WAV streams
    after its header, anything else is kept until ``finish`` and decoded by FFmpeg.
    """

    def __init__(self, fmt: AudioFormat | None, limits: AudioLimits):
        self.limits = limits
        self._stream = PcmStream(fmt, limits) if fmt is not None else None
        self._sniffing = fmt is None
        self._held = bytearray()
        self._data_left: int | None = None  # bytes of a WAV data chunk still to come, when it says

    @property
    def streaming(self) -> bool:
        """Return True once the bytes are known to be streamable PCM."""
        return self._stream is not None

    def feed(self, data: bytes) -> np.ndarray:
        """Take more bytes; return the samples they complete (maybe none)."""
        if self._stream is not None:
            return self._stream.feed(self._within_data(data))
        if len(self._held) + len(data) > self.limits.max_bytes:
            raise AudioError("too_large", f"at most {self.limits.max_bytes} bytes of audio per request")
        self._held += data
        if self._sniffing:
            return self._sniff()
        return np.zeros(0, np.float32)

    def finish(self) -> np.ndarray:
        """Return the rest of the audio: what a stream holds back, or the whole decoded file."""
        if self._stream is not None:
            return self._stream.flush()
        if not self._held:
            return np.zeros(0, np.float32)
        return decode(bytes(self._held), None, self.limits)

    def _sniff(self) -> np.ndarray:
        header = bytes(self._held[:12])
        if len(header) < 12:
            return np.zeros(0, np.float32)
        if header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            self._sniffing = False  # FLAC, Ogg, MP3, WebM...: decoded whole at the end
            return np.zeros(0, np.float32)
        found = _wav_layout(bytes(self._held))
        if found is None:
            if len(self._held) > _MAX_HEADER:
                self._sniffing = False
            return np.zeros(0, np.float32)
        fmt, offset, size = found
        self._sniffing = False
        if fmt is None:  # 8- or 24-bit PCM, A-law...: FFmpeg reads it at the end
            return np.zeros(0, np.float32)
        logger.debug("streaming a WAV header's %s at %d Hz, %d channel(s)", fmt.encoding, fmt.sample_rate, fmt.channels)
        self._stream = PcmStream(fmt.validate(), self.limits)
        # Recorders that cannot seek back write 0 or a huge placeholder as the data size.
        self._data_left = size if 0 < size < 0x7FFF0000 else None
        rest, self._held = bytes(self._held[offset:]), bytearray()
        return self._stream.feed(self._within_data(rest))

    def _within_data(self, data: bytes) -> bytes:
        """Drop bytes past the WAV data chunk (trailing metadata chunks are not audio)."""
        if self._data_left is None:
            return data
        data, self._data_left = data[: self._data_left], max(0, self._data_left - len(data))
        return data


def _wav_layout(data: bytes) -> tuple[AudioFormat | None, int, int] | None:
    """Return (format or None if not streamable, offset of the samples, data size) once the header is in."""
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        chunk, size = struct.unpack_from("<4sI", data, pos)
        if chunk == b"fmt ":
            if pos + 8 + 16 > len(data):
                return None
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, pos + 8)
            if tag == _WAVE_EXTENSIBLE and size >= 40:
                if pos + 8 + 26 > len(data):
                    return None
                tag = struct.unpack_from("<H", data, pos + 8 + 24)[0]  # the sub-format GUID's first two bytes
            encoding = _WAV_FORMATS.get((tag, bits))
            fmt = AudioFormat(encoding, rate, channels) if encoding else None
            if fmt is not None:
                try:
                    fmt.validate()
                except AudioError:
                    fmt = None  # let the whole-file decoder give its own clear error
        elif chunk == b"data":
            return fmt, pos + 8, size
        pos += 8 + size + (size & 1)
    return None
