"""Decided: the first default, a fixed raw cosine of 0.40, since replaced by calibration (docs/threshold.md, opening).

Choose the verification threshold from measured score distributions.

    python -m bench.studies.threshold [--data DIR] [--out bench/results/threshold.json]

Scores every same-speaker and different-speaker pair of the dev set (whole clips and
the 1.5 s and 2 s windows that short logins and dictation checks see), plus impostor
trials from espeak-ng voices against every dev speaker (and, reported apart, against each
other), and
prints where genuine and impostor scores fall and the false-accept and false-reject
rates at candidate thresholds. docs/threshold.md records the choice.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import os
import platform
from pathlib import Path

import numpy as np

from app.audio.decode import decode
from app.engines.runtime import load_engines
from app.engines.speaker import centroid, cosine

from ..data import espeak
from ..output import save
from ..paths import DEFAULT_DATA, RESULTS, ROOT

CANDIDATES = (0.25, 0.30, 0.35, 0.40, 0.45, 0.50)
ESPEAK_VOICES = ("en-us+m1", "en-us+m3", "en-us+m5", "en-us+m7", "en-us+f1", "en-us+f3", "en-us+f5",
                 "en-gb+m2", "en-gb+f2", "en-gb-scotland+m4", "en-029+m6", "en-gb-x-rp+f4")
SENTENCES = (
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "My voice is my password, and nobody else should be able to open this door.",
)


def speech_set(data: Path) -> dict[str, list[np.ndarray]]:
    """Return the dev set's audio grouped by speaker."""
    groups: dict[str, list[np.ndarray]] = {}
    with open(data / "speakers.tsv", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            groups.setdefault(row["speaker"], []).append(decode((data / row["file"]).read_bytes()))
    return groups


def middle(audio: np.ndarray, seconds: float) -> np.ndarray:
    """Return ``seconds`` from the middle of a clip (the whole clip if shorter)."""
    length = int(seconds * 16000)
    start = max(0, (audio.size - length) // 2)
    return audio[start:start + length]


def rates(genuine: list[float], impostor: list[float], threshold: float) -> dict:
    """Return FAR and FRR at ``threshold``."""
    return {"far": float(np.mean(np.array(impostor) >= threshold)), "frr": float(np.mean(np.array(genuine) < threshold))}


def summary(scores: list[float]) -> dict:
    """Return the count, range and tail quantiles of a score list."""
    values = np.array(scores)
    return {"n": int(values.size), "min": float(values.min()), "p1": float(np.percentile(values, 1)),
            "p5": float(np.percentile(values, 5)), "median": float(np.median(values)),
            "p95": float(np.percentile(values, 95)), "p99": float(np.percentile(values, 99)), "max": float(values.max())}


def main(argv: list[str] | None = None) -> dict:
    """Score all pairs, print the table, and write the JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.studies.threshold", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=RESULTS / "threshold.json")
    args = parser.parse_args(argv)

    engines = load_engines(ROOT / "pretrained_models", "tiny.en", workers=1, queue=0)
    embed = engines.speaker.embed
    groups = speech_set(args.data)
    clips = {speaker: [embed(audio) for audio in audios] for speaker, audios in groups.items()}
    synthetic = {voice: [embed(espeak(voice, text)) for text in SENTENCES] for voice in ESPEAK_VOICES}

    # The 1.5 s and 2 s windows that short logins and dictation checks see, embedded once.
    window_vectors = {seconds: {speaker: [embed(middle(audio, seconds)) for audio in audios]
                                for speaker, audios in groups.items()} for seconds in (1.5, 2.0)}
    # Enrolled voices: for a speaker with n >= 2 clips, each leave-one-out centroid.
    genuine, impostor_real, impostor_synthetic, synthetic_pairs = [], [], [], []
    windows = {seconds: ([], []) for seconds in window_vectors}
    for speaker, vectors in clips.items():
        for index, vector in enumerate(vectors):
            others = [v for i, v in enumerate(vectors) if i != index]
            if not others:
                continue
            enrolled = centroid(np.stack(others))
            genuine.append(cosine(enrolled, vector))
            for seconds, (window_genuine, window_impostor) in windows.items():
                window_genuine.append(cosine(enrolled, window_vectors[seconds][speaker][index]))
                for stranger, stranger_vectors in window_vectors[seconds].items():
                    if stranger != speaker:
                        window_impostor.extend(cosine(enrolled, v) for v in stranger_vectors)
            for stranger, strangers in clips.items():
                if stranger != speaker:
                    impostor_real.extend(cosine(enrolled, v) for v in strangers)
            for voices in synthetic.values():
                impostor_synthetic.extend(cosine(enrolled, v) for v in voices)
    # espeak-ng voices against each other: one enrolled on two sentences, another tested. They
    # are variants of one formant synthesiser, so this measures the synthesiser, not people:
    # reported, but kept out of the rates.
    for (_, a), (_, b) in itertools.permutations(synthetic.items(), 2):
        synthetic_pairs.append(cosine(centroid(np.stack(a[:2])), b[2]))

    impostor = impostor_real + impostor_synthetic
    table = {f"{t:.2f}": {"whole": rates(genuine, impostor, t),
                          "window_1.5s": rates(*windows[1.5], t), "window_2.0s": rates(*windows[2.0], t)}
             for t in CANDIDATES}
    results = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "data": str(args.data),
        "genuine_whole": summary(genuine),
        "impostor_real_whole": summary(impostor_real),
        "impostor_synthetic_whole": summary(impostor_synthetic),
        "espeak_variant_pairs": summary(synthetic_pairs),
        "genuine_window_1.5s": summary(windows[1.5][0]),
        "impostor_window_1.5s": summary(windows[1.5][1]),
        "genuine_window_2.0s": summary(windows[2.0][0]),
        "impostor_window_2.0s": summary(windows[2.0][1]),
        "rates": table,
    }
    for name in ("genuine_whole", "impostor_real_whole", "impostor_synthetic_whole", "espeak_variant_pairs", "genuine_window_1.5s",
                 "impostor_window_1.5s", "genuine_window_2.0s", "impostor_window_2.0s"):
        s = results[name]
        print(f"{name:<26} n={s['n']:>4}  min {s['min']:.3f}  p1 {s['p1']:.3f}  p5 {s['p5']:.3f}  "
              f"median {s['median']:.3f}  p99 {s['p99']:.3f}  max {s['max']:.3f}")
    print("threshold   FAR/FRR whole        FAR/FRR 1.5 s        FAR/FRR 2.0 s")
    for threshold, row in table.items():
        print(f"  {threshold}    " + "   ".join(f"{row[k]['far']:6.1%} / {row[k]['frr']:6.1%}" for k in row))
    save(results, args.out)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
