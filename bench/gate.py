"""The identity gate on every surface: leaks of another voice, and the owner's words kept.

    python -m bench.gate [--data DIR] [--owners N] [--out FILE.json]

A real server (scripts/serve.sh on a free port, fresh database) enrolls each owner on 10 s of
speech in at least three clips (the sets' files are sentences of 2-3 s of speech; the enroll
page's longer prompts reach the shipped 15 s), on as many of their files as that takes. Each
owner's next file is joined with another speaker of the set and with an espeak-ng voice, in both
orders, 0, 0.25 and 1 s apart (bench/joined.py), and every recording goes to each surface that
returns text: POST /api/v1/transcribe, /ws/voice dictation (the project's client), Kõnele's
WebSocket and Kõnele's HTTP recognize. Reported per surface: the recordings whose partials or
finals held any word only the other voice said (leaks: in its transcript, and neither in the
owner's nor in what plain faster-whisper hears in the owner's part alone; a final whose segment
lies wholly inside the owner's part, and a partial of such a final's stretch, cannot hold the
other voice and are not counted; Kõnele HTTP's reply has no times, and borrows those of
/api/v1/transcribe's answer when the two say the same words), and the owner's word recall in the
finals beside plain faster-whisper's on the owner's part alone. Then every remaining file of the
owners is dictated alone through the gate, for the word error rate beside plain faster-whisper
on the same files. Owners are chosen outside the shipped cohort's speakers.
Results go to bench/results/<name>.json under ``gate``; the figures are quoted in
docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import logging
import time
from datetime import datetime, timezone
from pathlib import Path

import jiwer
import requests

from . import calls, machine
from .cohort import COHORT_SPEAKERS
from .data import SpeechSet, pcm16
from .joined import Part, Text, leaks, recall, recordings, synthetic_parts, timed, words
from .output import quiet_logging, save
from .paths import DEFAULT_DATA, RESULTS

logger = logging.getLogger("bench.gate")
KONELE_CAPS = "audio/x-raw, layout=(string)interleaved, rate=(int)16000, format=(string)S16LE, channels=(int)1"
SURFACES = ("http_transcribe", "ws_voice", "konele_ws", "konele_http")
# Enrollment as close to the shipped minimums (three clips, 15 s of speech) as the sets' short
# files allow, so that owners hold voiceprints like a real user's, not one-sentence ones.
POLICY = {"VOICEGATE_POLICY_ENROLL_MIN_CLIP_SPEECH": "1.0", "VOICEGATE_POLICY_ENROLL_MIN_TOTAL_SPEECH": "10.0"}


def main(argv: list[str] | None = None) -> int:
    """Run the gate benchmark and write its results."""
    parser = argparse.ArgumentParser(prog="python -m bench.gate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--owners", type=int, default=20, help="how many enrolled speakers (English, with transcripts)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    quiet_logging()
    results = run(SpeechSet(args.data), args.owners)
    save(results, args.out or RESULTS / f"gate-{args.data.resolve().name}.json", shown=results["gate"]["summary"])
    return 0


def _owners(speech: SpeechSet, count: int) -> list[list]:
    """Return up to ``count`` speakers with five or more English files that have transcripts, spread over the set.

    Speakers whose voices are in the shipped AS-norm cohort are left out: the service holds a
    voice against the cohort voices nearest it, so such a speaker is never accepted
    (docs/threshold.md, caveats), which would measure the cohort, not the gate.
    """
    eligible = [group for group in speech.by_speaker().values()
                if group[0].speaker not in COHORT_SPEAKERS
                and len([u for u in group if u.transcript and u.language == "en"]) >= 5]
    step = max(1, len(eligible) // count) if count else 1
    return [[u for u in group if u.transcript and u.language == "en"] for group in eligible[::step][:count]]


def run(speech: SpeechSet, owner_count: int) -> dict:
    """Measure the gate on every surface; return the results."""
    from app.config import Config

    from .baseline import Models
    from .server import StartedServer

    began = time.monotonic()
    owners = _owners(speech, owner_count)
    if len(owners) < 2:
        raise SystemExit(f"{speech.root} needs two speakers with five English files with transcripts")
    service = StartedServer(env=POLICY)
    models = Models(Config.MODELS_DIR, Config.WHISPER_MODEL, Config.WHISPER_BEAM_SIZE, 1)
    synthetic = synthetic_parts()
    per_surface = {surface: {"recordings": 0, "leaked_recordings": 0, "leaked_words": [], "recall": [],
                             "plain_recall": []} for surface in SURFACES}
    solo = {"references": [], "service": [], "plain": []}
    enrolled_files = 0
    try:
        service.wait_ready()
        for index, group in enumerate(owners):
            user = f"gate{index}"
            # Two files stay out of enrollment: one to join with other voices, one to dictate alone.
            offered = [speech.audio(u.path) for u in group[:-2]]
            enrolled = calls.enroll(service.ws_url, user, service.invite(user), offered)
            if enrolled["state"] != "enrolled":
                logger.warning("%s (%s) did not enroll: %s", user, group[0].speaker, enrolled)
                continue
            enrolled_files += enrolled["clips_sent"]
            key = _dictation_key(service, user)
            test = group[enrolled["clips_sent"]]
            owner = Part(group[0].speaker, speech.audio(test.path), test.transcript)
            neighbour = owners[(index + 1) % len(owners)][-1]
            others = [Part(neighbour.speaker, speech.audio(neighbour.path), neighbour.transcript), synthetic[index % 2]]
            heard = models.transcriber.transcribe(owner.audio, language="en").text
            plain = recall(owner.text, heard)
            for joined in recordings(owner, others):
                answers = {}
                for surface in SURFACES:
                    texts, finals = answers[surface] = _texts(surface, service, user, key, joined.audio)
                    if surface == "konele_http":
                        texts = _timed_like(texts, *answers["http_transcribe"])
                    found = leaks(joined, texts, heard)
                    stats = per_surface[surface]
                    stats["recordings"] += 1
                    stats["leaked_recordings"] += bool(found)
                    stats["leaked_words"] += found
                    stats["recall"].append(recall(owner.text, " ".join(t for t in finals if t)))
                    stats["plain_recall"].append(plain)
            for utterance in group[enrolled["clips_sent"] + 1:]:
                audio = speech.audio(utterance.path)
                reply = _transcribe(service, user, audio)
                solo["references"].append(" ".join(words(utterance.transcript)))
                solo["service"].append(" ".join(words(reply.get("text"))))
                solo["plain"].append(" ".join(words(models.transcriber.transcribe(audio, language="en").text)))
            logger.info("owner %d/%d (%s) done", index + 1, len(owners), group[0].speaker)
    finally:
        service.close()
    summary = {}
    for surface, stats in per_surface.items():
        gated, plain = sum(stats["recall"]), sum(stats["plain_recall"])
        summary[surface] = {"recordings": stats["recordings"], "leaked_recordings": stats["leaked_recordings"],
                            "leaked_words": stats["leaked_words"][:50],
                            "owner_recall": round(gated / max(1, stats["recordings"]), 4),
                            "plain_recall": round(plain / max(1, stats["recordings"]), 4),
                            "recall_ratio": round(gated / plain, 4) if plain else None}
    summary["solo_dictation"] = {"files": len(solo["references"]),
                                 "wer_service": round(jiwer.wer(solo["references"], solo["service"]), 4),
                                 "wer_plain": round(jiwer.wer(solo["references"], solo["plain"]), 4)}
    return {"gate": {"data": str(speech.root), "owners": [g[0].speaker for g in owners], "summary": summary,
                     "enrollment_files": enrolled_files,
                     "pauses_s": [0.0, 0.25, 1.0], "orders": ["owner_first", "other_first"],
                     "seconds": round(time.monotonic() - began, 1)},
            "machine": machine.describe(), "finished": datetime.now(timezone.utc).isoformat()}


def _timed_like(texts: list[str], http_texts: list[Text], http_finals: list[str | None]) -> list:
    """Return Kõnele HTTP's untimed texts with the times of /api/v1/transcribe's segments, when they say the same.

    Kõnele's reply carries no times, so a word Whisper made up inside the owner's part would
    count as a leak there alone. Both surfaces run the same gate over the same audio: when
    Kõnele's text is word for word the accepted texts of /api/v1/transcribe, those segments'
    times are its times too. Otherwise its texts stay untimed (always counted).
    """
    accepted = " ".join(text for text in http_finals if text)
    if words(" ".join(t for t in texts if t)) == words(accepted):
        return [text for text in http_texts if text[0]]
    return texts


def _dictation_key(service, user: str) -> str:
    """Return ``user``'s personal dictation key, as `flask users key` prints it."""
    from app.protocols import dictation_keys
    from app.store.models import User

    with service._admin.app_context():
        return dictation_keys.key_for(User.by_name(user), service._admin.config["SECRET_KEY"])


def _transcribe(service, user: str, audio) -> dict:
    params = {"user": user, "encoding": "pcm_s16le", "sample_rate": 16000}
    return requests.post(f"{service.url}/api/v1/transcribe", params=params, data=pcm16(audio), timeout=300).json()


def _texts(surface: str, service, user: str, key: str, audio) -> tuple[list[Text], list[str | None]]:
    """Return every text (partials and finals) that ``surface`` gave, with times where known, and the finals' texts."""
    from clients import kaldi

    if surface == "http_transcribe":
        segments = _transcribe(service, user, audio).get("segments", [])
        return [(s["text"], s["start"], s["end"]) for s in segments], [s["text"] for s in segments]
    if surface == "ws_voice":
        shown = calls.dictate(service.ws_url, user, audio, realtime=False).shown
        texts = timed([(m.get("text"), m.get("start"), m.get("end")) if m["type"] == "final" else (m["text"], None, None)
                       for m in shown])
        return texts, [m.get("text") for m in shown if m["type"] == "final"]
    ws_base = service.url.replace("http://", "ws://", 1)
    if surface == "konele_ws":
        stream = kaldi.run(f"{ws_base}/client/ws/speech?key={key}", KONELE_CAPS, pcm16(audio), 32000, partial=True)
        results = [r for r in stream.replies if "result" in r]
        texts = timed([(r["result"]["hypotheses"][0]["transcript"], r.get("segment-start"),
                        r["segment-start"] + r["segment-length"] if "segment-start" in r else None) for r in results])
        return texts, [r["result"]["hypotheses"][0]["transcript"] for r in results if r["result"]["final"]]
    reply = requests.post(f"{service.url}/client/dynamic/recognize", params={"key": key, "content-type": KONELE_CAPS},
                          data=pcm16(audio), timeout=300).json()
    texts = [h.get("utterance") for h in reply.get("hypotheses", [])]
    return texts, texts


if __name__ == "__main__":
    raise SystemExit(main())
