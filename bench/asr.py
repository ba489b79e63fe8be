"""Transcription: every transcribed file dictated through the service, and faster-whisper on the whole file as the baseline.

Each file is dictated as a user enrolled on the *other* files of its speaker (longest
first; the server stores as many as its policy asks for), so that no file is verified
against a voiceprint made from itself. A speaker with a single file is enrolled on that
file, and the report says how many were. The text is the accepted finals, joined.
"""
from __future__ import annotations

import logging
from collections import Counter, defaultdict

from . import calls, metrics
from .data import SpeechSet, Utterance

logger = logging.getLogger(__name__)


def handled(utterances: list[Utterance], multilingual: bool) -> tuple[list[Utterance], dict[str, int]]:
    """Return the utterances the model can be scored on, and how many were skipped and why."""
    kept, skipped = [], Counter()
    for utterance in utterances:
        if not utterance.transcript:
            skipped["no_transcript"] += 1
        elif not multilingual and utterance.language != "en":
            skipped[f"language_{utterance.language}"] += 1
        else:
            kept.append(utterance)
    return kept, dict(skipped)


def run_service(service, speech: SpeechSet, utterances: list[Utterance], prefix: str, realtime: bool) -> list[dict]:
    """Enroll a user per file (on the speaker's other files) and dictate the file as that user."""
    groups = speech.by_speaker()
    records = []
    for index, utterance in enumerate(utterances):
        others = [u.path for u in groups[utterance.speaker] if u.path != utterance.path]
        others.sort(key=speech.seconds, reverse=True)
        enroll_on = others or [utterance.path]
        name = f"{prefix}asr{index}"
        enrollment = calls.enroll(service.ws_url, name, service.invite(name), [speech.audio(p) for p in enroll_on])
        record = {"file": speech.label(utterance.path), "speaker": utterance.speaker, "language": utterance.language,
                  "seconds": round(speech.seconds(utterance.path), 3), "user": name,
                  "self_enrolled": not others, "enrollment": enrollment["state"],
                  "clips_stored": enrollment["clips_stored"]}
        if enrollment["state"] != "enrolled":
            logger.warning("%s could not be enrolled for %s: %s", name, record["file"], enrollment["state"])
            records.append({**record, "error": f"enrollment_{enrollment['state']}", "text": ""})
            continue
        dictation = calls.dictate(service.ws_url, name, speech.audio(utterance.path), realtime)
        records.append({
            **record, "text": dictation.text, "error": dictation.error, "partials": dictation.partials,
            "finals": [{k: f.get(k) for k in ("state", "score", "start", "end", "at_s", "text")} for f in dictation.finals],
            "accepted": dictation.count("accept"), "rejected": dictation.count("reject"),
            "not_enough_speech": dictation.count("not_enough_speech"),
            "final_latency_s": dictation.last_final_s,
        })
        logger.info("dictated %s: %d accepted, %d rejected, %s", record["file"], records[-1]["accepted"],
                    records[-1]["rejected"], dictation.error or "ok")
    return records


def summarise(records: list[dict], utterances: list[Utterance], baseline: dict, skipped: dict[str, int]) -> dict:
    """Return WER per language and overall for the service and the baseline, with rejection counts."""
    by_language: dict[str, dict[str, list]] = defaultdict(lambda: {"ref": [], "service": [], "baseline": []})
    for record, utterance in zip(records, utterances, strict=True):
        normalise = metrics.normaliser(utterance.language)
        group = by_language[utterance.language]
        group["ref"].append(normalise(utterance.transcript))
        group["service"].append(normalise(record["text"]))
        group["baseline"].append(normalise(baseline[utterance.path]["text"]))
    files = []
    for record, utterance in zip(records, utterances, strict=True):
        normalise = metrics.normaliser(utterance.language)
        reference = [normalise(utterance.transcript)]
        files.append({
            "file": record["file"], "seconds": record["seconds"], "language": utterance.language,
            "service_wer": metrics.word_errors(reference, [normalise(record["text"])]).wer,
            "baseline_wer": metrics.word_errors(reference, [normalise(baseline[utterance.path]["text"])]).wer,
            "accepted": record.get("accepted", 0), "rejected": record.get("rejected", 0),
            "not_enough_speech": record.get("not_enough_speech", 0), "error": record.get("error"),
        })
    per_language = {}
    for language, group in sorted(by_language.items()):
        per_language[language] = {
            "files": len(group["ref"]),
            "service": metrics.word_errors(group["ref"], group["service"]).as_dict(),
            "baseline": metrics.word_errors(group["ref"], group["baseline"]).as_dict(),
        }
    refs = [r for g in by_language.values() for r in g["ref"]]
    service = metrics.word_errors(refs, [h for g in by_language.values() for h in g["service"]])
    base = metrics.word_errors(refs, [h for g in by_language.values() for h in g["baseline"]])
    return {
        "files": len(records),
        "skipped": skipped,
        "wer": None if service.wer is None else round(service.wer, 4),
        "words": service.words,
        "errors": {k: v for k, v in service.as_dict().items() if k not in ("wer", "words")},
        "per_language": per_language,
        "utterances": {
            "accepted": sum(r.get("accepted", 0) for r in records),
            "rejected": sum(r.get("rejected", 0) for r in records),
            "not_enough_speech": sum(r.get("not_enough_speech", 0) for r in records),
        },
        "files_with_rejected_speech": sum(1 for r in records if r.get("rejected") or r.get("not_enough_speech")),
        "files_with_no_text": sum(1 for r in records if not r["text"]),
        "errors_by_file": dict(Counter(r["error"] for r in records if r.get("error"))),
        "self_enrolled_files": sum(1 for r in records if r["self_enrolled"]),
        "enrollment_clips_stored": dict(sorted(Counter(r["clips_stored"] for r in records).items())),
        "per_file": files,
        "baseline": {"wer": None if base.wer is None else round(base.wer, 4),
                     "errors": {k: v for k, v in base.as_dict().items() if k not in ("wer", "words")}},
    }
