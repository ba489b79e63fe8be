"""Kõnele's endpoint: time from EOS to the final result, beside decoding the whole utterance after EOS.

    python -m bench.kaldi [--data DIR] [--out FILE.json] [--fast]

Starts the real server (scripts/serve.sh, as ``python -m bench`` does), enrolls two users
per dev speaker (each on half of that speaker's files, tested on the other half), and
streams every transcribed file through ``/client/ws/speech`` at real-time pace as Kõnele
does (raw S16LE caps, 200 ms frames), then EOS. The baseline is the approach of the
original whisper-websocket-server: nothing happens until EOS, then Whisper decodes the
whole utterance; here it runs on the same weights with the server's threads per call,
in this process while the server idles, on the same audio in the same run. A second
baseline adds the one ECAPA embedding a voice check would need, as identity gating does.
Writes bench/results/kaldi.json.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from clients.kaldi import KONELE_CAPS, run

from . import calls, machine, metrics
from .data import SpeechSet, pcm16
from .output import quiet_logging, save
from .paths import DEFAULT_DATA, RESULTS

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.kaldi", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a speech set in the speech-dev format")
    parser.add_argument("--out", type=Path, default=RESULTS / "kaldi.json", help="the results JSON")
    parser.add_argument("--fast", action="store_true", help="stream as fast as possible instead of at real-time pace")
    return parser.parse_args(argv)


def enroll_halves(service, speech: SpeechSet) -> list[tuple[str, Path]]:
    """Enroll two users per speaker on either half of their files; return (user, file) pairs to test."""
    pairs = []
    for speaker, utterances in speech.by_speaker().items():
        if len(utterances) < 2:
            logger.info("skipping %s: one file, none left to test on", speaker)
            continue
        middle = len(utterances) // 2
        halves = (utterances[:middle], utterances[middle:])
        for index, (enroll_on, test_on) in enumerate((halves, halves[::-1])):
            user = f"{speaker}-{'ab'[index]}"
            outcome = calls.enroll(service.ws_url, user, service.invite(user),
                                   [speech.audio(u.path) for u in enroll_on])
            if outcome["state"] != "enrolled":
                logger.warning("%s did not enroll (%s); its files are left out", user, outcome["state"])
                continue
            pairs += [(user, u.path) for u in test_on]
    return pairs


def dictation_url(service, user: str) -> str:
    """Return the user's Kõnele URL from ``flask users key`` (its last line), on the server's database."""
    # The suite's admin app shares the server's database and instance folder (so its secret key).
    result = service._admin.test_cli_runner().invoke(args=["users", "key", user, "--base-url", service.url])
    if result.exit_code != 0:
        raise RuntimeError(f"flask users key {user} failed: {result.output}")
    return result.output.strip().splitlines()[-1]


def stream_all(service, speech: SpeechSet, pairs: list[tuple[str, Path]], realtime: bool) -> list[dict]:
    """Dictate each file through the kaldi endpoint; return per-file timings and text."""
    urls = {user: dictation_url(service, user) for user in {u for u, _ in pairs}}
    records = []
    for user, path in pairs:
        audio = speech.audio(path)
        stream = run(urls[user], KONELE_CAPS, pcm16(audio), 32000, realtime=realtime, continuous=True)
        finals = [t for r, t in zip(stream.replies, stream.times) if r.get("result", {}).get("final")]
        refusal = next((r for r in stream.replies if r.get("status")), None)
        records.append({
            "user": user, "file": speech.label(path), "seconds": round(audio.size / 16000, 3),
            "status": refusal["status"] if refusal else 0, "message": refusal["message"] if refusal else None,
            "finals": len(finals), "text": stream.text(),
            "eos_to_final_s": round(finals[-1] - stream.eos_at, 4) if finals else None,
            "eos_to_close_s": round(stream.closed_at - stream.eos_at, 4) if stream.closed_at else None,
        })
        logger.info("%-40s %s", speech.label(path), f"{records[-1]['eos_to_final_s']} s" if finals else refusal)
    return records


def baseline(models, speech: SpeechSet, paths: list[Path]) -> dict[Path, dict]:
    """Decode each whole file after its end, as whisper-websocket-server does; also time one embedding."""
    models.transcriber.transcribe(speech.audio(paths[0]))  # warm-up: first calls pay one-off costs
    models.speaker.embed(speech.audio(paths[0]))
    out = {}
    for path in paths:
        audio = speech.audio(path)
        began = time.perf_counter()
        text = models.transcriber.transcribe(audio).text
        transcribed = time.perf_counter()
        models.speaker.embed(audio)
        out[path] = {"text": text, "decode_s": round(transcribed - began, 4),
                     "decode_and_embed_s": round(time.perf_counter() - began, 4)}
    return out


def summarise(records: list[dict], speech: SpeechSet) -> dict:
    """Return medians, the ratio of the baseline's median to the endpoint's, and WER of both."""
    timed = [r for r in records if r["eos_to_final_s"] is not None]
    kaldi = [r["eos_to_final_s"] for r in timed]
    decode = [r["baseline"]["decode_s"] for r in timed]
    gated = [r["baseline"]["decode_and_embed_s"] for r in timed]
    transcripts = {speech.label(u.path): u.transcript for u in speech.utterances}
    norm = metrics.normaliser("en")
    references = [norm(transcripts[r["file"]]) for r in timed]
    median = lambda values: round(float(np.median(values)), 4) if values else None  # noqa: E731
    result = {
        "files": len(records), "timed": len(timed),
        "refused": {str(s): sum(1 for r in records if r["status"] == s) for s in sorted({r["status"] for r in records}) if s},
        "kaldi_eos_to_final_p50_s": median(kaldi), "kaldi": metrics.summary_ms(kaldi),
        "baseline_decode_p50_s": median(decode), "baseline_decode": metrics.summary_ms(decode),
        "baseline_decode_and_embed_p50_s": median(gated), "baseline_decode_and_embed": metrics.summary_ms(gated),
        "wer_kaldi": metrics.word_errors(references, [norm(r["text"]) for r in timed]).wer,
        "wer_baseline": metrics.word_errors(references, [norm(r["baseline"]["text"]) for r in timed]).wer,
    }
    if kaldi and median(kaldi) > 0:
        result["ratio_baseline_to_kaldi"] = round(median(decode) / median(kaldi), 2)
        result["ratio_gated_baseline_to_kaldi"] = round(median(gated) / median(kaldi), 2)
        result["ratio_per_file_p50"] = round(float(np.median(np.array(decode) / np.maximum(kaldi, 1e-3))), 2)
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the figures and write the results JSON."""
    args = parse_args(argv)
    quiet_logging()
    from app.config import Config

    from .baseline import Models
    from .server import StartedServer

    speech = SpeechSet(args.data.resolve())
    began, started = time.monotonic(), datetime.now(timezone.utc)
    about = machine.describe()
    whisper = os.environ.get("VOICEGATE_WHISPER_MODEL", Config.WHISPER_MODEL)
    beam = int(os.environ.get("VOICEGATE_WHISPER_BEAM_SIZE", Config.WHISPER_BEAM_SIZE))
    threads = int(os.environ.get("VOICEGATE_INFERENCE_THREADS", Config.INFERENCE_THREADS))
    service = StartedServer(log_path=args.out.with_suffix(".server.log"))
    try:
        models = Models(os.environ.get("VOICEGATE_MODELS_DIR", Config.MODELS_DIR), whisper, beam, threads)
        service.wait_ready()
        pairs = enroll_halves(service, speech)
        logger.info("%d files to dictate through %s/client/ws/speech", len(pairs), service.url)
        records = stream_all(service, speech, pairs, realtime=not args.fast)
        base = baseline(models, speech, [path for _, path in pairs])
    finally:
        service.close()
    for record, (_, path) in zip(records, pairs):
        record["baseline"] = base[path]
    summary = summarise(records, speech)
    results = {
        "run": {"command": " ".join([".venv/bin/python -m bench.kaldi", *(argv or [])]),
                "started": started.strftime("%Y-%m-%d %H:%M UTC"), "duration_s": round(time.monotonic() - began, 1),
                "pace": "as fast as possible" if args.fast else "at real-time pace",
                "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "machine": about,
        "models": {"whisper": whisper, "beam_size": beam, "threads_per_call": threads},
        "summary": summary,
        "files": records,
    }
    save(results, args.out)
    print(f"\nEOS to final, median over {summary['timed']} files (of {summary['files']}):")
    print(f"  Kõnele endpoint (streamed, verified, decoded as spoken): {summary['kaldi']['p50_ms']} ms")
    print(f"  baseline: whole utterance decoded after EOS:             {summary['baseline_decode']['p50_ms']} ms")
    print(f"  baseline + one voice embedding after EOS:                {summary['baseline_decode_and_embed']['p50_ms']} ms")
    print(f"  ratio baseline / endpoint: {summary.get('ratio_baseline_to_kaldi')} "
          f"(gated baseline: {summary.get('ratio_gated_baseline_to_kaldi')})")
    print(f"  WER endpoint {summary['wer_kaldi']:.3f}, baseline {summary['wer_baseline']:.3f}; refused {summary['refused']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
