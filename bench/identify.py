"""1:N identification against many enrolled voices: latency and outcome at 1 000, 10 000 and 100 000.

    OPENBLAS_NUM_THREADS=1 nice python -m bench.identify [--data DIR] [--sizes 1000 10000 100000] [--probes 200]
                                  [--out bench/results/identify.json]

The real voices are the speakers of ``--data`` (default ../shared/data/speech-more): each
enrolled from up to three of their files (their centroid, as an enrollment stores it), the rest
of their files being the probes; random unit vectors fill the gallery up to each size. A probe
is identified as the server does (app.gate.decide.identify_among: one matrix product, then the
shortlist scored in full with AS-norm and calibration), and timed alone, twice: cold (no
voice's enrolled-side AS-norm figures known, as after the voices changed) and warm (each
candidate's known from an earlier identification, the steady state), then once more after one
more voice was enrolled ("changed": the matrix rebuilt, the figures that still hold carried
over, app.gate.gallery.carried_stats). The gallery is built
once per size, as an instance does when the ``voiceprints`` counter moves (timed too).
Embeddings come from bench.embedcache (computed once, cached outside the repository).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from .data import SpeechSet
from .embedcache import measure_set
from .machine import describe
from .output import save
from .paths import RESULTS, SPEECH_MORE

ENROLL_FILES = 3
MIN_SPEECH = 0.8  # the policy's minimum speech for a decision: shorter probes are not decided at all


def real_voices(data: Path) -> tuple[dict[str, np.ndarray], list[tuple[str, np.ndarray, object]]]:
    """Return the enrolled centroids by speaker, and the probes (speaker, embedding, quality)."""
    from app.engines.speaker import centroid
    from app.gate.calibration import Quality

    speech = SpeechSet(data)
    groups = speech.by_speaker()
    measured = measure_set(speech, [u.path for group in groups.values() for u in group])
    voices, probes = {}, []
    for speaker, utterances in groups.items():
        usable = [u for u in utterances if measured[u.path].speech_seconds >= MIN_SPEECH]
        if len(usable) < ENROLL_FILES + 1:
            continue
        voices[speaker] = centroid(np.stack([measured[u.path].embedding for u in usable[:ENROLL_FILES]]))
        for u in usable[ENROLL_FILES:]:
            m = measured[u.path]
            probes.append((speaker, m.embedding, Quality(m.speech_seconds, m.snr_db, m.band)))
    return voices, probes


def run(voices: dict[str, np.ndarray], probes: list, size: int, count: int, rng: np.random.Generator) -> dict:
    """Identify ``count`` probes against the real voices plus random ones up to ``size``; return the figures."""
    from app.gate import decide
    from app.gate.calibration import load_cohort
    from app.gate.gallery import Gallery, carried_stats
    from app.gate.policy import Policy

    fill = rng.normal(size=(max(0, size - len(voices)), 192)).astype(np.float32)
    fill /= np.linalg.norm(fill, axis=1, keepdims=True)
    everyone = {**voices, **{f"random{n}": vector for n, vector in enumerate(fill)}}
    started = time.perf_counter()
    gallery = Gallery.build(1, everyone)
    build_ms = (time.perf_counter() - started) * 1000
    policy, cohort = Policy(), load_cohort()
    chosen = [probes[i] for i in rng.choice(len(probes), size=min(count, len(probes)), replace=False)]
    decide.identify_among(chosen[0][1], gallery.names, gallery.columns, policy, chosen[0][2], cohort)  # warm-up
    figures = {"voices": len(gallery.names), "real_voices": len(voices), "probes": len(chosen),
               "gallery_build_ms": round(build_ms, 1), "matrix_mb": round(gallery.columns.nbytes / 1e6, 1)}
    # cold: no row's enrolled-side figures known yet (the first identification after the voices
    # changed); warm: each candidate's known from an earlier identification (the steady state).
    for state in ("cold", "warm", "changed"):
        if state == "changed":
            # Another instance enrolled one more voice: the matrix is rebuilt, and the figures
            # of the voices that voice does not come close to are carried over.
            everyone[f"random{len(everyone)}"] = fill[0] * -1.0
            fresh = Gallery.build(2, everyone)
            started = time.perf_counter()
            fresh.stats.update(carried_stats(gallery, fresh))
            figures["carry_ms"] = round((time.perf_counter() - started) * 1000, 1)
            figures["carried"] = f"{len(fresh.stats)} of {len(gallery.stats)}"
            gallery = fresh
        if state == "warm":
            for _, embedding, quality in chosen:
                decide.identify_among(embedding, gallery.names, gallery.columns, policy, quality, cohort,
                                      stats=gallery.stats)
        latencies, outcome = [], {"right": 0, "wrong": 0, "unknown": 0}
        for speaker, embedding, quality in chosen:
            stats = {} if state == "cold" else gallery.stats
            started = time.perf_counter()
            match = decide.identify_among(embedding, gallery.names, gallery.columns, policy, quality, cohort,
                                          stats=stats)
            latencies.append((time.perf_counter() - started) * 1000)
            outcome["unknown" if match.state != "accept" else "right" if match.user == speaker else "wrong"] += 1
        figures[state] = {"p50_ms": round(float(np.percentile(latencies, 50)), 2),
                          "p95_ms": round(float(np.percentile(latencies, 95)), 2),
                          "max_ms": round(float(np.max(latencies)), 2), **outcome}
    return figures


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print a table, and write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SPEECH_MORE)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS / "identify.json")
    args = parser.parse_args(argv)
    voices, probes = real_voices(args.data)
    rng = np.random.default_rng(13)
    # scripts/serve.sh runs numpy's BLAS on one thread per call; unset, it uses every core.
    results = {"machine": describe(), "data": args.data.name, "shortlist": None,
               "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"), "sizes": []}
    from app.gate.decide import SHORTLIST

    results["shortlist"] = SHORTLIST
    print(f"{len(voices)} real voices, {len(probes)} probes from {args.data.name}; shortlist {SHORTLIST}")
    print(f"{'voices':>8} {'':>5} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'right':>6} {'wrong':>6} {'unknown':>8}")
    for size in args.sizes:
        row = run(voices, probes, size, args.probes, rng)
        results["sizes"].append(row)
        for state in ("cold", "warm", "changed"):
            f = row[state]
            print(f"{row['voices']:>8} {state:>5} {f['p50_ms']:>8} {f['p95_ms']:>8} {f['max_ms']:>8} "
                  f"{f['right']:>6} {f['wrong']:>6} {f['unknown']:>8}")
        print(f"{'':>8} gallery built in {row['gallery_build_ms']} ms, {row['matrix_mb']} MB; after one more "
              f"enrollment, figures carried over in {row['carry_ms']} ms: {row['carried']}")
    save(results, args.out)
    return results


if __name__ == "__main__":
    main()
