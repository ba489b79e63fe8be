"""Decided: short_threshold 0.50 for phrases under 0.8 s in a dictation (docs/threshold.md, "Shorter still").

Short phrases: how well does a phrase of about one second verify, and at what threshold?

    python -m bench.studies.short [--data DIR ...] [--out FILE.json]

For every speaker with four or more files, the centroid of three files is the voiceprint
and random stretches of 0.6, 0.8, 1.0 and 1.2 s of speech (VAD-trimmed) from up to four
other files are the genuine short phrases; the same stretches scored against every other
speaker's voiceprint are the impostor ones. Reported per length and threshold: the share
of genuine phrases refused (FRR) and of impostor phrases accepted (FAR). The dictation gate
decides such phrases against ``short_threshold`` (docs/threshold.md), in process, with the
server's own models.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np

from ..data import SpeechSet
from ..output import save
from ..paths import DEFAULT_DATA, RESULTS

LENGTHS = (0.6, 0.8, 1.0, 1.2)
THRESHOLDS = (0.40, 0.45, 0.50, 0.55, 0.60)


def measure(speech: SpeechSet, engines, seed: int = 1) -> dict:
    """Return genuine and impostor score statistics of short phrases, per length and threshold."""
    from app.engines.speaker import centroid, cosine

    rng = random.Random(seed)
    groups = {s: [u.path for u in us] for s, us in speech.by_speaker().items() if len(us) >= 4}
    voiceprints, phrases = {}, []
    for speaker, files in groups.items():
        voiceprints[speaker] = centroid(np.stack([engines.speaker.embed(speech.audio(f)) for f in files[:3]]))
        for path in files[3:7]:
            audio = speech.audio(path)
            segments = engines.vad.segments(audio)
            if not segments:
                continue
            voiced = np.concatenate([audio[s.start:s.end] for s in segments])
            for length in LENGTHS:
                size = int(length * 16000)
                if voiced.size >= size:
                    start = rng.randint(0, voiced.size - size)
                    phrases.append((speaker, length, engines.speaker.embed(voiced[start:start + size])))
    out = {}
    for length in LENGTHS:
        genuine = np.array([cosine(e, voiceprints[s]) for s, n, e in phrases if n == length])
        impostor = np.array([cosine(e, voiceprints[o]) for s, n, e in phrases if n == length
                             for o in voiceprints if o != s])
        out[f"{length:g}s"] = {
            "genuine": int(genuine.size), "impostor": int(impostor.size),
            "genuine_median": round(float(np.median(genuine)), 3), "impostor_max": round(float(impostor.max()), 3),
            "by_threshold": {f"{t:.2f}": {"frr": round(float(np.mean(genuine < t)), 4),
                                          "far": round(float(np.mean(impostor >= t)), 5)} for t in THRESHOLDS},
        }
    return out


def main(argv: list[str] | None = None) -> int:
    """Measure each set given and write the results."""
    parser = argparse.ArgumentParser(prog="python -m bench.studies.short", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, nargs="+", default=[DEFAULT_DATA])
    parser.add_argument("--out", type=Path, default=RESULTS / "short.json")
    args = parser.parse_args(argv)
    from app.config import Config
    from app.engines.runtime import load_engines

    engines = load_engines(Config.MODELS_DIR, Config.WHISPER_MODEL, workers=1, queue=4)
    results = {path.resolve().name: measure(SpeechSet(path), engines) for path in args.data}
    save(results, args.out)
    for name, lengths in results.items():
        for length, row in lengths.items():
            cells = "  ".join(f"{t}: FRR {v['frr']:.0%} FAR {v['far']:.2%}" for t, v in row["by_threshold"].items())
            print(f"{name} {length} (genuine {row['genuine']}, impostor {row['impostor']}): {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
