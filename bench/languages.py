"""Dictation in Czech, Dutch and Italian with multilingual Whisper base: the service against plain faster-whisper.

    nice -n 5 python -m bench.languages     # writes bench/results/languages.json and its docs/benchmarks.md section

Every Czech, Dutch and Italian file of speech-more is dictated through a started server running
``base`` (scripts/serve.sh), over the WebSocket, as a user enrolled on the speaker's other files,
three times: with no language (the server detects it), with the file's language in the start
message, and with no language where the admin named the languages spoken here (``AMONG``: the
setting ``languages``). The baseline is plain faster-whisper ``base`` on the whole file, in its
stock configuration (30 s window, beam 5), also without and with the language, and its
detection restricted to ``AMONG``. WER (Whisper's basic
normaliser) is over the files with transcripts (Czech and Dutch); the detected language is
checked on all three languages.

The speakers of the shipped AS-norm cohort (bench/cohort.py) are left out: the cohort holds their own voices, so the gate can never verify them, by design.
Each file's user is deleted once its file is dictated: every user is the same speaker, enrolled
on their other files, and the earlier ones (on this very file, often) would otherwise sit in the
cohort as other people's voices.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

from . import calls, metrics
from .cohort import COHORT_SPEAKERS
from .data import SpeechSet
from .output import quiet_logging, save
from .paths import DEV_REPORT, RESULTS, ROOT, SPEECH_MORE

logger = logging.getLogger("bench.languages")

LANGUAGES = ("cs", "nl", "it")
# The languages spoken in the set's household (its English speakers too): the setting under test.
AMONG = "cs,nl,it,en"
TITLE = "Languages (Czech, Dutch, Italian with Whisper base)"


def baseline(speech: SpeechSet, utterances, models_dir: str) -> dict[Path, dict]:
    """Return plain faster-whisper base's text and language per file, detected and given."""
    from app.engines.runtime import resolve_whisper
    from app.engines.transcriber import Transcriber

    # Stock faster-whisper: the 30 s window for every call (short_context=False).
    whisper = Transcriber(resolve_whisper(models_dir, "base"), threads=2, beam_size=5, short_context=False)
    out = {}
    for utterance in utterances:
        audio = speech.audio(utterance.path)
        detected = whisper.transcribe(audio)
        given = whisper.transcribe(audio, language=utterance.language)
        among, _ = whisper.detect_language(audio, tuple(AMONG.split(",")))
        out[utterance.path] = {"text": detected.text, "language": detected.language,
                               "probability": round(detected.language_probability, 3), "given_text": given.text,
                               "among_language": among}
        logger.info("plain %s: %s (%.2f)", speech.label(utterance.path), detected.language,
                    detected.language_probability)
    return out


def service(speech: SpeechSet, utterances, env: dict[str, str]) -> dict[Path, dict]:
    """Return the service's text and language per file, detected and given (a started server running base)."""
    from .server import StartedServer

    server = StartedServer(env={"VOICEGATE_WHISPER_MODEL": "base", **env})
    try:
        server.wait_ready()
        groups = speech.by_speaker()
        out = {}
        for index, utterance in enumerate(utterances):
            others = sorted((u.path for u in groups[utterance.speaker] if u.path != utterance.path),
                            key=speech.seconds, reverse=True)
            name = f"lang{index}"
            enrolled = calls.enroll(server.ws_url, name, server.invite(name), [speech.audio(p) for p in others])
            record = {"enrollment": enrolled["state"]}
            if enrolled["state"] == "enrolled":
                audio = speech.audio(utterance.path)
                server.set_setting("languages", None)
                detected = calls.dictate(server.ws_url, name, audio, realtime=False)
                given = calls.dictate(server.ws_url, name, audio, realtime=False, language=utterance.language)
                server.set_setting("languages", AMONG)
                among = calls.dictate(server.ws_url, name, audio, realtime=False)
                record.update(text=detected.text, language=(detected.result or {}).get("language"),
                              accepted=detected.count("accept"), rejected=detected.count("reject"),
                              given_text=given.text, given_language=(given.result or {}).get("language"),
                              among_text=among.text, among_language=(among.result or {}).get("language"),
                              error=detected.error or given.error or among.error)
            else:
                record.update(text="", language=None, given_text="", given_language=None, among_text="",
                              among_language=None, error="not_enrolled")
            # One voice per person on the server at a time: the speaker's earlier users, enrolled
            # on the file now dictated, would be another name's voice in this one's cohort.
            server.delete(name)
            out[utterance.path] = record
            logger.info("service %s: %s, %s", speech.label(utterance.path), record.get("language"), record.get("error") or "ok")
        return out
    finally:
        server.close()


def summarise(speech: SpeechSet, utterances, plain: dict, served: dict, left_out: list[str]) -> dict:
    """Return WER per language (service and plain, detected and given) and detection accuracy."""
    languages = {}
    for language in LANGUAGES:
        group = [u for u in utterances if u.language == language]
        normalise = metrics.normaliser(language)
        entry = {"files": len(group), "speakers": sorted({u.speaker for u in group}),
                 "detected_right": {
                     "service": sum(served[u.path]["language"] == language for u in group),
                     "plain": sum(plain[u.path]["language"] == language for u in group),
                     "service_among": sum(served[u.path]["among_language"] == language for u in group),
                     "plain_among": sum(plain[u.path]["among_language"] == language for u in group)},
                 "detected_as": {
                     "service": sorted({str(served[u.path]["language"]) for u in group}),
                     "plain": sorted({plain[u.path]["language"] for u in group}),
                     "service_among": sorted({str(served[u.path]["among_language"]) for u in group})}}
        scored = [u for u in group if u.transcript]
        if scored:
            refs = [normalise(u.transcript) for u in scored]

            def wer(texts: list[str]) -> float | None:
                value = metrics.word_errors(refs, [normalise(t) for t in texts]).wer
                return None if value is None else round(value, 4)

            entry["wer"] = {
                "service_detected": wer([served[u.path]["text"] for u in scored]),
                "plain_detected": wer([plain[u.path]["text"] for u in scored]),
                "service_given": wer([served[u.path]["given_text"] for u in scored]),
                "plain_given": wer([plain[u.path]["given_text"] for u in scored]),
                "service_among": wer([served[u.path]["among_text"] for u in scored]),
                "words": sum(len(r.split()) for r in refs)}
        languages[language] = entry
    files = [{"file": speech.label(u.path), "speaker": u.speaker, "language": u.language,
              "seconds": round(speech.seconds(u.path), 2), "transcript": u.transcript,
              "plain": plain[u.path], "service": served[u.path]} for u in utterances]
    return {"languages": languages, "left_out_cohort_speakers": left_out, "files": files}


def report_section(results: dict) -> list[str]:
    """Return the docs/benchmarks.md section of a run."""
    def pct(value) -> str:
        return "n/a" if value is None else f"{value:.1%}"

    lines = [
        "Generated by `nice -n 5 .venv/bin/python -m bench.languages`; every figure is in "
        "[languages.json](../bench/results/languages.json). Each Czech, Dutch and Italian file of speech-more is "
        "dictated over the WebSocket through a started server running Whisper `base`, as a user enrolled on the "
        "speaker's other files, with no language (detected), with the file's language in the start message, and "
        f"with no language where the admin set the languages spoken here to `{AMONG}` (among); "
        "plain faster-whisper `base` (30 s window, beam 5) transcribes the whole file, with and without the "
        "language, and its detection is also restricted to the same languages. WER after "
        "Whisper's basic normaliser; the transcripts are the game's script, not verbatim. Left out: "
        + (", ".join(f"`{s}`" for s in results["left_out_cohort_speakers"]) or "none")
        + " (their voices are in the shipped AS-norm cohort, so the gate never verifies them, by design).",
        "",
        "| language | files (speakers) | words | WER service, detected | WER plain, detected | WER service, among "
        "| WER service, given | WER plain, given | detected right: service / plain | among: service / plain "
        "| detected as (service; plain; service among) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for language, entry in results["languages"].items():
        wer = entry.get("wer") or {}
        right = entry["detected_right"]
        lines.append(
            f"| {language} | {entry['files']} ({', '.join(entry['speakers'])}) | {wer.get('words', 'no transcripts')} "
            f"| {pct(wer.get('service_detected'))} | {pct(wer.get('plain_detected'))} | {pct(wer.get('service_among'))} "
            f"| {pct(wer.get('service_given'))} | {pct(wer.get('plain_given'))} "
            f"| {right['service']} / {right['plain']} of {entry['files']} "
            f"| {right['service_among']} / {right['plain_among']} of {entry['files']} "
            f"| {', '.join(entry['detected_as']['service'])}; {', '.join(entry['detected_as']['plain'])}; "
            f"{', '.join(entry['detected_as']['service_among'])} |")
    silent = [f["file"].rsplit("/", 1)[-1] for f in results["files"] if not f["service"].get("text")]
    lines += ["", f"Files where the gate wrote nothing (a voice check refused the speaker's own speech; counted as "
                  f"deletions, and as `None` among the detected languages): {', '.join(silent) or 'none'}. "
                  "The service detects the language on the first stretch it transcribes (a VAD utterance, not the whole "
                  "file) and keeps it once Whisper is at least 0.5 sure; plain faster-whisper detects on the file's first "
                  "30 s. Ten files of 2 to 8 s per language: one file moves a WER by several points."]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the comparison, print it per language and write it as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.languages", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SPEECH_MORE, help="a speech set with cs, nl and it speakers")
    parser.add_argument("--models-dir", default=os.environ.get("VOICEGATE_MODELS_DIR", str(ROOT / "pretrained_models")))
    parser.add_argument("--out", type=Path, default=RESULTS / "languages.json")
    parser.add_argument("--render", type=Path, help="rewrite the docs section from an earlier run's JSON, measuring nothing")
    args = parser.parse_args(argv)
    quiet_logging()
    from .report import put_section

    if args.render:
        put_section(DEV_REPORT, TITLE, report_section(json.loads(args.render.read_text())))
        return 0
    speech = SpeechSet(args.data)
    cohort = set(COHORT_SPEAKERS)
    utterances = [u for u in speech.utterances if u.language in LANGUAGES and u.speaker not in cohort]
    left_out = sorted({u.speaker for u in speech.utterances if u.language in LANGUAGES and u.speaker in cohort})
    began = time.time()
    plain = baseline(speech, utterances, args.models_dir)
    served = service(speech, utterances, {"VOICEGATE_MODELS_DIR": args.models_dir})
    results = {"run": {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(began)),
                       "seconds": round(time.time() - began, 1), "data": str(args.data), "whisper": "base",
                       "note": "timings on a shared 2-core machine are noisy; none are reported"},
               **summarise(speech, utterances, plain, served, left_out)}
    save(results, args.out, shown={"languages": results["languages"], "left_out": left_out})
    put_section(DEV_REPORT, TITLE, report_section(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
