"""Meeting mode: who said what, and what it costs, on meetings made from a speech set.

    python -m bench.meeting [--data DIR] [--meetings N] [--speakers A,B,C[,D,E,F]] [--stranger S] [--out FILE.json]

A real server (scripts/serve.sh on a free port, fresh database) enrolls three speakers of
the set on three files each, and three more voices for a roster of six (more speakers of
the set when it has them, else espeak-ng voices, who never speak in the meetings); they are
spread over the set unless ``--speakers`` names them (and ``--stranger`` the stranger). Each
meeting is one further file of each of the three and one of a stranger (a speaker of the
set who is on no roster), in a rotating order, joined three ways: 1 s pauses, back to back,
and interrupting (each turn starts 0.5 s before the last one ends). Every meeting goes to
``POST /api/v1/transcribe`` with a roster of 3 and of 6 (bench/meetings.py scores it):

- attribution accuracy: share of the roster speakers' words found under their own name;
  plain faster-whisper's share on each turn alone is given beside it, for scale;
- cpWER: the roster speakers' word error rate, each speaker's lines against their words;
- stranger words leaked (the goal is 0), and lines of the stranger's that named someone;
- unattributed: the share of the roster speakers' turn time in lines named for nobody (and of
  it, the share the stranger spoke over); how close a named line comes to the stranger's turn;
- real-time factor (request time / audio time) and the server's CPU seconds per audio second.

Results go to bench/results/meeting-<set>.json under ``meeting``; the figures are quoted in
docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import requests

from . import calls, machine
from .cohort import COHORT_SPEAKERS
from .data import SpeechSet, espeak, pcm16
from .meetings import SAMPLE_RATE, compose, plain_found, score
from .output import quiet_logging, save
from .paths import DEFAULT_DATA, RESULTS

logger = logging.getLogger("bench.meeting")
STYLES = {"pauses": 1.0, "back_to_back": 0.0, "interrupting": -0.5}
ROSTERS = (3, 6)
# Three clips of at least 1 s of speech make a voiceprint here (the set's files are short).
POLICY = {"VOICEGATE_POLICY_ENROLL_MIN_CLIPS": "3", "VOICEGATE_POLICY_ENROLL_MIN_CLIP_SPEECH": "1.0",
          "VOICEGATE_POLICY_ENROLL_MIN_TOTAL_SPEECH": "3.0"}
# espeak-ng voices that pad a roster when the set has too few speakers, with what they read to enroll.
PADDING = ("en-us+m3", "en+f2", "en+f4", "en-us+m7", "en+m1")
PADDING_TEXT = (
    "Please send the quarterly report to the finance team before Friday afternoon.",
    "Our neighbour bought seventeen yellow umbrellas during the winter sale yesterday.",
    "The library closes early on public holidays, so return your books on time.",
)


def main(argv: list[str] | None = None) -> int:
    """Run the meeting benchmark and write its results."""
    parser = argparse.ArgumentParser(prog="python -m bench.meeting", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--meetings", type=int, default=4, help="meetings per style (each uses a file of every speaker)")
    parser.add_argument("--speakers", help="the speakers who enroll, comma-separated: three who speak, up to three more")
    parser.add_argument("--stranger", help="the speaker on no roster")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    quiet_logging()
    speakers = args.speakers.split(",") if args.speakers else None
    results = run(SpeechSet(args.data), args.meetings, speakers, args.stranger)
    suffix = "-" + speakers[0].split("-")[0] if speakers else ""
    save(results, args.out or RESULTS / f"meeting-{args.data.resolve().name}{suffix}.json",
         shown=results["meeting"]["summary"])
    return 0


def _eligible(speech: SpeechSet, named: list[str] | None = None, stranger: str | None = None) -> tuple[list[list], list]:
    """Return the speakers who may enroll (four or more English files with transcripts), and the stranger's files.

    ``named``: these speakers, in this order; ``stranger``: this one. Otherwise speakers whose
    voices are in the shipped AS-norm cohort are left out (the service holds a voice against
    the cohort voices nearest it, so such a speaker is never named: that would measure the
    cohort, not meetings), and the stranger is one too few files to enroll, else the last one.
    """
    groups = {name: [u for u in group if u.transcript and u.language == "en"]
              for name, group in speech.by_speaker().items()}
    missing = [n for n in (named or []) + ([stranger] if stranger else []) if not groups.get(n)]
    if missing:
        raise SystemExit(f"no English files with transcripts for {', '.join(missing)} in {speech.root}")
    if named:
        eligible = [groups[n] for n in named]
    else:
        eligible = [g for n, g in groups.items() if n not in COHORT_SPEAKERS and n != stranger and len(g) >= 4]
    if len(eligible) < 3:
        raise SystemExit(f"{speech.root} needs three speakers with four English files with transcripts")
    if stranger:
        return eligible, groups[stranger]
    chosen = {g[0].speaker for g in eligible}
    others = [g for n, g in groups.items() if g and n not in chosen and len(g) < 4]
    if others:
        return eligible, max(others, key=len)
    if not named:
        return eligible[:-1], eligible[-1]
    return eligible, max((g for n, g in groups.items() if g and n not in chosen), key=len)


def run(speech: SpeechSet, per_style: int, named: list[str] | None = None, stranger_name: str | None = None) -> dict:
    """Measure meeting mode; return the results."""
    from app.config import Config

    from .baseline import Models
    from .server import StartedServer

    began = time.monotonic()
    eligible, stranger = _eligible(speech, named, stranger_name)
    # Spread over the set: the three who speak, then three more for the larger roster.
    step = 1 if named else max(1, len(eligible) // 6)
    chosen = eligible[::step][:6]
    speakers, extra = chosen[:3], chosen[3:6]
    service = StartedServer(env=POLICY)
    models = Models(Config.MODELS_DIR, Config.WHISPER_MODEL, Config.WHISPER_BEAM_SIZE, 1)
    totals = {size: _empty() for size in ROSTERS}
    voiced = _voiced()
    by_style = {style: _empty() for style in STYLES}
    try:
        service.wait_ready()
        names = []
        for index, group in enumerate(speakers + extra):
            name = f"m{index}"
            _enroll(service, name, [speech.audio(u.path) for u in group[:3]])
            names.append(name)
        padding = []
        for voice in PADDING[:max(0, 6 - len(names))]:
            name = f"pad-{voice.replace('+', '-')}"
            _enroll(service, name, [espeak(voice, text, speed=150) for text in PADDING_TEXT])
            padding.append(voice)
            names.append(name)
        token = _token(service, names[0])
        tests = [group[3:] for group in speakers]
        count = min(per_style, *(len(t) for t in tests))
        for number in range(count):
            parts = [(names[i], tests[i][number].transcript, speech.audio(tests[i][number].path)) for i in range(3)]
            odd = stranger[number % len(stranger)]
            parts.insert(1 + number % 3, (None, odd.transcript, speech.audio(odd.path)))
            parts = parts[number % 4:] + parts[:number % 4]  # each voice opens a meeting in turn
            heard = {i: models.transcriber.transcribe(audio, language="en").text for i, (_, _, audio) in enumerate(parts)}
            own_heard = {str(i): text for i, text in heard.items() if parts[i][0]}
            for style, gap in STYLES.items():
                meeting = compose(f"{style}-{number}", parts, gap=gap)
                plain = plain_found(meeting, heard)
                for size in ROSTERS:
                    before = service_cpu(service)
                    started = time.perf_counter()
                    reply = _transcribe(service, token, names[:size], meeting.audio)
                    elapsed = time.perf_counter() - started
                    cpu = service_cpu(service) - before
                    if "lines" not in reply:
                        raise SystemExit(f"the meeting failed: {reply}")
                    found = score(meeting, reply["lines"], heard=own_heard, voiced=voiced)
                    found.update(audio_seconds=meeting.seconds, seconds=elapsed, cpu_seconds=cpu, plain_words=plain,
                                 meetings=1)
                    _add(totals[size], found)
                    if size == ROSTERS[0]:
                        _add(by_style[style], found)
                    logger.info("%s, roster %d: %d/%d words attributed (plain %d), %d leaked, %.2f x real time",
                                meeting.name, size, found["attributed_words"], found["reference_words"], plain,
                                len(found["leaked_words"]), elapsed / meeting.seconds)
    finally:
        service.close()
    checks = _check_cost(speech, models)
    summary = {f"roster_{size}": _summary(stats) for size, stats in totals.items()}
    summary.update({f"style_{style}": _summary(stats) for style, stats in by_style.items()})
    return {"meeting": {"data": str(speech.root), "speakers": [g[0].speaker for g in speakers],
                        "extra_roster": [g[0].speaker for g in extra] + [f"espeak-ng {v}" for v in padding],
                        "stranger": stranger[0].speaker, "styles": STYLES, "summary": summary,
                        "check_cost_ms": checks,
                        "seconds": round(time.monotonic() - began, 1)},
            "machine": machine.describe(), "finished": datetime.now(timezone.utc).isoformat()}


def _check_cost(speech: SpeechSet, models, repeats: int = 50) -> dict:
    """Return the milliseconds of one window check, in this process: the embedding, and identification per roster size.

    A meeting makes one check a second of speech whatever its roster; only the identification
    (AS-norm against the cohort for each member) grows with the roster.
    """
    from app.gate import calibration, decide
    from app.gate.policy import Policy

    paths = [u.path for u in speech.utterances][:12]
    window = speech.audio(paths[0])[:32000]
    started = time.perf_counter()
    for _ in range(repeats // 5):
        embedding = models.speaker.embed(window)
    embed_ms = (time.perf_counter() - started) / (repeats // 5) * 1000
    voices = {f"v{i}": models.speaker.embed(speech.audio(path)) for i, path in enumerate(paths[1:11])}
    quality = calibration.measure_quality(window, 2.0)
    cost = {"embed_2s_window": round(embed_ms, 2)}
    decide.identify(embedding, voices, Policy(), quality)  # warm-up: the cohort loads once
    for size in (2, 3, 6, 10):
        roster = dict(list(voices.items())[:size])
        started = time.perf_counter()
        for _ in range(repeats):
            decide.identify(embedding, roster, Policy(), quality)
        cost[f"identify_roster_{size}"] = round((time.perf_counter() - started) / repeats * 1000, 3)
    return cost


def _voiced():
    """Return a function giving a turn's speech (start, end) in seconds: its file's silent ends left out (Silero VAD)."""
    from app.audio.vad import Vad

    vad = Vad()

    def voiced(turn) -> tuple[float, float]:
        segments = vad.segments(turn.audio)
        if not segments:
            return turn.start, turn.start
        return turn.start + segments[0].start / SAMPLE_RATE, turn.start + segments[-1].end / SAMPLE_RATE

    return voiced


def _empty() -> dict:
    return {"reference_words": 0, "attributed_words": 0, "plain_words": 0, "errors": 0, "leaked_words": [],
            "stranger_lines_named": 0, "attributed_seconds": 0.0, "right_seconds": 0.0, "audio_seconds": 0.0,
            "roster_seconds": 0.0, "unattributed_seconds": 0.0, "unattributed_alongside_stranger_seconds": 0.0,
            "stranger_clearances": [],
            "seconds": 0.0, "cpu_seconds": 0.0, "meetings": 0}


def _add(total: dict, found: dict) -> None:
    for key in total:
        total[key] += found.get(key, [] if isinstance(total[key], list) else 0)


def _summary(stats: dict) -> dict:
    words = max(1, stats["reference_words"])
    audio = max(1e-9, stats["audio_seconds"])
    return {"meetings": stats["meetings"], "audio_seconds": round(stats["audio_seconds"], 1),
            "attribution_accuracy": round(stats["attributed_words"] / words, 4),
            "plain_recall": round(stats["plain_words"] / words, 4),
            "cpwer": round(stats["errors"] / words, 4),
            "stranger_words_leaked": len(stats["leaked_words"]), "leaked": stats["leaked_words"][:50],
            "stranger_lines_named": stats["stranger_lines_named"],
            # Seconds from a named line to the nearest place only the stranger speaks (the VAD's
            # speech of their turn): the least of them, and how many reach into it.
            "stranger_clearance_min_s": min(stats["stranger_clearances"], default=None),
            "named_lines_into_stranger": sum(c < 0 for c in stats["stranger_clearances"]),
            "line_time_accuracy": round(stats["right_seconds"] / max(1e-9, stats["attributed_seconds"]), 4),
            "unattributed_share": round(stats["unattributed_seconds"] / max(1e-9, stats["roster_seconds"]), 4),
            "unattributed_alongside_stranger_share": round(
                stats["unattributed_alongside_stranger_seconds"] / max(1e-9, stats["roster_seconds"]), 4),
            "real_time_factor": round(stats["seconds"] / audio, 3),
            "cpu_seconds_per_audio_second": round(stats["cpu_seconds"] / audio, 3)}


def _enroll(service, name: str, clips) -> None:
    enrolled = calls.enroll(service.ws_url, name, service.invite(name), clips)
    if enrolled["state"] != "enrolled":
        raise SystemExit(f"{name} did not enroll: {enrolled}")


def _token(service, name: str) -> str:
    """Return a session token for ``name``, as an accepted voice login issues (the roster's chooser)."""
    from app.gate import tokens
    from app.store.models import User

    with service._admin.app_context():
        user = User.by_name(name)
        return tokens.issue(service._admin.config["SECRET_KEY"], user.public_id, user.name, "bench")


def _transcribe(service, token: str, roster: list[str], audio) -> dict:
    params = {"roster": ",".join(roster), "encoding": "pcm_s16le", "sample_rate": 16000}
    return requests.post(f"{service.url}/api/v1/transcribe", params=params, data=pcm16(audio), timeout=600,
                         headers={"Authorization": f"Bearer {token}"}).json()


def service_cpu(service) -> float:
    """Return the CPU seconds (user and system) the server's processes have used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, pending = 0, [service._process.pid]
    while pending:
        pid = pending.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
            for task in Path(f"/proc/{pid}/task").iterdir():
                children = (task / "children").read_text().split()
                pending += [int(child) for child in children]
        except OSError:
            continue
    return total / ticks


if __name__ == "__main__":
    raise SystemExit(main())
