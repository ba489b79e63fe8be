"""Speak the kaldi-gstreamer-server protocol to a server, as Kõnele and the reference client do.

    python -m clients.kaldi URL FILE.wav [--realtime] [--partial] [--single]

URL is the personal dictation URL (``ws://host/client/ws/speech?key=...``); the client
appends its own parameters with ``&`` as Kõnele does. A 16-bit WAV is sent as raw
S16LE caps; anything else is sent as it is with an empty content-type. Every server
message is printed as one JSON line. Exit status: 0 when a final result arrived, else 1.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import websocket

from .common import Connection, read_wav

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


class Stream(Connection):
    """One recognition session: send audio and EOS; the replies arrive with their times."""

    def __init__(self, url: str, echo=None, single: bool = False):
        super().__init__(url, timeout=TIMEOUT, echo=echo)
        self.url, self.single = url, single
        self.eos_at: float | None = None

    def _ended_early(self) -> bool:
        return self.single and bool(self.finals())

    def send_audio(self, data: bytes, bytes_per_second: int | None, realtime: bool,
                   chunk_seconds: float = CHUNK_SECONDS) -> None:
        """Send ``data`` in frames of ``chunk_seconds``, at real-time pace if asked; stop if the server closes."""
        self.send_paced(data, max(4, int((bytes_per_second or 32000) * chunk_seconds) // 4 * 4), bytes_per_second, realtime)

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


def read_file(path: Path) -> tuple[str, bytes, int | None]:
    """Return (content-type, bytes, bytes per second): raw caps for a 16-bit WAV, else the file as it is."""
    wav = read_wav(path)
    if wav is None:
        return "", path.read_bytes(), None
    caps = (f"audio/x-raw, layout=(string)interleaved, rate=(int){wav.rate}, format=(string)S16LE, "
            f"channels=(int){wav.channels}")
    return caps, wav.data, wav.bytes_per_second


def reference_url(url: str, caps: str | None) -> str:
    """Return ``url`` as kaldi-gstreamer-server's reference client builds it: ``?content-type=`` appended, even after a ``?``."""
    return f"{url}?{urlencode({'content-type': caps or ''})}"


def run(url: str, caps: str | None, data: bytes, bytes_per_second: int | None, realtime: bool = False,
        partial: bool = False, continuous: bool = False, single: bool = False, reference: bool = False,
        echo=None) -> Stream:
    """Stream ``data`` then EOS, and wait for the server to close; return the finished stream.

    ``single``: stop sending and say EOS at the first final, as Kõnele does in its default
    mode. ``reference``: build the URL as the reference client does (``reference_url``).
    """
    if reference:
        address = reference_url(url, caps)
    else:
        address = with_params(url, content_type=caps, partial="true" if partial else "false",
                              continuous="true" if continuous else None, user_id="kaldi-client")
    stream = Stream(address, echo=echo, single=single)
    try:
        stream.send_audio(data, bytes_per_second, realtime)
        stream.eos()
        stream.wait_closed()
    finally:
        stream.close()
    return stream


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, stream the file, and return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m clients.kaldi", description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the dictation URL, e.g. ws://127.0.0.1:8000/client/ws/speech?key=KEY")
    parser.add_argument("file", type=Path)
    parser.add_argument("--realtime", action="store_true", help="send audio at real-time pace")
    parser.add_argument("--partial", action="store_true", help="ask for partial results")
    parser.add_argument("--single", action="store_true", help="say EOS at the first final, as Kõnele's default mode")
    args = parser.parse_args(argv)
    caps, data, rate = read_file(args.file)
    stream = run(args.url, caps, data, rate, args.realtime, args.partial, single=args.single,
                 echo=lambda line: print(line, flush=True))
    return 0 if stream.finals() else 1


if __name__ == "__main__":
    sys.exit(main())
