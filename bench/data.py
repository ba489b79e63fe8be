"""Read a speech set in the speech-dev format: speakers.tsv, trials.tsv and the audio they name.

``speakers.tsv``: file, speaker, duration_s, transcript, source, license, language.
``trials.tsv``: enroll_files (comma-separated), test_file, label (1 same speaker, 0 not).
Paths are relative to the set's directory or absolute. Either table may be absent.
"""
from __future__ import annotations

import csv
import io
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Utterance:
    """One row of speakers.tsv, with its file resolved."""

    path: Path
    speaker: str
    transcript: str
    language: str


@dataclass(frozen=True)
class Trial:
    """One row of trials.tsv: enroll on ``enroll``, test ``test``; ``target`` when the same speaker."""

    enroll: tuple[Path, ...]
    test: Path
    target: bool


class SpeechSet:
    """A directory in the speech-dev format, with its audio decoded once on demand."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        speakers, trials = self.root / "speakers.tsv", self.root / "trials.tsv"
        if not speakers.is_file() and not trials.is_file():
            raise FileNotFoundError(f"{self.root} has neither speakers.tsv nor trials.tsv")
        self.utterances = [
            Utterance(self.resolve(row["file"]), row["speaker"], (row.get("transcript") or "").strip(),
                      (row.get("language") or "en").strip() or "en")
            for row in _rows(speakers)
        ]
        self.trials = [
            Trial(tuple(self.resolve(f) for f in row["enroll_files"].split(",") if f.strip()),
                  self.resolve(row["test_file"]), row["label"].strip() == "1")
            for row in _rows(trials)
        ]
        self._audio: dict[Path, np.ndarray] = {}

    def resolve(self, name: str) -> Path:
        """Return the absolute path of a file named in a table (relative to the set, or absolute)."""
        path = Path(name.strip())
        return path if path.is_absolute() else self.root / path

    def audio(self, path: Path) -> np.ndarray:
        """Return a file's audio as 16 kHz mono float32 (decoded as the server decodes uploads)."""
        if path not in self._audio:
            # Imported here: reading the tables must not pull in torch.
            from app.audio.decode import decode

            self._audio[path] = decode(path.read_bytes())
        return self._audio[path]

    def seconds(self, path: Path) -> float:
        """Return a file's duration in seconds."""
        return self.audio(path).size / SAMPLE_RATE

    def files(self) -> list[Path]:
        """Return every file the set names, each once, in table order."""
        seen: dict[Path, None] = {}
        for utterance in self.utterances:
            seen[utterance.path] = None
        for trial in self.trials:
            for path in (*trial.enroll, trial.test):
                seen[path] = None
        return list(seen)

    def by_speaker(self) -> dict[str, list[Utterance]]:
        """Return the utterances of speakers.tsv grouped by speaker, in table order."""
        groups: dict[str, list[Utterance]] = {}
        for utterance in self.utterances:
            groups.setdefault(utterance.speaker, []).append(utterance)
        return groups

    def label(self, path: Path) -> str:
        """Return a short name for a file: relative to the set when inside it."""
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def followed(audio: np.ndarray, silence: float) -> np.ndarray:
    """Return 16 kHz ``audio`` with ``silence`` seconds of digital silence after it."""
    return np.concatenate([audio, np.zeros(int(silence * 16000), dtype=np.float32)]) if silence else audio


def pcm16(audio: np.ndarray) -> bytes:
    """Return float32 audio as 16-bit little-endian PCM bytes."""
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def wav_bytes(audio: np.ndarray) -> bytes:
    """Return 16 kHz mono float32 audio as the bytes of a 16-bit WAV file (made in memory)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(SAMPLE_RATE)
        handle.writeframes(pcm16(audio))
    return buffer.getvalue()


def espeak(voice: str, text: str, speed: int | None = None) -> np.ndarray:
    """Return ``text`` spoken by an espeak-ng voice as 16 kHz mono float32, made in memory."""
    from app.audio.decode import decode

    rate = ["-s", str(speed)] if speed else []
    wav = subprocess.run(["espeak-ng", "-v", voice, *rate, "--stdout", text], capture_output=True, check=True,
                         timeout=60).stdout
    return decode(wav)
