"""What both command-line clients share: reading WAV files, a WebSocket with a reader thread, paced sending."""
from __future__ import annotations

import json
import threading
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import websocket


@dataclass(frozen=True)
class Wav:
    """The samples of a 16-bit PCM WAV file, as bytes."""

    data: bytes
    rate: int
    channels: int

    @property
    def bytes_per_second(self) -> int:
        """Return how many bytes make one second of this audio."""
        return 2 * self.rate * self.channels


def read_wav(path: Path) -> Wav | None:
    """Return a 16-bit PCM WAV file's samples, or None for any other file (sent as it is)."""
    try:
        with wave.open(str(path)) as handle:
            if handle.getsampwidth() == 2:
                return Wav(handle.readframes(handle.getnframes()), handle.getframerate(), handle.getnchannels())
    except (wave.Error, EOFError):
        pass
    return None


class Connection:
    """A WebSocket whose JSON replies a reader thread collects, with their arrival times, until the server closes."""

    def __init__(self, url: str, timeout: float, echo=None, cookie: str | None = None, origin: str | None = None):
        # cookie and origin: a signed-in browser's session cookie, with the Origin of the site's own pages.
        self.ws = websocket.create_connection(url, timeout=timeout, cookie=cookie, origin=origin)
        self.echo = echo
        self.replies: list[dict] = []
        self.times: list[float] = []
        self.closed_at: float | None = None
        self._arrived = threading.Condition()
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                text = self.ws.recv()
            except (websocket.WebSocketException, OSError):
                text = None
            with self._arrived:
                if not text:
                    self.closed_at = time.perf_counter()
                    self._ended()
                    self._closed.set()
                    self._arrived.notify_all()
                    return
                reply = json.loads(text)
                if self.echo:
                    self.echo(json.dumps(reply, ensure_ascii=False))
                self.times.append(time.perf_counter())
                self.replies.append(reply)
                self._arrived.notify_all()

    def _ended(self) -> None:
        """Note the server's close among the replies, if a subclass wants it there."""

    @property
    def closed(self) -> bool:
        """Return True once the server has closed the socket."""
        return self._closed.is_set()

    def send_paced(self, data: bytes, step: int, bytes_per_second: int | None, realtime: bool) -> None:
        """Send ``data`` in frames of ``step`` bytes, at real-time pace if asked; stop once the session has ended."""
        began = time.monotonic()
        for offset in range(0, len(data), step):
            if self.closed or self._ended_early():
                return
            try:
                self.ws.send_binary(data[offset:offset + step])
            except (websocket.WebSocketException, OSError):
                return  # the server closed mid-stream; its reason is among the replies
            if realtime and bytes_per_second:
                ahead = began + (offset + step) / bytes_per_second - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)

    def _ended_early(self) -> bool:
        """Return True when a reply has ended the session before the server closed the socket."""
        return False

    def close(self) -> None:
        """Close the socket, and shut the TCP connection down even when the server closed first.

        websocket-client leaves the TCP socket open after a server-initiated close, and a
        gunicorn worker then waits on it (up to 2 s, holding up other clients).
        """
        try:
            self.ws.close()
        except (websocket.WebSocketException, OSError):
            pass
        self.ws.shutdown()
