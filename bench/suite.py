"""Run the whole benchmark: models in-process for the baselines, then the service over its public APIs.

    python -m bench [--data DIR] [--out FILE.json] [--url URL] [--realtime] [--name NAME]

Writes bench/results/<name>.json (or --out), plots beside it, and a Markdown report:
docs/benchmarks.md for the dev set, else <out>.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from . import asr, machine, report, speed, sv
from .data import SpeechSet
from .output import QUIET_LOGGERS
from .paths import DEFAULT_DATA, DEV_REPORT, RESULTS, ROOT

logger = logging.getLogger(__name__)

# Files timed again with another thread count per call (enough for a median, short enough to stay cheap).
OTHER_THREADS_FILES = 10


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="a speech set in the speech-dev format "
                        "(default: $VOICEGATE_SPEECH_DEV or ../shared/data/speech-dev)")
    parser.add_argument("--out", type=Path, help="the results JSON (default: bench/results/<name>.json)")
    parser.add_argument("--report", type=Path,
                        help="the Markdown report (default: docs/benchmarks.md for the dev set, else beside --out)")
    parser.add_argument("--name", help="the run's name (default: 'dev' for the dev set, else the data folder's name)")
    parser.add_argument("--url", help="measure a server already running here instead of starting one")
    parser.add_argument("--database-url", default=os.environ.get("VOICEGATE_DATABASE_URL"),
                        help="with --url: the server's database, where the suite creates its users")
    parser.add_argument("--realtime", action="store_true", help="dictate the transcription files at real-time pace")
    parser.add_argument("--streams", default="1,2,4,8", help="concurrency levels of the dictation sweep (default 1,2,4,8)")
    parser.add_argument("--samples", type=int, default=10, help="requests per ~5 s latency check (default 10)")
    parser.add_argument("--other-threads-files", type=int, default=OTHER_THREADS_FILES, metavar="N",
                        help=f"files timed again with another thread count per call (default {OTHER_THREADS_FILES})")
    parser.add_argument("--cpus", help="run the bench and the server it starts on these CPUs only (e.g. 0, or 0,1), "
                        "as taskset would: a slow machine's figures on a fast one")
    parser.add_argument("--neighbours", type=int, default=0,
                        help="busy processes beside the run, as other tenants of a shared machine (default 0)")
    parser.add_argument("--render", type=Path, metavar="FILE.json",
                        help="measure nothing: redraw the plots and rewrite the report of an earlier run's JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the suite and write the results, plots and report; return the exit status."""
    args = parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    # A filter on the handler: SpeechBrain sets its own loggers' levels when it is imported.
    handler.addFilter(lambda record: record.levelno >= logging.WARNING or not record.name.startswith(QUIET_LOGGERS))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    if args.render:
        out = args.render.resolve()
        results = json.loads(out.read_text())
        is_dev = results["run"]["name"] == "dev" and out == (RESULTS / "dev.json").resolve()
        write(results, out, (args.report or (DEV_REPORT if is_dev else out.with_suffix(".md"))).resolve(), rendering=True)
        return 0
    data = args.data.resolve()
    is_dev = data == DEFAULT_DATA.resolve()
    name = args.name or ("dev" if is_dev else data.name)
    out = (args.out or RESULTS / f"{name}.json").resolve()
    report_path = (args.report or (DEV_REPORT if is_dev and name == "dev" and not args.out else out.with_suffix(".md"))).resolve()
    levels = [int(level) for level in args.streams.split(",") if level.strip()]
    command = " ".join([".venv/bin/python -m bench", *(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))])
    cpus = [int(c) for c in args.cpus.split(",")] if args.cpus else None
    with machine.limited(cpus, args.neighbours) as limits:
        results = run(args, data, name, levels)
    results["run"]["command"] = command
    results["run"]["cpu_limit"] = limits if cpus or args.neighbours else None
    write(results, out, report_path)
    return 0


def run(args: argparse.Namespace, data: Path, name: str, levels: list[int]) -> dict:
    """Measure everything; return the results (without writing them)."""
    from app.config import Config
    from app.engines.speaker import MODEL_ID

    from . import baseline
    from .server import StartedServer, connect

    began, started = time.monotonic(), datetime.now(timezone.utc)
    speech = SpeechSet(data)
    prefix = f"bench{secrets.token_hex(3)}-"
    about = machine.describe()
    logger.info("data %s: %d utterances, %d trials", data, len(speech.utterances), len(speech.trials))

    if args.url:
        service = connect(args.url, args.database_url)
        whisper = service.health()["models"]["whisper"]["name"]
    else:
        logger.info("starting the server (it loads its models while this process loads its own)")
        log_path = RESULTS / f"{name}-server.log" if args.out is None else Path(args.out).with_suffix(".server.log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        service = StartedServer(log_path=log_path)
        whisper = os.environ.get("VOICEGATE_WHISPER_MODEL", Config.WHISPER_MODEL)
    beam = int(os.environ.get("VOICEGATE_WHISPER_BEAM_SIZE", Config.WHISPER_BEAM_SIZE))
    # Threads per model call as the server configures them (app.config; 1 unless overridden).
    threads = int(os.environ.get("VOICEGATE_INFERENCE_THREADS", getattr(Config, "INFERENCE_THREADS", os.cpu_count() or 1)))
    other_threads = 1 if threads > 1 else (os.cpu_count() or 1)
    models_dir = os.environ.get("VOICEGATE_MODELS_DIR", Config.MODELS_DIR)
    try:
        models = baseline.Models(models_dir, whisper, beam, threads)
        service.wait_ready()
        health = service.health()
        if health["models"]["whisper"]["name"] != whisper:
            raise RuntimeError(f"the server runs Whisper {health['models']['whisper']['name']}, not {whisper}")

        # The baselines while the server idles: their timings are the models' real-time factors.
        embeddings = models.embed_files(speech, speech.files())
        utterances, skipped = asr.handled(speech.utterances, models.transcriber.multilingual)
        transcripts = models.transcribe_files(speech, utterances)
        other = models.with_threads(other_threads, speech, speech.files()[:args.other_threads_files],
                                    utterances[:args.other_threads_files])
        logger.info("baselines done: RTF embedding %s (%d threads: %s), transcription %s (%d threads: %s)",
                    models.embedding_timings.summary()["rtf_p50"], other_threads, other["embedding"]["rtf_p50"],
                    models.transcription_timings.summary()["rtf_p50"], other_threads, other["transcription"]["rtf_p50"])

        sv_raw = sv.run_service(service, speech, prefix) if speech.trials else None
        asr_records = asr.run_service(service, speech, utterances, prefix, args.realtime) if utterances else []
        pairs = _genuine_pairs(speech, sv_raw, asr_records)
        logger.info("latency checks on ~5 s utterances (%d each)", args.samples)
        verify_5s = speed.verify_latency(service, speech, speed.pick(pairs, 4.0, 6.0, args.samples))
        final_5s = speed.final_latency(service, speech, speed.pick(pairs, 4.0, 6.0, args.samples))
        final_5s_breath = speed.final_latency(service, speech, speed.pick(pairs, 4.0, 6.0, args.samples),
                                              silence=speed.BREATH_SECONDS)
        concurrency = speed.sweep(service, speech, pairs, levels)
        memory = service.memory()
        server_info = {"started_by_suite": args.url is None, "url": service.url, "policy": service.policy or {},
                       "health": health}
    finally:
        service.close()

    results = {
        "run": {"name": name, "started": started.strftime("%Y-%m-%d %H:%M UTC"),
                "duration_s": round(time.monotonic() - began, 1), "pace": "at real-time pace" if args.realtime else
                "as fast as possible", "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "data": {"path": _shown(data), "files": len(speech.files()), "speakers": len({u.speaker for u in speech.utterances}),
                 "trials": len(speech.trials), "targets": sum(t.target for t in speech.trials)},
        "machine": about,
        "models": {"speaker": MODEL_ID + (" + CAM++ campplus_cn_en_common (fused)"
                                          if health["models"].get("campplus", {}).get("used") else ""),
                   "speaker_runtime": health["models"]["speaker"].get("runtime"), "whisper": whisper, "whisper_beam_size": beam, "threads_per_call": threads,
                   "whisper_multilingual": models.transcriber.multilingual, "vad": "Silero (as shipped in faster-whisper)"},
        "server": server_info,
        "memory": memory or {"rss_mb": None, "peak_rss_mb": None, "master_rss_mb": None, "total_rss_mb": None},
    }
    if sv_raw is not None:
        base = sv.baseline_scores(speech, embeddings)
        for record, scores in zip(sv_raw["trials"], base):
            record["baseline"] = {key: round(value, 4) for key, value in scores.items()}
        results["sv"] = sv.summarise(sv_raw, base, speech.trials)
    else:
        results["sv"] = None
    results["asr"] = asr.summarise(asr_records, utterances, transcripts, skipped) if asr_records else None
    for record, utterance in zip(asr_records, utterances):
        record.update(reference=utterance.transcript, baseline_text=transcripts[utterance.path]["text"])

    verify_all = [r["ws"]["latency_s"] for r in (sv_raw or {"trials": []})["trials"] if r["ws"]["latency_s"] is not None]
    verify_http = [r["http"]["latency_s"] for r in (sv_raw or {"trials": []})["trials"] if r["http"]["latency_s"] is not None]
    finals = [r["final_latency_s"] for r in asr_records if r.get("final_latency_s") is not None]
    from .metrics import summary_ms

    verify_summary, final_summary = summary_ms(verify_all), summary_ms(finals)
    if not finals:  # no transcribed files: the ~5 s checks are the only dictations
        final_summary = {k: final_5s[k] for k in ("n", "p50_ms", "p95_ms", "max_ms")}
    results["latency"] = {
        "verify_p50_ms": verify_summary["p50_ms"], "verify_p95_ms": verify_summary["p95_ms"],
        "final_p50_ms": final_summary["p50_ms"], "final_p95_ms": final_summary["p95_ms"],
        "final_pace": results["run"]["pace"] if finals else "at real-time pace",
        "verify": verify_summary, "verify_http": summary_ms(verify_http), "final": final_summary,
    }
    results["speed"] = {
        "rtf": {"threads": models.threads, "embedding": models.embedding_timings.summary(),
                "transcription": models.transcription_timings.summary(), "other_threads": other},
        "verify_5s": verify_5s, "final_5s": final_5s, "final_5s_breath": final_5s_breath,
        "concurrency": concurrency,
        "fall_behind_s": speed.FALL_BEHIND_S,
    }
    results["targets"] = speed.targets(verify_5s, final_5s, concurrency, results["asr"], results["memory"])
    results["details"] = {"sv_enrollments": sv_raw["enrollments"] if sv_raw else [],
                          "sv_trials": sv_raw["trials"] if sv_raw else [], "asr_files": asr_records}
    return results


def _shown(path: Path) -> str:
    """Return a path relative to the repository when it is beside it (as the dev set is), else absolute."""
    if path.is_relative_to(ROOT.parent):
        return os.path.relpath(path, ROOT)
    return str(path)


def _genuine_pairs(speech: SpeechSet, sv_raw: dict | None, asr_records: list[dict]) -> list[speed.Pair]:
    """Return (user, file) pairs of one speaker's voice that the service accepted: for the speed checks."""
    pairs = [speed.Pair(r["user"], speech.resolve(r["file"]), r["seconds"]) for r in asr_records
             if not r.get("error") and r.get("accepted") and not r.get("rejected") and not r.get("not_enough_speech")
             and not r["self_enrolled"]]
    for record in (sv_raw or {"trials": []})["trials"]:
        if record["target"] and record["ws"]["state"] == "accept":
            path = speech.resolve(record["test"])
            pairs.append(speed.Pair(record["user"], path, speech.seconds(path)))
    if not pairs:
        raise RuntimeError("the service accepted no genuine utterance: there is nothing to time")
    return pairs


def write(results: dict, out: Path, report_path: Path, rendering: bool = False) -> None:
    """Write the JSON (unless re-rendering it), the plots beside it, and the Markdown report."""
    out.parent.mkdir(parents=True, exist_ok=True)
    scores = sv.plot_inputs(results["details"]["sv_trials"]) if results.get("sv") else None
    plots = {"scores": out.with_name(f"{out.stem}-sv-scores.png"), "det": out.with_name(f"{out.stem}-sv-det.png"),
             "streams": out.with_name(f"{out.stem}-streams.png")}
    if scores is not None:
        report.plot_scores(plots["scores"], scores, results["sv"]["threshold"])
        report.plot_det(plots["det"], scores, results["sv"]["threshold"],
                        (results["sv"]["far_at_default"], results["sv"]["frr_at_default"]))
    report.plot_streams(plots["streams"], results["speed"]["concurrency"], results["speed"]["fall_behind_s"])
    if not rendering:
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")
        tmp.replace(out)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    text = report.markdown(results, report_path, plots, out)
    if report_path.exists():
        text = report.keep_sections(report_path.read_text(), text)
    report_path.write_text(text)
    logger.info("wrote %s%s and %d plots", "" if rendering else f"{out}, ", report_path, len(plots) if scores is not None else 1)
