"""A meeting's lines as a file: WebVTT with voice tags, SRT, or JSON. Pure functions, no I/O.

A line is ``{speaker, name, start, end, text, state}`` as the meeting engine sends it
(``meeting.py``). Lines of an unverified speaker are kept, marked, without text; lines
too short to identify anyone are left out of the subtitles (JSON keeps every line).
"""
from __future__ import annotations

import json

FORMATS = {"vtt": "text/vtt; charset=utf-8", "srt": "application/x-subrip; charset=utf-8",
           "json": "application/json"}
UNVERIFIED_NAME = "Unverified speaker"
NOT_TRANSCRIBED = "[not transcribed]"
# What one export may hold (an export request carries its lines in its body).
MAX_LINES = 10000
MAX_TEXT = 4000
MAX_SECONDS = 10 ** 7


class ExportError(ValueError):
    """Lines that cannot be exported, with a message for people."""


def clean(lines) -> list[dict]:
    """Return ``lines`` checked and reduced to the fields an export uses; raise ExportError on bad input."""
    if not isinstance(lines, list) or len(lines) > MAX_LINES:
        raise ExportError(f"lines must be a list of at most {MAX_LINES} objects")
    out = []
    for line in lines:
        if not isinstance(line, dict):
            raise ExportError("every line must be an object")
        start, end = line.get("start"), line.get("end")
        if (not isinstance(start, (int, float)) or not isinstance(end, (int, float)) or isinstance(start, bool)
                or isinstance(end, bool) or not 0 <= start <= end <= MAX_SECONDS):
            raise ExportError("every line needs numbers start <= end (seconds)")
        text, speaker, name = line.get("text"), line.get("speaker"), line.get("name")
        for value in (text, speaker, name):
            if value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT):
                raise ExportError(f"speaker, name and text must be strings of at most {MAX_TEXT} characters")
        state = line.get("state")
        if state is not None and not isinstance(state, str):
            raise ExportError("state must be a string")
        state = state or ("accept" if speaker else "reject")
        # One line of text each: a blank line would end a cue early.
        text, name = (" ".join(v.split()) if v else v for v in (text, name))
        out.append({"speaker": speaker or None, "name": (name or speaker) if speaker else UNVERIFIED_NAME,
                    "start": round(float(start), 3), "end": round(float(end), 3),
                    "text": (text or "").strip() if speaker else None, "state": state})
    return sorted(out, key=lambda line: line["start"])


def _subtitled(lines: list[dict]) -> list[dict]:
    return [line for line in lines if line["state"] != "not_enough_speech"]


def _clock(seconds: float, separator: str) -> str:
    millis = int(round(seconds * 1000))
    hours, rest = divmod(millis, 3600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}{separator}{rest % 1000:03d}"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(lines: list[dict]) -> str:
    """Return the lines as WebVTT, each cue with its speaker's voice tag (``<v Name>``)."""
    out = ["WEBVTT", ""]
    for index, line in enumerate(_subtitled(clean(lines)), 1):
        text = _escape(line["text"]) if line["speaker"] else NOT_TRANSCRIBED
        out += [str(index), f"{_clock(line['start'], '.')} --> {_clock(line['end'], '.')}",
                f"<v {_escape(line['name'])}>{text or ' '}", ""]
    return "\n".join(out)


def to_srt(lines: list[dict]) -> str:
    """Return the lines as SRT, each cue's text led by its speaker's name."""
    out = []
    for index, line in enumerate(_subtitled(clean(lines)), 1):
        text = line["text"] if line["speaker"] else NOT_TRANSCRIBED
        out += [str(index), f"{_clock(line['start'], ',')} --> {_clock(line['end'], ',')}",
                f"{line['name']}: {text}".rstrip(), ""]
    return "\n".join(out)


def to_json(lines: list[dict], roster: list | None = None) -> str:
    """Return the lines (and the roster, when known) as a JSON document."""
    return json.dumps({"roster": roster or [], "lines": clean(lines)}, ensure_ascii=False, indent=1) + "\n"


def export(lines: list[dict], fmt: str, roster: list | None = None) -> str:
    """Return the lines in ``fmt`` (vtt, srt or json); raise ExportError for another format."""
    if roster is not None and not isinstance(roster, list):
        raise ExportError("roster must be a list")
    if fmt == "vtt":
        return to_vtt(lines)
    if fmt == "srt":
        return to_srt(lines)
    if fmt == "json":
        return to_json(lines, roster)
    raise ExportError(f"format must be one of {', '.join(FORMATS)}")


def plain_subtitles(cues: list[dict], fmt: str) -> str:
    """Return ``{start, end, text}`` cues of one speaker as WebVTT or SRT (``fmt``), without speaker names.

    The shape Whisper's own writers give (OpenAI's ``response_format`` vtt and srt).
    """
    if fmt not in ("vtt", "srt"):
        raise ExportError("format must be vtt or srt")
    separator = "." if fmt == "vtt" else ","
    out = ["WEBVTT", ""] if fmt == "vtt" else []
    for index, cue in enumerate(cues, 1):
        text = " ".join(str(cue["text"]).split())
        if fmt == "vtt":
            text = _escape(text)
        out += [str(index), f"{_clock(cue['start'], separator)} --> {_clock(cue['end'], separator)}", text, ""]
    return "\n".join(out)
