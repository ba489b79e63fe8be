"""app.audio.decode on real speech: every accepted format decodes alike, every failure has its code."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import torchaudio

from app.audio.decode import (
    SAMPLE_RATE,
    AudioError,
    AudioFormat,
    AudioLimits,
    PcmStream,
    decode,
    pcm_to_float,
    resample,
)

SPEECH_DEV = Path(
    os.environ.get("VOICEGATE_SPEECH_DEV", Path(__file__).resolve().parents[1].parent / "shared/data/speech-dev")
)
SPEECH = SPEECH_DEV / "wav/ljspeech/LJ001-0004.wav"  # 16 kHz mono s16, 5.1 s

Encode = Callable[..., bytes]


@pytest.fixture(scope="module")
def speech_wav() -> bytes:
    """The original WAV's bytes."""
    if not SPEECH.is_file():
        pytest.fail(f"the dev speech set is not at {SPEECH_DEV}; set VOICEGATE_SPEECH_DEV")
    return SPEECH.read_bytes()


@pytest.fixture(scope="module")
def reference(speech_wav: bytes) -> np.ndarray:
    """The original clip decoded: what every other encoding should come back as."""
    return decode(speech_wav)


@pytest.fixture(scope="module")
def encode(tmp_path_factory: pytest.TempPathFactory) -> Encode:
    """Return encode(suffix, *ffmpeg_output_args, source_args=...) -> bytes of the file ffmpeg wrote."""
    assert shutil.which("ffmpeg"), "these tests need ffmpeg on PATH (apt-get install ffmpeg)"
    folder = tmp_path_factory.mktemp("encoded")
    count = iter(range(1_000_000))

    def run(suffix: str, *args: str, source: tuple[str, ...] = ("-i", str(SPEECH))) -> bytes:
        out = folder / f"clip{next(count)}{suffix}"
        cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *source, *args, str(out)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
        return out.read_bytes()

    return run


def aligned_correlation(ref: np.ndarray, got: np.ndarray, max_lag: int = 1600) -> tuple[float, int]:
    """Return the normalised correlation of ``got`` with ``ref`` at the best lag within 100 ms, and that lag."""
    size = 1 << (len(ref) + len(got)).bit_length()
    cross = np.fft.irfft(np.fft.rfft(got, size) * np.conj(np.fft.rfft(ref, size)), size)
    lags = np.r_[0 : max_lag + 1, -max_lag:0]
    lag = int(lags[np.argmax(cross[lags])])  # got[i + lag] lines up with ref[i]
    a, b = (ref, got[lag:]) if lag >= 0 else (ref[-lag:], got)
    n = min(len(a), len(b))
    a, b = a[:n].astype(np.float64), b[:n].astype(np.float64)
    return float(a @ b / np.sqrt((a @ a) * (b @ b))), lag


def lowpass_4k(audio: np.ndarray) -> np.ndarray:
    """Band-limit 16 kHz audio to what an 8 kHz recording can hold."""
    down = torchaudio.functional.resample(torch.from_numpy(audio), SAMPLE_RATE, 8000)
    return resample(down.numpy(), 8000)


# name, file suffix, ffmpeg output args, AudioFormat for raw input, minimum correlation.
# Lossless files match exactly; PCM that ffmpeg resampled differs only by ffmpeg's vs
# torchaudio's filter (measured 0.998, and 0.9999 at 8 kHz against a low-passed reference).
# Lossy bounds sit under what was measured (Ogg/Opus 0.990, WebM/Opus 0.976 at 32 kb/s,
# MP3 0.992 at 64 kb/s; a half-sample offset the integer-lag alignment cannot undo already
# costs ~0.035). Decoding at a wrong rate scores ~0.06, so they still catch real faults.
FORMATS = [
    ("wav_s16_16k_mono", None, (), None, 0.9999),
    ("wav_s16_44k_stereo", ".wav", ("-ar", "44100", "-ac", "2", "-c:a", "pcm_s16le"), None, 0.99),
    ("wav_f32_48k", ".wav", ("-ar", "48000", "-c:a", "pcm_f32le"), None, 0.99),
    ("flac", ".flac", ("-c:a", "flac"), None, 0.9999),
    ("ogg_opus", ".ogg", ("-c:a", "libopus", "-b:a", "32k"), None, 0.95),
    ("webm_opus", ".webm", ("-c:a", "libopus", "-b:a", "32k"), None, 0.95),
    ("mp3", ".mp3", ("-c:a", "libmp3lame", "-b:a", "64k"), None, 0.97),
    ("raw_s16_8k_stereo", ".raw", ("-f", "s16le", "-ar", "8000", "-ac", "2"), AudioFormat("pcm_s16le", 8000, 2), 0.99),
    ("raw_f32_48k_mono", ".raw", ("-f", "f32le", "-ar", "48000", "-ac", "1"), AudioFormat("pcm_f32le", 48000, 1), 0.99),
]


@pytest.mark.parametrize(("name", "suffix", "args", "fmt", "minimum"), FORMATS, ids=[f[0] for f in FORMATS])
def test_every_format_decodes_to_the_same_speech(
    encode: Encode, speech_wav: bytes, reference: np.ndarray, name: str, suffix: str | None,
    args: tuple[str, ...], fmt: AudioFormat | None, minimum: float,
) -> None:
    data = speech_wav if suffix is None else encode(suffix, *args)
    got = decode(data, fmt)
    assert got.dtype == np.float32 and got.ndim == 1
    assert np.all(np.abs(got) <= 1.0)
    # Lossy codecs pad the start and end by a few ms.
    assert abs(len(got) - len(reference)) <= 0.05 * SAMPLE_RATE
    ref = lowpass_4k(reference) if fmt is not None and fmt.sample_rate == 8000 else reference
    corr, lag = aligned_correlation(ref, got)
    print(f"\n{name}: correlation {corr:.4f} at lag {lag} samples, length {len(got)} vs {len(reference)}")
    assert corr > minimum


# --- errors -----------------------------------------------------------------------------


def assert_code(code: str, call: Callable[[], object]) -> AudioError:
    with pytest.raises(AudioError) as caught:
        call()
    assert caught.value.code == code, caught.value
    assert str(caught.value) == caught.value.message and caught.value.message
    return caught.value


def with_wav_rate(wav: bytes, rate: int) -> bytes:
    """Rewrite a canonical 44-byte-header mono s16 WAV's rate (and byte rate) fields."""
    return wav[:24] + struct.pack("<II", rate, rate * 2) + wav[32:]


def test_audio_error_has_the_shape_of_every_voicegate_error() -> None:
    from app.errors import VoiceGateError

    error = AudioError("empty_audio", "nothing here")
    assert isinstance(error, VoiceGateError) and error.code == "empty_audio" and str(error) == "nothing here"


@pytest.mark.parametrize(
    ("suffix", "args"),
    [(".wav", ()), (".flac", ("-c:a", "flac")), (".webm", ("-c:a", "libopus")), (".mp3", ("-c:a", "libmp3lame"))],
    ids=["wav", "flac", "webm_opus", "mp3"],
)
def test_first_half_of_a_file_is_truncated(encode: Encode, suffix: str, args: tuple[str, ...]) -> None:
    data = encode(suffix, *args)
    error = assert_code("truncated", lambda: decode(data[: len(data) // 2]))
    print(f"\n{suffix}: {error}")


def test_cut_ogg_decodes_as_a_shorter_clip(encode: Encode, reference: np.ndarray) -> None:
    # Ogg declares no length up front: FFmpeg reads it from the last page present, so a
    # cut Ogg file is indistinguishable from a shorter recording and cannot be flagged.
    data = encode(".ogg", "-c:a", "libopus")
    got = decode(data[: len(data) // 2])
    assert 0.25 * len(reference) < len(got) < 0.75 * len(reference)


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_are_undecodable(seed: int) -> None:
    data = np.random.default_rng(seed).bytes(1000 + 7919 * seed)
    assert_code("undecodable", lambda: decode(data))


def test_empty_input() -> None:
    assert_code("empty_audio", lambda: decode(b""))
    assert_code("empty_audio", lambda: decode(b"", AudioFormat("pcm_s16le")))


def test_wav_with_no_samples_is_empty(speech_wav: bytes) -> None:
    header = speech_wav[:40] + struct.pack("<I", 0)  # data chunk of length 0
    assert_code("empty_audio", lambda: decode(header))


@pytest.mark.parametrize("rate", [1, 7999, 192001, 10_000_000])
def test_absurd_pcm_rates(rate: int) -> None:
    fmt = AudioFormat("pcm_s16le", rate)
    assert_code("bad_sample_rate", fmt.validate)
    assert_code("bad_sample_rate", lambda: decode(b"\0\0" * 1000, fmt))
    assert_code("bad_sample_rate", lambda: PcmStream(fmt))
    assert_code("bad_sample_rate", lambda: resample(np.zeros(10, np.float32), rate))


@pytest.mark.parametrize("rate", [1, 4_000_000])
def test_wav_header_with_absurd_rate(speech_wav: bytes, rate: int) -> None:
    assert_code("bad_sample_rate", lambda: decode(with_wav_rate(speech_wav, rate)))


@pytest.mark.parametrize(
    "fmt", [AudioFormat("mp4"), AudioFormat("pcm_s24le"), AudioFormat("pcm_s16le", channels=0),
            AudioFormat("pcm_f32le", channels=9)],
    ids=["mp4", "s24", "0ch", "9ch"],
)
def test_bad_formats(fmt: AudioFormat) -> None:
    assert_code("bad_format", fmt.validate)
    assert_code("bad_format", lambda: decode(b"\0" * 64, fmt))


def test_pcm_stream_rejects_containers() -> None:
    assert_code("bad_format", lambda: PcmStream(AudioFormat("container")))
    assert_code("bad_format", lambda: pcm_to_float(b"\0" * 4, "container", 1))


def test_video_without_audio_is_bad_format(encode: Encode) -> None:
    video = encode(".webm", "-c:v", "libvpx-vp9", source=("-f", "lavfi", "-i", "color=c=black:s=16x16:d=0.5"))
    assert_code("bad_format", lambda: decode(video))


def test_too_long_from_the_header(speech_wav: bytes) -> None:
    error = assert_code("too_long", lambda: decode(speech_wav, limits=AudioLimits(max_seconds=2)))
    assert "2 s" in error.message


def test_too_long_while_decoding_a_stream_without_duration(encode: Encode) -> None:
    # A live WebM (what MediaRecorder sends) has no duration, so only the decode loop can stop it.
    live = encode(".webm", "-c:a", "libopus", "-live", "1")
    assert len(decode(live)) > 5 * SAMPLE_RATE
    assert_code("too_long", lambda: decode(live, limits=AudioLimits(max_seconds=2)))


def test_too_long_raw_pcm() -> None:
    assert_code("too_long", lambda: decode(b"\0\0" * 48000, AudioFormat("pcm_s16le"), AudioLimits(max_seconds=2)))


def test_endless_stream_is_cut_off() -> None:
    stream = PcmStream(AudioFormat("pcm_s16le", 48000, 2), AudioLimits(max_seconds=3))
    second = b"\x01\x00" * 2 * 48000
    with pytest.raises(AudioError) as caught:
        for _ in range(100):
            stream.feed(second)
    assert caught.value.code == "too_long"
    assert 3 < stream.seconds <= 4


def test_too_large(speech_wav: bytes) -> None:
    limits = AudioLimits(max_bytes=1000)
    assert_code("too_large", lambda: decode(speech_wav, limits=limits))
    assert_code("too_large", lambda: decode(speech_wav[44:], AudioFormat("pcm_s16le"), limits))
    assert_code("too_large", lambda: PcmStream(AudioFormat("pcm_s16le"), limits).feed(speech_wav))


@pytest.mark.parametrize(
    ("size", "fmt"),
    [(1001, AudioFormat("pcm_s16le")), (1002, AudioFormat("pcm_s16le", channels=2)), (1002, AudioFormat("pcm_f32le"))],
    ids=["s16_mono", "s16_stereo", "f32_mono"],
)
def test_raw_pcm_not_a_whole_frame_is_truncated(size: int, fmt: AudioFormat) -> None:
    assert_code("truncated", lambda: decode(b"\0" * size, fmt))


def test_non_finite_and_out_of_range_samples_are_cleaned() -> None:
    raw = np.array([np.nan, np.inf, -np.inf, 2.0, -3.0, 0.25], "<f4").tobytes()
    assert pcm_to_float(raw, "pcm_f32le", 1).tolist() == [0.0, 0.0, 0.0, 1.0, -1.0, 0.25]
    assert np.isfinite(decode(raw * 1000, AudioFormat("pcm_f32le", 44100))).all()


def test_stereo_is_averaged() -> None:
    raw = np.array([[16384, 0], [-32768, -32768]], "<i2").tobytes()
    assert pcm_to_float(raw, "pcm_s16le", 2).tolist() == [0.25, -1.0]


def test_resample_is_a_no_op_at_16k() -> None:
    audio = np.linspace(-1, 1, 100, dtype=np.float32)
    assert np.array_equal(resample(audio, SAMPLE_RATE), audio)
    assert len(resample(audio, 48000)) == 34


# --- streaming ------------------------------------------------------------------------


def stereo_pcm(reference: np.ndarray, rate: int, encoding: str) -> bytes:
    """The speech at ``rate`` as interleaved stereo raw PCM, channels differing in level."""
    audio = torchaudio.functional.resample(torch.from_numpy(reference), SAMPLE_RATE, rate).numpy()
    frames = np.stack([0.9 * audio, 0.4 * audio], axis=1)
    if encoding == "pcm_s16le":
        return np.round(frames * 32767).astype("<i2").tobytes()
    return frames.astype("<f4").tobytes()


@pytest.mark.parametrize("encoding", ["pcm_s16le", "pcm_f32le"])
@pytest.mark.parametrize("rate", [8000, 11025, 16000, 44100, 48000])
def test_chunked_stream_matches_whole_decode(reference: np.ndarray, rate: int, encoding: str) -> None:
    fmt = AudioFormat(encoding, rate, channels=2)
    raw = stereo_pcm(reference, rate, encoding)
    whole = decode(raw, fmt)
    stream = PcmStream(fmt)
    rng = np.random.default_rng(rate)
    pieces, pos = [], 0
    while pos < len(raw):
        size = int(rng.integers(1, 5001))
        piece = stream.feed(raw[pos : pos + size])
        assert piece.dtype == np.float32
        pieces.append(piece)
        pos += size
    pieces.append(stream.flush())
    got = np.concatenate(pieces)
    assert len(got) == len(whole)
    assert np.abs(got - whole).max() < 1e-5
    assert stream.seconds == pytest.approx(len(raw) / (fmt.channels * (2 if encoding == "pcm_s16le" else 4) * rate))


def test_stream_holds_back_little(reference: np.ndarray) -> None:
    # 20 ms chunks at 44.1 kHz: after each feed, at most ~20 ms of input may be pending.
    fmt = AudioFormat("pcm_s16le", 44100, 2)
    raw = stereo_pcm(reference, 44100, "pcm_s16le")
    stream, emitted, chunk = PcmStream(fmt), 0, 882 * 4
    for pos in range(0, len(raw), chunk):
        emitted += len(stream.feed(raw[pos : pos + chunk]))
        assert stream.seconds * SAMPLE_RATE - emitted < 0.025 * SAMPLE_RATE
