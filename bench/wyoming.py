"""The Wyoming server as Home Assistant uses it: audio-stop to transcript, words of the household, none of others.

    python -m bench.wyoming [--data DIR] [--out FILE.json] [--fast]

Starts the real server (scripts/serve.sh with VOICEGATE_WYOMING_PORT, the Wyoming server inside
its worker), enrolls two users per dev speaker (each on half of that speaker's files, tested on
the other half, as bench.kaldi does), and puts every speaker's first user in the household but
one speaker's, who stays out (enrolled, not a member: a guest). Every test file is sent with
the ``wyoming`` package's client as Home Assistant's integration sends it (transcribe,
audio-start, 1024-sample chunks at real-time pace, audio-stop). Members' files should give their
words, the guest's an empty transcript. The baseline is what wyoming-faster-whisper does: decode
the whole file after audio-stop, on the same weights, in this process while the server idles.
Writes bench/results/wyoming.json.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import machine, metrics
from .data import SpeechSet, followed, pcm16
from .kaldi import baseline, enroll_halves
from .output import quiet_logging, save
from .paths import DEFAULT_DATA, DEV_REPORT, RESULTS

logger = logging.getLogger(__name__)

SAMPLES_PER_CHUNK = 1024
REPLY_SECONDS = 300


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.wyoming", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a speech set in the speech-dev format")
    parser.add_argument("--out", type=Path, default=RESULTS / "wyoming.json", help="the results JSON")
    parser.add_argument("--fast", action="store_true", help="send as fast as possible instead of at real-time pace")
    parser.add_argument("--silence", type=float, default=0.0,
                        help="seconds of silence sent after each file before audio-stop (Home Assistant's own VAD "
                             "sends audio-stop after 0.7 s of it at its default sensitivity)")
    return parser.parse_args(argv)


async def command(port: int, audio: np.ndarray, realtime: bool) -> dict:
    """Send one command as Home Assistant does; return its transcript (or error) and the time after audio-stop."""
    from wyoming.asr import Transcribe
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient

    data = pcm16(audio)
    step = SAMPLES_PER_CHUNK * 2
    async with AsyncTcpClient("127.0.0.1", port, read_timeout=REPLY_SECONDS) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        began = time.perf_counter()
        for index, offset in enumerate(range(0, len(data), step)):
            if realtime:  # each chunk when it would have been spoken
                await asyncio.sleep(max(0.0, began + index * SAMPLES_PER_CHUNK / 16000 - time.perf_counter()))
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=data[offset:offset + step]).event())
        await client.write_event(AudioStop().event())
        stopped = time.perf_counter()
        while True:
            event = await client.read_event()
            if event is None or event.type in ("transcript", "error"):
                return {"type": event.type if event else None, "data": event.data if event else {},
                        "stop_to_transcript_s": round(time.perf_counter() - stopped, 4)}


def household(service, members: list[str]) -> None:
    """Put ``members`` (user names) in the household, in the server's database."""
    from app.gate import settings
    from app.store.models import User

    with service._admin.app_context():
        settings.save_household([User.by_name(name).public_id for name in members], "bench")


def summarise(records: list[dict], speech: SpeechSet) -> dict:
    """Return member WER and latency beside the baseline's, and what the guest's files gave."""
    members = [r for r in records if r["member"]]
    guests = [r for r in records if not r["member"]]
    transcripts = {speech.label(u.path): u.transcript for u in speech.utterances}
    norm = metrics.normaliser("en")
    references = [norm(transcripts[r["file"]]) for r in members]
    latency = [r["stop_to_transcript_s"] for r in members if r["type"] == "transcript"]
    decode = [r["baseline"]["decode_s"] for r in members]
    median = lambda values: round(float(np.median(values)), 4) if values else None  # noqa: E731
    return {
        "member_files": len(members), "guest_files": len(guests),
        "errors": sum(1 for r in records if r["type"] != "transcript"),
        "members_with_text": sum(1 for r in members if r["text"]),
        "guests_with_text": sum(1 for r in guests if r["text"]),
        "guest_words": sum(len(r["text"].split()) for r in guests),
        "stop_to_transcript": metrics.summary_ms(latency), "stop_to_transcript_p50_s": median(latency),
        "baseline_decode": metrics.summary_ms(decode), "baseline_decode_p50_s": median(decode),
        "wer_members": metrics.word_errors(references, [norm(r["text"]) for r in members]).wer,
        "wer_baseline": metrics.word_errors(references, [norm(r["baseline"]["text"]) for r in members]).wer,
    }


SECTION = "Home Assistant (Wyoming): audio-stop to transcript"


def report_section(results: dict) -> list[str]:
    """Return the Wyoming section of docs/benchmarks.md."""
    summary, run = results["summary"], results["run"]
    ours, base = summary["stop_to_transcript"], summary["baseline_decode"]
    return [
        f"Generated by `{run['command']}` ({run['started']}, {run['pace']}, load average "
        f"{run['load_average_at_end'][0]} at the end on {results['machine']['cores']} cores: a busy machine, the "
        f"times are noisy); every figure is in [wyoming.json](../bench/results/wyoming.json). Commands sent with the "
        f"`wyoming` client as Home Assistant sends them; the baseline decodes the whole file after `audio-stop`, as "
        f"wyoming-faster-whisper does. Whisper `{results['models']['whisper']}`. How: docs/home-assistant.md.",
        "",
        "| | household members | baseline |",
        "|---|---|---|",
        f"| `audio-stop` to `transcript`, median (p95) | {ours['p50_ms']:.0f} ms ({ours['p95_ms']:.0f} ms) | "
        f"{base['p50_ms']:.0f} ms ({base['p95_ms']:.0f} ms) |",
        f"| WER over {summary['member_files']} member commands | {summary['wer_members']:.1%} | {summary['wer_baseline']:.1%} |",
        f"| commands with text | {summary['members_with_text']} of {summary['member_files']} | |",
        f"| guest's commands with text (enrolled, not in the household) | {summary['guests_with_text']} of "
        f"{summary['guest_files']} ({summary['guest_words']} words) | |",
    ]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
    port = _free_port()
    service = StartedServer(env={"VOICEGATE_WYOMING_PORT": str(port)}, log_path=args.out.with_suffix(".server.log"))
    try:
        models = Models(os.environ.get("VOICEGATE_MODELS_DIR", Config.MODELS_DIR), whisper, beam, threads)
        service.wait_ready()
        pairs = enroll_halves(service, speech)
        speakers = sorted({user.rsplit("-", 1)[0] for user, _ in pairs})
        guest = speakers[0]  # enrolled, and not in the household
        members = [f"{speaker}-a" for speaker in speakers if speaker != guest]
        household(service, members)
        # A member's files are tested as that member; the guest's own files as the guest's.
        tests = [(user, path) for user, path in pairs if user in members or user == f"{guest}-a"]
        logger.info("household %s, guest %s; %d commands through Wyoming on port %d", members, guest, len(tests), port)
        records = []
        for user, path in tests:
            reply = asyncio.run(command(port, followed(speech.audio(path), args.silence), realtime=not args.fast))
            records.append({"user": user, "member": user in members, "file": speech.label(path),
                            "seconds": round(speech.seconds(path), 3), "type": reply["type"],
                            "text": reply["data"].get("text", "") if reply["type"] == "transcript" else "",
                            "error": reply["data"].get("code") if reply["type"] == "error" else None,
                            "speakers": [s["user"] for s in reply["data"].get("context", {}).get("speakers", [])],
                            "stop_to_transcript_s": reply["stop_to_transcript_s"]})
            logger.info("%-40s %-12s %.3f s %r", records[-1]["file"], user, reply["stop_to_transcript_s"],
                        records[-1]["text"][:60])
        base = baseline(models, speech, [path for _, path in tests])
    finally:
        service.close()
    for record, (_, path) in zip(records, tests):
        record["baseline"] = base[path]
    summary = summarise(records, speech)
    results = {
        "run": {"command": " ".join([".venv/bin/python -m bench.wyoming", *(argv or [])]),
                "started": started.strftime("%Y-%m-%d %H:%M UTC"), "duration_s": round(time.monotonic() - began, 1),
                "pace": "as fast as possible" if args.fast else "at real-time pace", "silence_s": args.silence,
                "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "machine": about,
        "models": {"whisper": whisper, "beam_size": beam, "threads_per_call": threads},
        "summary": summary,
        "files": records,
    }
    save(results, args.out)
    if args.out.resolve() == (RESULTS / "wyoming.json").resolve():
        from .report import put_section

        put_section(DEV_REPORT, SECTION, report_section(results))
    print(f"\nWyoming, {summary['member_files']} member commands and {summary['guest_files']} of a guest:")
    print(f"  audio-stop to transcript, median: {summary['stop_to_transcript']['p50_ms']} ms "
          f"(p95 {summary['stop_to_transcript']['p95_ms']} ms)")
    print(f"  baseline, whole file decoded after audio-stop: {summary['baseline_decode']['p50_ms']} ms")
    print(f"  WER members {summary['wer_members']:.3f}, baseline {summary['wer_baseline']:.3f}; "
          f"members with text {summary['members_with_text']}/{summary['member_files']}; "
          f"guest files with text {summary['guests_with_text']}/{summary['guest_files']}; errors {summary['errors']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
