"""Speak the kaldi-gstreamer-server protocol to a server, as Kõnele and the reference client do.

    python -m clients.kaldi URL FILE.wav [--realtime] [--partial] [--continuous]

URL is the personal dictation URL (``ws://host/client/ws/speech?key=...``); the client
appends its own parameters with ``&`` as Kõnele does. A 16-bit WAV is sent as raw
S16LE caps; anything else is sent as it is with an empty content-type. Every server
message is printed as one JSON line. Exit status: 0 when a final result arrived, else 1.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import websocket

KONELE_CAPS = "audio/x-raw, layout=(string)interleaved, rate=(int)16000, format=(string)S16LE, channels=(int)1"
# Kõnele sends a frame every 200 ms, the reference client every 250 ms.
CHUNK_SECONDS = 0.2
TIMEOUT = 120.0


def with_params(url: str, **params) -> str:
    """Return ``url`` with ``params`` appended as Kõnele appends them (``&`` when it holds a ``?``)."""
    query = urlencode({k.replace("_", "-"): v for k, v in params.items() if v is not None})
    if not query:
        return url
    return f"{url}{'&' if '?' in url else '?'}{query}"


@dataclass
class Stream:
    """One recognition session: send audio and EOS; the replies arrive with their times."""

    url: str
    replies: list[dict] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    eos_at: float | None = None
    closed_at: float | None = None

    def __post_init__(self):
        self.ws = websocket.create_connection(self.url, timeout=TIMEOUT)
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                text = self.ws.recv()
            except (websocket.WebSocketException, OSError):
                text = None
            if not text:
                self.closed_at = time.perf_counter()
                self._closed.set()
                return
            self.times.append(time.perf_counter())
            self.replies.append(json.loads(text))

    @property
    def closed(self) -> bool:
        """Return True once the server has closed the socket."""
        return self._closed.is_set()

    def send_audio(self, data: bytes, bytes_per_second: int | None, realtime: bool,
                   chunk_seconds: float = CHUNK_SECONDS) -> None:
        """Send ``data`` in frames of ``chunk_seconds``, at real-time pace if asked; stop if the server closes."""
        step = max(4, int((bytes_per_second or 32000) * chunk_seconds) // 4 * 4)
        began = time.monotonic()
        for offset in range(0, len(data), step):
            if self.closed:
                return
            try:
                self.ws.send_binary(data[offset:offset + step])
            except (websocket.WebSocketException, OSError):
                return  # the server closed mid-stream; its reason is among the replies
            if realtime and bytes_per_second:
                ahead = began + (offset + step) / bytes_per_second - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)

    def eos(self) -> None:
        """Send the end of the audio."""
        self.eos_at = time.perf_counter()
        if not self.closed:
            try:
                self.ws.send("EOS")
            except (websocket.WebSocketException, OSError):
                pass

    def wait_closed(self, timeout: float = TIMEOUT) -> list[dict]:
        """Wait until the server closes the socket (as the reference client does); return the replies."""
        if not self._closed.wait(timeout):
            raise TimeoutError(f"the server did not close the session within {timeout:g} s")
        return self.replies

    def finals(self) -> list[dict]:
        """Return the final results."""
        return [r for r in self.replies if r.get("result", {}).get("final")]

    def text(self) -> str:
        """Return the transcripts of the final results, joined."""
        return " ".join(r["result"]["hypotheses"][0]["transcript"] for r in self.finals()
                        if r["result"]["hypotheses"]).strip()

    def close(self) -> None:
        """Close the socket and shut the TCP connection down (also after a server-side close)."""
        try:
            self.ws.close()
        except (websocket.WebSocketException, OSError):
            pass
        self.ws.shutdown()


def read_file(path: Path) -> tuple[str, bytes, int | None]:
    """Return (content-type, bytes, bytes per second): raw caps for a 16-bit WAV, else the file as it is."""
    try:
        with wave.open(str(path)) as handle:
            if handle.getsampwidth() == 2:
                rate, channels = handle.getframerate(), handle.getnchannels()
                caps = (f"audio/x-raw, layout=(string)interleaved, rate=(int){rate}, format=(string)S16LE, "
                        f"channels=(int){channels}")
                return caps, handle.readframes(handle.getnframes()), 2 * rate * channels
    except (wave.Error, EOFError):
        pass
    return "", path.read_bytes(), None


def run(url: str, caps: str | None, data: bytes, bytes_per_second: int | None, realtime: bool = False,
        partial: bool = False, continuous: bool = False, echo=None) -> Stream:
    """Stream ``data`` then EOS, and wait for the server to close; return the finished stream."""
    stream = Stream(with_params(url, content_type=caps, partial="true" if partial else "false",
                                continuous="true" if continuous else None, user_id="kaldi-client"))
    try:
        stream.send_audio(data, bytes_per_second, realtime)
        stream.eos()
        stream.wait_closed()
    finally:
        stream.close()
    for reply in stream.replies if echo else ():
        echo(json.dumps(reply, ensure_ascii=False))
    return stream


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, stream the file, and return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m clients.kaldi", description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the dictation URL, e.g. ws://127.0.0.1:8000/client/ws/speech?key=KEY")
    parser.add_argument("file", type=Path)
    parser.add_argument("--realtime", action="store_true", help="send audio at real-time pace")
    parser.add_argument("--partial", action="store_true", help="ask for partial results")
    parser.add_argument("--continuous", action="store_true", help="every final, not only the first")
    args = parser.parse_args(argv)
    caps, data, rate = read_file(args.file)
    stream = run(args.url, caps, data, rate, args.realtime, args.partial, args.continuous,
                 echo=lambda line: print(line, flush=True))
    return 0 if stream.finals() else 1


if __name__ == "__main__":
    sys.exit(main())
