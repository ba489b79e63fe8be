"""Abusive clients for the load test and benchmark: idle WebSockets, held status sockets, trickling
uploads and broken handshakes, each from a loopback address of the caller's choice (127.0.0.2 and up
stand for other hosts). Loopback only.
"""
from __future__ import annotations

import os
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field


def _handshake(path: str) -> bytes:
    """Return a WebSocket opening handshake for ``path``."""
    return (f"GET {path} HTTP/1.1\r\nHost: voicegate\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def _status_code(reply: bytes) -> int | None:
    parts = reply.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() else None


@dataclass
class Abuse:
    """Clients that hold connections open doing (almost) nothing, each on its own thread."""

    stop: threading.Event = field(default_factory=threading.Event)
    outcomes: dict[str, Counter] = field(default_factory=dict)
    threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _note(self, kind: str, outcome) -> None:
        with self._lock:
            self.outcomes.setdefault(kind, Counter())[outcome] += 1

    def finished(self, kind: str) -> int:
        """Return how many clients of ``kind`` have an outcome so far."""
        with self._lock:
            return sum(self.outcomes.get(kind, Counter()).values())

    def start(self, kind: str, base: str, source: str) -> threading.Event:
        """Open one client of ``kind`` (idle_ws, status, slow_upload) to ``base`` from address ``source``.

        Return an event set once the client has sent its request (or failed to connect), for
        callers whose assertions depend on the order in which clients arrive.
        """
        sent = threading.Event()
        thread = threading.Thread(target=self._run, args=(kind, base, source, sent), daemon=True)
        thread.start()
        self.threads.append(thread)
        return sent

    def _run(self, kind: str, base: str, source: str, sent: threading.Event) -> None:
        host, port = base.removeprefix("http://").split(":")
        try:
            with socket.create_connection((host, int(port)), timeout=30, source_address=(source, 0)) as sock:
                getattr(self, "_" + kind)(sock, kind, sent)
        except OSError as error:
            self._note(kind, error.__class__.__name__)
        finally:
            sent.set()

    def _idle_ws(self, sock: socket.socket, kind: str, sent: threading.Event) -> None:
        # An open voice socket that never starts a session, sending an empty frame now and then.
        sock.sendall(_handshake("/ws/voice"))
        sent.set()
        self._note(kind, _status_code(sock.recv(4096)))
        while not self.stop.wait(2.0):
            sock.sendall(b"\x82\x80" + os.urandom(4))  # an empty binary frame, masked as a client must

    def _status(self, sock: socket.socket, kind: str, sent: threading.Event) -> None:
        # Kõnele's status socket, kept open by the client.
        sock.sendall(_handshake("/client/ws/status"))
        sent.set()
        reply = sock.recv(4096)
        self._note(kind, _status_code(reply))
        self.stop.wait()

    def _slow_upload(self, sock: socket.socket, kind: str, sent: threading.Event) -> None:
        # An upload trickling 10 bytes a second, never finished.
        sock.sendall(b"POST /api/v1/verify?user=lj HTTP/1.1\r\nHost: voicegate\r\nContent-Type: audio/wav\r\n"
                     b"Content-Length: 100000\r\n\r\n")
        sent.set()
        sock.settimeout(1.0)
        while not self.stop.is_set():
            try:
                reply = sock.recv(4096)
            except socket.timeout:
                try:
                    sock.sendall(b"0123456789")
                except OSError:
                    self._note(kind, "reset")
                    return
                continue
            self._note(kind, _status_code(reply) if reply else "closed")
            return
        self._note(kind, "held")

    def end(self) -> None:
        """Let every client go and wait for its thread."""
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)


def malformed(base: str, source: str, count: int) -> None:
    """Open ``count`` broken or vanishing WebSocket connections."""
    host, port = base.removeprefix("http://").split(":")
    for i in range(count):
        try:
            with socket.create_connection((host, int(port)), timeout=2, source_address=(source, 0)) as sock:
                if i % 2:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset on close
                path = ("/ws/voice", "/client/ws/status", "/client/ws/speech?key=1.x")[i % 3]
                handshake = _handshake(path)
                sock.sendall([handshake.replace(b"Sec-WebSocket-Version: 13\r\n", b""), handshake[:40],
                              handshake + os.urandom(64), handshake + b"\x81\xfe\xff\xff", handshake][i % 5])
        except OSError:
            pass
