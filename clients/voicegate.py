"""Stream WAV files to a VoiceGate server over its WebSocket.

    python -m clients.voicegate enroll  A.wav B.wav C.wav --user NAME --invite TOKEN
    python -m clients.voicegate verify  CLIP.wav [--user NAME]
    python -m clients.voicegate dictate SPEECH.wav --user NAME [--realtime]
    python -m clients.voicegate transcribe RECORDING.wav (--user NAME | --token TOKEN)
    python -m clients.voicegate meeting RECORDING.wav --roster A,B,C --token TOKEN [--export vtt|srt|json --out FILE]

transcribe uploads one recording to POST /api/v1/transcribe and prints its answer: a
segment per utterance, with the text of those verified as the user's. meeting streams a
recording as a meeting of the roster (the token's user among them; an admin's cookie is not
available here) and prints every line; ``--export`` writes the transcript as a file too,
made by POST /api/v1/transcripts/export from the lines this client holds.

Every server message is printed as one JSON line; the last line is the server's final
reply. When the server asks a voice login for a spoken challenge, its digits are also printed
for people, on stderr ("Say these digits: 4 7 1 9 0 2"); the files must say them. Exit
status: 0 for accept, enrolled or a finished dictation; 1 for any other result; 2 for an error.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .common import Connection, read_wav

DEFAULT_URL = "ws://127.0.0.1:8000/ws/voice"
CHUNK_SECONDS = 0.1


def read_audio(path: Path) -> tuple[dict, bytes, float]:
    """Return (format, bytes, seconds) for a file: PCM for 16-bit WAV, else the file as a container."""
    wav = read_wav(path)
    if wav is None:
        return {"encoding": "container"}, path.read_bytes(), 0.0
    return ({"encoding": "pcm_s16le", "sample_rate": wav.rate, "channels": wav.channels}, wav.data,
            len(wav.data) / wav.bytes_per_second)


class Conversation(Connection):
    """One WebSocket session: send a start, audio and stops; collect every reply (the close as ``closed``)."""

    def __init__(self, url: str, start: dict, echo=print, cookie: str | None = None, origin: str | None = None):
        super().__init__(url, timeout=120, echo=echo, cookie=cookie, origin=origin)
        self.ws.send(json.dumps(start))

    def _ended(self) -> None:
        self.replies.append({"type": "closed"})

    def _ended_early(self) -> bool:
        return any(reply["type"] == "error" for reply in self.replies)

    def wait_for(self, *types: str, after: int = 0, timeout: float = 120) -> dict:
        """Return the first reply of one of ``types`` (or an error, or the close) from index ``after``."""
        wanted = set(types) | {"error", "closed"}
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                for reply in self.replies[after:]:
                    if reply["type"] in wanted:
                        return reply
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no {'/'.join(types)} reply within {timeout:g} s")
                self._arrived.wait(remaining)

    def send_audio(self, data: bytes, fmt: dict, realtime: bool) -> None:
        """Send audio in 100 ms frames, at real-time pace if asked."""
        if fmt["encoding"] == "container":
            self.send_paced(data, 16000, None, False)
            return
        frame = 2 * fmt["channels"]
        bytes_per_second = frame * fmt["sample_rate"]
        self.send_paced(data, max(frame, int(bytes_per_second * CHUNK_SECONDS) // frame * frame), bytes_per_second, realtime)

    @property
    def ended(self) -> bool:
        """Return True once the server has ended the session (an error, or the close)."""
        return self.closed or self._ended_early()

    def stop(self) -> None:
        """Send the end of the current clip or utterance."""
        if not self.ended:
            self.ws.send(json.dumps({"type": "stop"}))


def run(mode: str, files: list[Path], url: str, user: str | None = None, invite: str | None = None,
        token: str | None = None, realtime: bool = False, echo=print, respond=None,
        roster: list[str] | None = None, language: str | None = None) -> dict:
    """Run one session and return the server's final reply.

    ``language``: what a dictation is written in (an ISO-639-1 code; None: the server detects it).

    ``respond(text)``, when given, returns the files to send instead of ``files`` once the
    server has sent a spoken challenge (``text`` is its digits, "4 7 1 9 0 2").
    """
    clips = [read_audio(path) for path in files]
    formats = {json.dumps(fmt, sort_keys=True) for fmt, _, _ in clips}
    if mode != "enroll" and len(formats) > 1:
        raise SystemExit("verify and dictate send one stream: the files must share one format")
    start = {"type": "start", "mode": mode, "format": clips[0][0]}
    for key, value in (("user", user), ("invite", invite), ("token", token), ("roster", roster),
                       ("language", language)):
        if value:
            start[key] = value
    conversation = Conversation(url, start, echo)
    try:
        ready = conversation.wait_for("ready")
        if ready["type"] != "ready":
            return ready
        challenge = next((r for r in conversation.replies if r["type"] == "challenge"), None)
        if challenge is not None:
            if respond is not None:
                clips = [read_audio(path) for path in respond(challenge["text"])]
        if mode == "enroll":
            final = ready
            for fmt, data, _ in clips:
                if fmt != clips[0][0]:
                    raise SystemExit("all enrollment clips must share one format")
                seen = len(conversation.replies)
                conversation.send_audio(data, fmt, realtime)
                conversation.stop()
                final = conversation.wait_for("progress", after=seen)
                if final["type"] != "progress":
                    return final
                if final["percent"] >= 100:
                    return conversation.wait_for("result", after=seen)
            return final
        for fmt, data, _ in clips:
            conversation.send_audio(data, fmt, realtime)
        conversation.stop()
        return conversation.wait_for("result")
    finally:
        conversation.close()


def transcribe(path: Path, url: str, user: str | None = None, token: str | None = None) -> dict:
    """Upload a recording to ``POST /api/v1/transcribe`` (the HTTP twin of ``url``); return the answer."""
    base = _http_base(url)
    query = urllib.parse.urlencode({"user": user} if user else {})
    request = urllib.request.Request(f"{base}/api/v1/transcribe?{query}", data=path.read_bytes(), method="POST",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        return {"type": "error", **json.load(error)}


def export(lines: list[dict], url: str, fmt: str, roster: list | None = None) -> str:
    """Return a meeting's ``lines`` as a ``fmt`` file (vtt, srt, json), made by the server's export endpoint."""
    body = json.dumps({"lines": lines, "roster": roster or []}).encode()
    request = urllib.request.Request(f"{_http_base(url)}/api/v1/transcripts/export?format={urllib.parse.quote(fmt)}",
                                     data=body, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read().decode("utf-8")


def _http_base(url: str) -> str:
    return url.replace("ws://", "http://", 1).replace("wss://", "https://", 1).split("/ws/")[0]


def meeting(path: Path, url: str, roster: list[str], token: str | None, realtime: bool = False,
            echo=print) -> tuple[dict, list[dict]]:
    """Stream a recording as a meeting of ``roster``; return the final reply and every line."""
    lines: list[dict] = []

    def keep(text: str) -> None:
        message = json.loads(text)
        if message.get("type") == "line":
            lines.append(message)
        echo(text)

    final = run("meeting", [path], url, token=token, realtime=realtime, echo=keep, roster=roster)
    return final, lines


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the session, and return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m clients.voicegate", description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("enroll", "verify", "dictate", "transcribe", "meeting"))
    parser.add_argument("files", nargs="+", type=Path, help="WAV files (16-bit PCM is streamed raw; others as containers)")
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--user", help="the user to enroll, verify as, or dictate as")
    parser.add_argument("--invite", help="enrollment invite token (from 'flask users invite NAME')")
    parser.add_argument("--token", help="session token from an accepted verification")
    parser.add_argument("--realtime", action="store_true", help="send audio at real-time pace")
    parser.add_argument("--roster", help="meeting: 2 to 10 enrolled user names, comma-separated")
    parser.add_argument("--language", help="dictate: the language spoken (cs, nl, ...; default: detected)")
    parser.add_argument("--export", choices=("vtt", "srt", "json"), help="meeting: also write the transcript as this")
    parser.add_argument("--out", type=Path, help="meeting: where --export writes (default: RECORDING.<format>)")
    args = parser.parse_args(argv)
    if args.mode == "meeting":
        if not args.roster:
            parser.error("meeting needs --roster")
        roster = [name.strip() for name in args.roster.split(",") if name.strip()]
        final, lines = meeting(args.files[0], args.url, roster, args.token, args.realtime,
                               echo=lambda line: print(line, flush=True))
        if final.get("type") != "result":
            if final.get("type") == "closed":
                print(json.dumps(final))
            return 2
        if args.export:
            out = args.out or args.files[0].with_suffix(f".{args.export}")
            out.write_text(export(lines, args.url, args.export, final.get("roster")), encoding="utf-8")
            print(f"wrote {out}", file=sys.stderr)
        return 0
    if args.mode == "transcribe":
        answer = transcribe(args.files[0], args.url, args.user, args.token)
        print(json.dumps(answer, ensure_ascii=False))
        return 2 if answer.get("type") == "error" else 0 if answer.get("state") == "accept" else 1

    def show_challenge(text: str) -> list[Path]:
        print(f"Say these digits: {text} (within a minute)", file=sys.stderr, flush=True)
        return args.files

    final = run(args.mode, args.files, args.url, args.user, args.invite, args.token, args.realtime,
                echo=lambda line: print(line, flush=True), respond=show_challenge, language=args.language)
    if final.get("type") == "closed":
        print(json.dumps(final))
    if final.get("type") in ("error", "closed"):
        return 2
    return 0 if final.get("state") in ("accept", "enrolled") or final.get("mode") == "dictate" else 1


if __name__ == "__main__":
    sys.exit(main())
