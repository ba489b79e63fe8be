"""Choose the replay limit: how close a new attempt's embedding may come to audio the user already gave.

    nice python -m bench.replay [--data DIR] [--out bench/results/replay.json]

Genuine: every pair of different utterances of one dev speaker (a new login against an
enrollment clip or an earlier accepted attempt). Replay: every dev utterance against itself
after a channel an attacker's recording passes through: Opus at 24 and 12 kbit/s, 8 kHz
telephone band, white noise at 20 and 10 dB SNR, and all of 8 kHz + noise 20 dB + Opus 12.
Prints both distributions and what candidate limits would do; docs/threshold.md records the choice.
"""
from __future__ import annotations

import argparse
import io
import itertools
import os
from pathlib import Path

import numpy as np

from app.audio.decode import decode
from app.engines.runtime import load_engines
from app.engines.speaker import cosine

from .data import SpeechSet
from .output import save
from .paths import DEFAULT_DATA, RESULTS, ROOT

CANDIDATES = (0.80, 0.85, 0.88, 0.90, 0.92, 0.95)


def opus(audio: np.ndarray, bitrate: int) -> np.ndarray:
    """Return ``audio`` after an Ogg/Opus round trip at ``bitrate`` bit/s (in memory)."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=48000)
        stream.bit_rate = bitrate
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray((np.clip(audio, -1, 1) * 32767).astype("<i2")[None, :],
                                           format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return decode(buffer.getvalue())


def telephone(audio: np.ndarray) -> np.ndarray:
    """Return ``audio`` band-limited through 8 kHz sampling and back."""
    from scipy.signal import resample_poly

    return resample_poly(resample_poly(audio, 1, 2), 2, 1).astype(np.float32)[: audio.size]


def noisy(audio: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    """Return ``audio`` with white noise ``snr_db`` below its power."""
    power = float(np.mean(np.square(audio, dtype=np.float64)))
    noise = np.random.default_rng(seed).normal(0, np.sqrt(power / 10 ** (snr_db / 10)), audio.size)
    return (audio + noise).astype(np.float32)


CHANNELS = {
    "opus24": lambda a, i: opus(a, 24000),
    "opus12": lambda a, i: opus(a, 12000),
    "8khz": lambda a, i: telephone(a),
    "noise20": lambda a, i: noisy(a, 20, i),
    "noise10": lambda a, i: noisy(a, 10, i),
    "8khz+noise20+opus12": lambda a, i: opus(noisy(telephone(a), 20, i), 12000),
}


def summary(values: list[float]) -> dict:
    array = np.asarray(values)
    return {"n": int(array.size), "min": round(float(array.min()), 4), "p1": round(float(np.percentile(array, 1)), 4),
            "median": round(float(np.median(array)), 4), "p99": round(float(np.percentile(array, 99)), 4),
            "max": round(float(array.max()), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=RESULTS / "replay.json")
    args = parser.parse_args(argv)
    engines = load_engines(os.environ.get("VOICEGATE_MODELS_DIR", ROOT / "pretrained_models"), "tiny.en", workers=1, queue=4)
    try:
        speech = SpeechSet(args.data)
        groups = {speaker: [speech.audio(u.path) for u in utterances]
                  for speaker, utterances in speech.by_speaker().items()}
        embed = engines.speaker.embed
        originals = {speaker: [embed(a) for a in clips] for speaker, clips in groups.items()}
        genuine = [cosine(x, y) for embeddings in originals.values() for x, y in itertools.combinations(embeddings, 2)]
        replays: dict[str, list[float]] = {name: [] for name in CHANNELS}
        index = 0
        for speaker, clips in groups.items():
            for audio, original in zip(clips, originals[speaker]):
                index += 1
                for name, channel in CHANNELS.items():
                    replays[name].append(cosine(embed(channel(audio, index)), original))
    finally:
        engines.pool.shutdown()
    every_replay = [v for values in replays.values() for v in values]
    result = {
        "genuine_pairs": summary(genuine),
        "replays": {name: summary(values) for name, values in replays.items()},
        "candidates": {f"{limit:.2f}": {
            "genuine_refused": round(float(np.mean(np.asarray(genuine) >= limit)), 4),
            "replays_passed": round(float(np.mean(np.asarray(every_replay) < limit)), 4),
            **{f"passed_{name}": round(float(np.mean(np.asarray(values) < limit)), 4) for name, values in replays.items()},
        } for limit in CANDIDATES},
    }
    save(result, args.out, shown=result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
