"""Decided: dictation checks an utterance's last second of speech alone, at the raw floor (app/gate/dictation.py, END_SECONDS).

Does the last second of an utterance tell its speaker from another voice that took over for under a second?

    python -m bench.studies.last_second [--data DIR ...] [--out FILE.json]

For every speaker with four or more files, the centroid of three files is the voiceprint; each
other file with at least 2.5 s of speech (VAD-trimmed) is a genuine ending: its last second
of speech scored alone. The same file followed at once by 0.4, 0.6 and 0.8 s of another
speaker's speech (one other speaker drawn per file) is a taken-over ending: the last second of
the joined audio, scored alike. Reported per set and threshold: the share of genuine endings
under it (their last second lost) and of taken-over endings under it (caught). Raw cosine with
the server's own models (fused where they are), in process.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np

from ..data import SpeechSet
from ..output import save
from ..paths import DEFAULT_DATA, RESULTS, SPEECH_MORE

TAKEN_OVER = (0.4, 0.6, 0.8)
THRESHOLDS = (0.20, 0.25, 0.30, 0.35)
SECOND = 16000


def measure(speech: SpeechSet, engines, seed: int = 0) -> dict:
    """Return the raw scores' percentiles and the shares under each threshold, genuine and taken over."""
    from app.engines.speaker import centroid, cosine

    rng = random.Random(seed)
    groups = {s: [u.path for u in us] for s, us in speech.by_speaker().items() if len(us) >= 4}

    def spoken(path) -> np.ndarray:
        audio = speech.audio(path)
        segments = engines.vad.segments(audio)
        return audio[segments[0].start:segments[-1].end] if segments else audio[:0]

    genuine, taken = [], {k: [] for k in TAKEN_OVER}
    for speaker, files in groups.items():
        voice = centroid(np.stack([engines.speaker.embed(speech.audio(f)) for f in files[:3]]))
        others = [s for s in groups if s != speaker]
        for path in files[3:]:
            own = spoken(path)
            if own.size < 2.5 * SECOND or not others:
                continue
            genuine.append(cosine(engines.speaker.embed(own[-SECOND:]), voice))
            other = spoken(rng.choice(groups[rng.choice(others)]))
            for seconds in TAKEN_OVER:
                joined = np.concatenate([own, other[:int(seconds * SECOND)]])
                taken[seconds].append(cosine(engines.speaker.embed(joined[-SECOND:]), voice))
    genuine_scores = np.array(genuine)
    out = {"genuine_endings": len(genuine),
           "genuine_score_percentiles_1_5_10_50": np.percentile(genuine_scores, [1, 5, 10, 50]).round(3).tolist()
           if genuine else [], "by_threshold": {}}
    for threshold in THRESHOLDS:
        row = {"genuine_lost": round(float(np.mean(genuine_scores < threshold)), 4) if genuine else None}
        for seconds, scores in taken.items():
            row[f"caught_{seconds:g}s"] = round(float(np.mean(np.array(scores) < threshold)), 4) if scores else None
        out["by_threshold"][f"{threshold:.2f}"] = row
    return out


def main(argv: list[str] | None = None) -> int:
    """Measure each set given, and all of them together, and write the results."""
    parser = argparse.ArgumentParser(prog="python -m bench.studies.last_second", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, nargs="+", default=[SPEECH_MORE, DEFAULT_DATA])
    parser.add_argument("--out", type=Path, default=RESULTS / "last_second.json")
    args = parser.parse_args(argv)
    from app.config import Config
    from app.engines.runtime import load_engines
    from app.gate.policy import Policy

    engines = load_engines(Config.MODELS_DIR, Config.WHISPER_MODEL, workers=1, queue=4)
    results = {path.resolve().name: measure(SpeechSet(path), engines) for path in args.data}
    results["run"] = {"speaker_models": engines.speaker.model_id, "raw_floor": Policy().threshold,
                      "command": " ".join(["python -m bench.studies.last_second", *(argv or [])])}
    save(results, args.out)
    engines.pool.shutdown()
    for name, result in results.items():
        if name == "run":
            continue
        print(f"{name}: {result['genuine_endings']} genuine endings, last-second raw cosine percentiles "
              f"1/5/10/50: {result['genuine_score_percentiles_1_5_10_50']}")
        for threshold, row in result["by_threshold"].items():
            caught = ", ".join(f"{k.removeprefix('caught_')} {v:.0%}" for k, v in row.items() if k.startswith("caught"))
            print(f"  under {threshold}: genuine lost {row['genuine_lost']:.1%}; taken over, caught: {caught}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
