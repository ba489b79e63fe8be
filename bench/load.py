"""The server under load and abuse: resident memory and answer times (docs/benchmarks.md, "Load and memory").

    python -m bench.load [--data DIR] [--out FILE.json] [--soak 1000] [--uploads 30] [--samples 20]

Starts the real server (scripts/serve.sh, as ``python -m bench`` does) and enrolls one user, then
reports the worker's resident memory (RSS) at rest, after a soak of verifications, and after
rejected large uploads; and the answer times of ``/healthz`` and of a verify (HTTP, a ~2 s clip)
without abuse and while 64 idle WebSockets, 64 status sockets and 40 trickling uploads are held
(from 8 loopback addresses, as from other hosts). Writes bench/results/load.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import requests

from clients import voicegate as client

from . import machine
from .abuse import Abuse
from .output import QUIET_LOGGERS
from .paths import DEFAULT_DATA, DEV_REPORT, RESULTS

logger = logging.getLogger(__name__)

ENROLL = ["wav/ljspeech/LJ001-0003.wav", "wav/ljspeech/LJ001-0005.wav", "wav/ljspeech/LJ001-0007.wav"]
PROBE = "wav/ljspeech/LJ001-0004.wav"
UPLOAD_MB = 200


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the speech-dev set (LJ Speech clips)")
    parser.add_argument("--out", type=Path, default=RESULTS / "load.json", help="the results JSON")
    parser.add_argument("--soak", type=int, default=1000, help="verifications in the soak (default 1000)")
    parser.add_argument("--uploads", type=int, default=30, help=f"rejected {UPLOAD_MB} MB uploads (default 30)")
    parser.add_argument("--samples", type=int, default=20, help="timed requests of each kind per phase (default 20)")
    return parser.parse_args(argv)


def _seconds(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def _summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"n": len(values), "p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 1),
            "max_ms": round(ordered[-1] * 1000, 1)}


def answer_times(url: str, wav: bytes, samples: int) -> dict:
    """Time ``samples`` /healthz requests and ``samples`` verifies, one after another."""
    def health():
        assert requests.get(url + "/healthz", timeout=60).ok

    def verify():
        reply = requests.post(url + "/api/v1/verify?user=lj", data=wav, timeout=60, headers={"Content-Type": "audio/wav"})
        assert reply.ok and reply.json()["state"] == "accept", reply.text

    return {"healthz": _summary([_seconds(health) for _ in range(samples)]),
            "verify": _summary([_seconds(verify) for _ in range(samples)])}


def soak(url: str, wav: bytes, count: int) -> float:
    """Run ``count`` verifications from two clients at once; return the seconds it took."""
    def verify(_):
        reply = requests.post(url + "/api/v1/verify?user=lj", data=wav, timeout=120, headers={"Content-Type": "audio/wav"})
        return reply.status_code

    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        codes = list(pool.map(verify, range(count)))
    refused = sum(code != 200 for code in codes)
    if refused:
        logger.warning("%d of %d verifications were not answered 200", refused, count)
    return time.perf_counter() - started


def rejected_uploads(url: str, count: int) -> dict:
    """Send ``count`` uploads of UPLOAD_MB each, a third announced by length, the rest chunked (some multipart)."""
    block = bytes(1 << 20)
    outcomes: dict[str, int] = {}

    def chunks():
        for _ in range(UPLOAD_MB):
            yield block

    for i in range(count):
        kind = ("length", "chunked", "multipart")[i % 3]
        try:
            if kind == "length":
                reply = requests.post(url + "/api/v1/verify?user=lj", data=bytes(UPLOAD_MB << 20), timeout=120,
                                      headers={"Content-Type": "audio/wav"})
            elif kind == "chunked":
                reply = requests.post(url + "/api/v1/verify?user=lj", data=chunks(), timeout=120,
                                      headers={"Content-Type": "audio/wav"})
            else:
                boundary = "voicegatebench"
                head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"a.wav\"\r\n"
                        "Content-Type: audio/wav\r\n\r\n").encode()
                tail = f"\r\n--{boundary}--\r\n".encode()
                reply = requests.post(url + "/api/v1/verify?user=lj", data=iter([head, *chunks(), tail]), timeout=120,
                                      headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
            outcome = f"{kind} {reply.status_code}"
        except requests.RequestException as error:
            outcome = f"{kind} {error.__class__.__name__}"  # the server answered 413 and closed mid-upload
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


def hold_abuse(url: str) -> Abuse:
    """Open 64 idle WebSockets, 64 status sockets and 40 trickling uploads from 127.0.0.10-17."""
    abuse = Abuse()
    for i in range(64):
        abuse.start("idle_ws", url, f"127.0.0.{10 + i % 8}")
        abuse.start("status", url, f"127.0.0.{10 + i % 8}")
    for i in range(40):
        abuse.start("slow_upload", url, f"127.0.0.{10 + i % 8}")
    time.sleep(1.0)
    return abuse


def report_section(results: dict) -> list[str]:
    """Return the "Load and memory" section of docs/benchmarks.md for a results JSON of this benchmark."""
    run, memory, times = results["run"], results["memory_mb"], results["answer_times"]
    lines = [f"Generated by `{run['command']}` on {run['started']} ({run['duration_s'] / 60:.1f} min), "
             f"load average {run['load_average_at_end'][0]} at the end; every figure is in "
             "[load.json](../bench/results/load.json). How the server is run and why: [deployment](deployment.md).", "",
             "| resident memory of the worker (both models loaded) | MB |", "|---|---|"]
    lines += [f"| {label} | {value:.0f} |" for label, value in memory.items()]
    lines += [f"| peak | {results['peak_rss_mb']:.0f} |", "",
              "| answer time (ms, p50 / p95 / max) | /healthz | verify (HTTP, ~2 s clip) |", "|---|---|---|"]
    for phase, kinds in times.items():
        cells = [f"{k['p50_ms']:.0f} / {k['p95_ms']:.0f} / {k['max_ms']:.0f}" for k in (kinds["healthz"], kinds["verify"])]
        lines.append(f"| {phase} ({kinds['verify']['n']} each, one after another) | {cells[0]} | {cells[1]} |")
    abusive = "; ".join(f"{kind}: " + ", ".join(f"{n}× {outcome}" for outcome, n in outcomes.items())
                        for kind, outcomes in results["abusive_clients"].items())
    uploads = ", ".join(f"{n}× {outcome}" for outcome, n in results["rejected_uploads"].items())
    lines += ["", f"- **Idle-socket load**: 64 idle WebSockets (an empty frame every 2 s), 64 held status sockets and "
              f"40 uploads trickling 10 bytes a second, from 8 loopback addresses; outcomes: {abusive} "
              "(101: the socket was accepted; an empty frame before a start message ends the session at once, "
              "so the client's next send fails with BrokenPipeError; held: the upload was still trickling when "
              "the phase ended).",
              f"- **Soak**: {results['soak']['verifications']} verifications from two clients at once, "
              f"{results['soak']['per_second']} a second.",
              f"- **Rejected uploads**: {UPLOAD_MB} MB each, by Content-Length, chunked, and chunked multipart: {uploads}.",
              f"- **Tracebacks in the server log**: {results['tracebacks_in_log']}.", "",
              "Memory is VmRSS of the gunicorn worker, read from /proc 2 s after each phase. "
              "Regenerate with `.venv/bin/python -m bench.load` (about "
              f"{run['duration_s'] / 60:.0f} min here; it starts and stops its own server).", ""]
    return lines


def write_report(results: dict, report: Path = DEV_REPORT) -> None:
    """Put the "Load and memory" section into ``report``, before "How the figures are made"."""
    text = report.read_text() if report.exists() else ""
    section = "\n".join(["## Load and memory", "", *report_section(results)])
    if "## Load and memory\n" in text:
        before, rest = text.split("## Load and memory\n", 1)
        after = rest[rest.find("\n## "):] if "\n## " in rest else "\n"
        text = before + section + after
    elif "## How the figures are made" in text:
        before, after = text.split("## How the figures are made", 1)
        text = before + section + "\n## How the figures are made" + after
    else:
        text = text + "\n" + section
    report.write_text(text)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the figures and write the results JSON."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    from .server import StartedServer

    data = args.data.resolve()
    wav = (data / PROBE).read_bytes()
    began, started = time.monotonic(), datetime.now(timezone.utc)
    about = machine.describe()
    service = StartedServer(log_path=args.out.with_suffix(".server.log"))
    memory, times = {}, {}

    def rss(label: str) -> None:
        time.sleep(2.0)  # let finished requests' threads and buffers go
        memory[label] = service.memory()
        logger.info("RSS %s: %s MB", label, memory[label]["rss_mb"])

    try:
        service.wait_ready()
        enrolled = client.run("enroll", [data / f for f in ENROLL], service.ws_url, invite=service.invite("lj"),
                              echo=lambda _: None)
        assert enrolled["state"] == "enrolled", enrolled
        rss("loaded, after one enrollment")
        answer_times(service.url, wav, 5)  # the first model calls of a process are slower
        rss("at rest, after warm-up")
        times["quiet"] = answer_times(service.url, wav, args.samples)
        logger.info("quiet: %s", times["quiet"])
        abuse = hold_abuse(service.url)
        try:
            times["under idle-socket load"] = answer_times(service.url, wav, args.samples)
            rss("while the idle sockets are held")
        finally:
            abuse.end()
        logger.info("under load: %s; abusive clients %s", times["under idle-socket load"],
                    {k: dict(v) for k, v in abuse.outcomes.items()})
        rss("after the idle sockets left")
        soak_seconds = soak(service.url, wav, args.soak)
        rss(f"after a soak of {args.soak} verifications")
        uploads = rejected_uploads(service.url, args.uploads)
        rss(f"after {args.uploads} rejected {UPLOAD_MB} MB uploads")
        soak(service.url, wav, 100)
        rss("after 100 more verifications")
        log = service.log_path.read_text(errors="replace")
    finally:
        service.close()
    results = {
        "run": {"command": " ".join([".venv/bin/python -m bench.load", *(argv or [])]),
                "started": started.strftime("%Y-%m-%d %H:%M UTC"), "duration_s": round(time.monotonic() - began, 1),
                "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                "environment": {k: os.environ[k] for k in sorted(os.environ) if k.startswith(("VOICEGATE_", "MALLOC_"))}},
        "machine": about,
        "memory_mb": {label: value["rss_mb"] for label, value in memory.items()},
        "peak_rss_mb": max(value["peak_rss_mb"] or 0 for value in memory.values()),
        "answer_times": times,
        "abusive_clients": {k: {str(o): n for o, n in v.items()} for k, v in abuse.outcomes.items()},
        "soak": {"verifications": args.soak, "seconds": round(soak_seconds, 1),
                 "per_second": round(args.soak / soak_seconds, 2)},
        "rejected_uploads": uploads,
        "tracebacks_in_log": log.count("Traceback"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("memory_mb", "peak_rss_mb", "answer_times", "soak",
                                              "rejected_uploads", "tracebacks_in_log")}, indent=2))
    print(f"wrote {args.out}")
    if args.out.resolve() == (RESULTS / "load.json").resolve():
        write_report(results)
        print(f"wrote the load section of {DEV_REPORT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
