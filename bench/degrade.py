"""Make a hard variant of a speech set: its test files degraded the way phones, rooms and networks do.

    python -m bench.degrade [SRC] [--out DIR] [--conditions noise5,babble10,...] [--trials-per-condition N]

Writes, outside the repository (default: $VOICEGATE_DEGRADED or a folder under the system's temp
directory), a set in the speech-dev format: ``<condition>/<original path>.wav`` for every test file
of SRC's trials under every condition, and a ``trials.tsv`` whose enrollment files are SRC's own
(clean, by absolute path: people enroll once, at a desk) and whose test files are the degraded
copies. The condition is the first folder of a test file's path (``condition_of``). Degradations
are deterministic (seeded by file name), so a rerun writes the same audio.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .cohort import COHORT_SPEAKERS
from .data import SAMPLE_RATE, SpeechSet, Trial
from .paths import DEFAULT_DATA, ROOT

logger = logging.getLogger(__name__)

# Frames for the active-speech level: 20 ms, counted when within 40 dB of the loudest frame.
FRAME = 320
ACTIVE_RANGE_DB = 40.0
BABBLE_TALKERS = 3


def condition_of(label: str) -> str:
    """Return the condition a test file of a degraded set was made under (its first folder)."""
    return Path(label).parts[0]


# --------------------------------------------------------------------------- signal pieces

def active_power(audio: np.ndarray) -> float:
    """Return the mean power of the frames that carry speech (within 40 dB of the loudest)."""
    frames = audio[: audio.size // FRAME * FRAME].reshape(-1, FRAME).astype(np.float64)
    if frames.size == 0:
        return float(np.mean(np.square(audio, dtype=np.float64))) if audio.size else 0.0
    power = np.mean(np.square(frames), axis=1)
    active = power[power >= power.max() * 10 ** (-ACTIVE_RANGE_DB / 10)]
    return float(active.mean()) if active.size else 0.0


def pink_noise(samples: int, rng: np.random.Generator) -> np.ndarray:
    """Return unit-power pink (1/f) noise, shaped in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(samples))
    freqs = np.fft.rfftfreq(samples)
    freqs[0] = freqs[1] if samples > 1 else 1.0
    noise = np.fft.irfft(spectrum / np.sqrt(freqs), n=samples)
    return noise / np.sqrt(np.mean(np.square(noise)))


def mix(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Add ``noise`` under ``speech`` at ``snr_db`` (active speech level), keeping clear of full scale."""
    gain = np.sqrt(active_power(speech) / max(np.mean(np.square(noise, dtype=np.float64)), 1e-12) / 10 ** (snr_db / 10))
    out = speech + gain * noise[: speech.size]
    peak = float(np.max(np.abs(out))) if out.size else 0.0
    return (out * (0.95 / peak if peak > 0.95 else 1.0)).astype(np.float32)


def crop(audio: np.ndarray, seconds: float) -> np.ndarray:
    """Return the ``seconds`` of the clip with the most speech energy (the whole clip if shorter)."""
    length = int(seconds * SAMPLE_RATE)
    if audio.size <= length:
        return audio
    energy = np.concatenate([[0.0], np.cumsum(np.square(audio, dtype=np.float64))])
    step = FRAME
    starts = np.arange(0, audio.size - length + 1, step)
    best = int(starts[np.argmax(energy[starts + length] - energy[starts])])
    return audio[best:best + length]


def opus(audio: np.ndarray, bitrate: int) -> np.ndarray:
    """Encode to Ogg/Opus at ``bitrate`` bit/s and decode back to 16 kHz (in memory)."""
    import av

    from app.audio.decode import decode

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=SAMPLE_RATE, layout="mono")
        stream.bit_rate = bitrate
        pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return decode(buffer.getvalue())[: audio.size]


def telephone(audio: np.ndarray) -> np.ndarray:
    """Pass through a G.711 channel: 300-3400 Hz band, 8 kHz, mu-law, and back to 16 kHz."""
    from scipy.signal import butter, resample_poly, sosfilt

    band = sosfilt(butter(6, [300, 3400], btype="bandpass", fs=SAMPLE_RATE, output="sos"), audio)
    narrow = np.clip(resample_poly(band, 1, 2), -1, 1)
    mu = 255.0
    coded = np.sign(narrow) * np.log1p(mu * np.abs(narrow)) / np.log1p(mu)
    coded = np.round(coded * 127) / 127  # 8 bits per sample
    decoded = np.sign(coded) * np.expm1(np.abs(coded) * np.log1p(mu)) / mu
    return resample_poly(decoded, 2, 1)[: audio.size].astype(np.float32)


# --------------------------------------------------------------------------- conditions

@dataclass(frozen=True)
class Condition:
    """One way to degrade a test file: a name (its folder) and what it does."""

    name: str
    about: str
    apply: Callable[[np.ndarray, np.random.Generator, "Babble"], np.ndarray]


class Babble:
    """Other speakers of the set, to talk over a test file."""

    def __init__(self, speech: SpeechSet):
        self.speech = speech
        self.by_speaker: dict[str, list[Path]] = {}
        for utterance in speech.utterances:
            self.by_speaker.setdefault(utterance.speaker, []).append(utterance.path)
        self.speaker_of = {u.path: u.speaker for u in speech.utterances}

    def noise(self, path: Path, samples: int, rng: np.random.Generator) -> np.ndarray:
        """Return three other talkers of the set, each at equal level, summed over ``samples``."""
        others = sorted(s for s in self.by_speaker if s != self.speaker_of.get(path))
        if len(others) < BABBLE_TALKERS:
            raise ValueError("babble needs at least three other speakers in speakers.tsv")
        total = np.zeros(samples)
        for speaker in rng.choice(others, BABBLE_TALKERS, replace=False):
            files = self.by_speaker[speaker]
            talker = self.speech.audio(files[int(rng.integers(len(files)))]).astype(np.float64)
            talker = np.tile(talker, samples // max(talker.size, 1) + 1)[:samples]
            total += talker / np.sqrt(max(active_power(talker), 1e-12))
        return total


def _conditions() -> dict[str, Condition]:
    return {c.name: c for c in (
        Condition("clean", "the original file (the reference)", lambda a, r, b: a),
        Condition("noise5", "pink noise at 5 dB SNR", lambda a, r, b: mix(a, pink_noise(a.size, r), 5.0)),
        Condition("babble10", "3 other talkers of the set at 10 dB SNR", None),
        Condition("opus12", "Ogg/Opus at 12 kbit/s", lambda a, r, b: opus(a, 12000)),
        Condition("g711", "G.711 mu-law telephone channel, 300-3400 Hz at 8 kHz", lambda a, r, b: telephone(a)),
        Condition("crop2", "2 s crop", lambda a, r, b: crop(a, 2.0)),
        Condition("crop1.5noise10", "1.5 s crop with pink noise at 10 dB SNR",
                  lambda a, r, b: mix(crop(a, 1.5), pink_noise(int(1.5 * SAMPLE_RATE), r), 10.0)),
        Condition("crop1", "1 s crop (the short-speech question)", lambda a, r, b: crop(a, 1.0)),
    )}


CONDITIONS = _conditions()
DEFAULT_CONDITIONS = tuple(CONDITIONS)


def degrade(condition: str, audio: np.ndarray, path: Path, babble: Babble | None) -> np.ndarray:
    """Return ``audio`` (of the file ``path``) degraded under ``condition``; seeded by the file's name."""
    seed = int.from_bytes(hashlib.sha256(f"{condition}:{path.name}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    if condition == "babble10":
        if babble is None:
            raise ValueError("babble needs the set's speakers")
        return mix(audio, babble.noise(path, audio.size, rng), 10.0)
    return CONDITIONS[condition].apply(audio, rng, babble).astype(np.float32)


def pick_trials(trials: list[Trial], limit: int | None, seed: int = 0) -> list[Trial]:
    """Return at most ``limit`` trials, half same-speaker and half not where the set allows, in table order."""
    if not limit or limit >= len(trials):
        return list(trials)
    rng = np.random.default_rng(seed)
    chosen: set[int] = set()
    for target in (True, False):
        indices = [i for i, t in enumerate(trials) if t.target == target]
        take = min(len(indices), limit // 2)
        chosen.update(int(i) for i in rng.choice(indices, take, replace=False))
    return [t for i, t in enumerate(trials) if i in chosen]


def default_out(source: Path) -> Path:
    """Return where the hard variant of ``source`` goes unless told: never inside the repository."""
    base = Path(os.environ.get("VOICEGATE_DEGRADED", Path(tempfile.gettempdir()) / "voicegate-degraded"))
    return base / f"{source.name}-hard"


def write_wav(path: Path, audio: np.ndarray) -> None:
    """Write 16 kHz mono 16-bit WAV."""
    import wave

    from .data import pcm16

    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(SAMPLE_RATE)
        handle.writeframes(pcm16(audio))


def make(source: Path, out: Path, conditions: tuple[str, ...], per_condition: int | None,
         exclude: frozenset[str] = frozenset()) -> Path:
    """Write the hard variant of ``source`` into ``out``; return its trials.tsv.

    Trials that enroll or test a speaker in ``exclude`` are left out (e.g. the speakers whose
    embeddings are the shipped cohort: a voice is never accepted against a cohort holding it).
    """
    speech = SpeechSet(source)
    babble = Babble(speech) if "babble10" in conditions else None
    speaker = {u.path: u.speaker for u in speech.utterances}
    kept = [t for t in speech.trials if not {speaker.get(p) for p in (*t.enroll, t.test)} & exclude]
    trials = pick_trials(kept, per_condition)
    tests = list(dict.fromkeys(t.test for t in trials))
    rows = []
    for condition in conditions:
        for path in tests:
            target = (out / condition / speech.label(path)).with_suffix(".wav")
            if not target.is_file():
                write_wav(target, degrade(condition, speech.audio(path), path, babble))
        rows += [(",".join(str(p) for p in t.enroll), f"{condition}/{Path(speech.label(t.test)).with_suffix('.wav')}",
                  "1" if t.target else "0") for t in trials]
        logger.info("%s: %d test files", condition, len(tests))
    trials_tsv = out / "trials.tsv"
    with open(trials_tsv, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(("enroll_files", "test_file", "label"))
        writer.writerows(rows)
    (out / "README.md").write_text(
        f"Hard variant of {source} made by `python -m bench.degrade` (generated audio: never commit it).\n\n"
        + "".join(f"- `{name}/`: {CONDITIONS[name].about}\n" for name in conditions))
    return trials_tsv


def main(argv: list[str] | None = None) -> int:
    """Read the command line and write the hard variant."""
    parser = argparse.ArgumentParser(prog="python -m bench.degrade", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, nargs="?", default=DEFAULT_DATA, help="a set in the speech-dev format")
    parser.add_argument("--out", type=Path, help="where to write (default: $VOICEGATE_DEGRADED/<name>-hard or a temp folder)")
    parser.add_argument("--conditions", default=",".join(DEFAULT_CONDITIONS),
                        help=f"comma-separated, of {', '.join(CONDITIONS)}")
    parser.add_argument("--trials-per-condition", type=int, help="a balanced sample of this many trials (default: all)")
    parser.add_argument("--without-cohort-speakers", action="store_true",
                        help="leave out trials of the speakers held out for the shipped cohort (bench/cohort.py)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    conditions = tuple(c.strip() for c in args.conditions.split(",") if c.strip())
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        parser.error(f"unknown conditions {unknown}; choose from {', '.join(CONDITIONS)}")
    source = args.source.resolve()
    out = (args.out or default_out(source)).resolve()
    if out.is_relative_to(ROOT):
        parser.error("write generated audio outside the repository")
    exclude = frozenset()
    if args.without_cohort_speakers:
        exclude = frozenset(COHORT_SPEAKERS)
    print(make(source, out, conditions, args.trials_per_condition, exclude))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
