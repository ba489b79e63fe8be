"""A gunicorn threaded worker that no idle, slow or crowding client can exhaust (docs/deployment.md).

gunicorn's ``gthread`` worker gives every request a thread for as long as it lasts and reads
headers and bodies without any time limit. This worker adds, before any thread is spent:

- a limit on the connections one client address may hold at once (refused with a 503 at accept);
- a deadline on every request: its headers within ``HEADER_SECONDS`` of its first byte, its body
  within ``BODY_SECONDS`` of its headers, and no read waiting more than ``READ_IDLE_SECONDS``.

A request that misses its deadline gets :class:`SlowClient`, which gunicorn treats as a client
that went away and the app answers with 408 (app/protocols/uploads.py). WebSocket sessions read
their own socket after the upgrade and keep their own idle limits (app/protocols/voice_ws.py).

The settings are the app's (``VOICEGATE_CONNECTIONS_PER_ADDRESS`` and so on, app/config.py).
"""
from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections import Counter
from concurrent import futures

from gunicorn.http.errors import NoMoreData
from gunicorn.workers.gthread import TConn, ThreadWorker

from . import companions, memory

logger = logging.getLogger(__name__)

_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 5\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 45\r\n\r\n"
            b"too many connections from this address; wait\n")
# Graceful closes waiting or lingering at once; beyond this a connection is closed at once.
_MAX_LINGERING = 64
# A refused address is logged at most this often, so that a flood cannot flood the log.
_REFUSAL_LOG_SECONDS = 60.0


class SlowClient(NoMoreData, TimeoutError):
    """A request's headers or body did not arrive within their time limit."""

    def __str__(self) -> str:
        return "the request did not arrive within its time limit"


class DeadlineReader:
    """The socket as gunicorn's request parser reads it: every ``recv`` bounded by the connection's deadline."""

    def __init__(self, sock: socket.socket, conn: "GuardedConn"):
        self._sock, self._conn = sock, conn
        self._timeout: float | None = None  # what gunicorn itself asks for (draining a body)

    def recv(self, size: int) -> bytes:
        """Return up to ``size`` bytes, or raise SlowClient when the deadline or idle limit passes."""
        wait = min(self._conn.deadline - time.monotonic(), self._conn.idle_seconds)
        if self._timeout is not None:
            wait = min(wait, self._timeout)
        if wait <= 0:
            raise SlowClient()
        self._sock.settimeout(wait)
        try:
            return self._sock.recv(size)
        except (socket.timeout, TimeoutError):
            raise SlowClient() from None
        finally:
            try:
                self._sock.settimeout(None)
            except OSError:
                pass  # closed meanwhile; the next read says so

    def settimeout(self, value: float | None) -> None:
        """Bound later reads further (gunicorn does so while draining an unread body)."""
        self._timeout = value

    def gettimeout(self) -> float | None:
        """Return the bound set by settimeout."""
        return self._timeout

    def __getattr__(self, name):
        return getattr(self._sock, name)


class GuardedConn(TConn):
    """A connection whose reads have a deadline, and which gives its address slot back once closed."""

    def __init__(self, cfg, sock, client, server, worker: "GuardedWorker", address: str | None):
        super().__init__(cfg, sock, client, server)
        self.worker, self.address = worker, address
        self.deadline = float("inf")
        self.idle_seconds = worker.read_idle_seconds
        self._released = False
        self._release_lock = threading.Lock()

    def init(self):
        """Set up the parser as gunicorn does, reading through a DeadlineReader."""
        super().init()
        unreader = getattr(self.parser, "unreader", None)
        if unreader is not None and hasattr(unreader, "sock") and not isinstance(unreader.sock, DeadlineReader):
            unreader.sock = DeadlineReader(unreader.sock, self)

    def close(self, graceful=False):
        """Free this address's slot and close the socket (the slot once, however often gunicorn calls this).

        A graceful close lingers up to 2 s for the client to finish sending. gunicorn does it on
        the worker's main thread, where a few trickling clients would stall accepting and the
        heartbeat (and get the worker killed); here it runs on the worker's closing threads, and
        when too many closes are lingering already, the connection is closed at once instead.
        """
        with self._release_lock:  # gunicorn may close twice, from two threads
            released, self._released = self._released, True
        if not released:
            self.worker.release(self.address)
        if graceful and self.worker.linger(self):
            return
        try:
            super().close(False)
        except OSError:
            pass  # closed already

    def close_gracefully(self) -> None:
        """Close as gunicorn's graceful close does (on a closing thread)."""
        try:
            super().close(True)
        except OSError:
            pass  # closed already


class GuardedWorker(ThreadWorker):
    """gunicorn's gthread worker with per-address connection limits and request deadlines."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.per_address = 32
        self.trusted: frozenset[str] = frozenset()
        self.header_seconds, self.body_seconds, self.read_idle_seconds = 10.0, 60.0, 10.0
        self._held: Counter[str] = Counter()
        self._held_lock = threading.Lock()
        self._refusals_logged: dict[str, float] = {}
        self.closer: futures.ThreadPoolExecutor | None = None
        self._lingering = 0
        self.trimmer: memory.Trimmer | None = None

    def init_process(self):
        """Start the threads that close connections gracefully, then run as gunicorn's worker does."""
        self.closer = futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="closer")
        self.trimmer = memory.Trimmer().start()
        super().init_process()

    def load_wsgi(self):
        """Load the app, take the limits from its configuration, and start its companion servers."""
        super().load_wsgi()
        companions.start_all(self.wsgi)
        config = getattr(self.wsgi, "config", {})
        self.per_address = int(config.get("CONNECTIONS_PER_ADDRESS", self.per_address))
        self.trusted = frozenset(config.get("TRUSTED_PROXIES") or ())
        self.header_seconds = float(config.get("HEADER_SECONDS", self.header_seconds))
        self.body_seconds = float(config.get("BODY_SECONDS", self.body_seconds))
        self.read_idle_seconds = float(config.get("READ_IDLE_SECONDS", self.read_idle_seconds))
        self.log.info("limits: %d connections per address (not %s), headers %g s, body %g s, reads idle %g s",
                      self.per_address, ", ".join(sorted(self.trusted)) or "-", self.header_seconds,
                      self.body_seconds, self.read_idle_seconds)

    def accept(self, listener):
        """Accept a connection, or refuse it at once when its address holds too many."""
        try:
            client_sock, client_addr = listener.accept()
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        address = client_addr[0] if isinstance(client_addr, tuple) and client_addr else None
        if not self._admit(address):
            self._refuse(client_sock, address)
            return
        self.nr_conns += 1
        client_sock.setblocking(True)
        conn = GuardedConn(self.cfg, client_sock, client_addr, listener.getsockname(), self, address)
        self.enqueue_req(conn)

    def handle(self, conn):
        """Serve a request whose headers must arrive within HEADER_SECONDS."""
        conn.deadline = time.monotonic() + self.header_seconds + 5.0  # + gunicorn's wait for a first byte
        try:
            return super().handle(conn)
        finally:
            conn.deadline = float("inf")

    def handle_request(self, req, conn):
        """Serve a parsed request whose body must arrive within BODY_SECONDS."""
        conn.deadline = time.monotonic() + self.body_seconds
        try:
            return super().handle_request(req, conn)
        finally:
            if self.trimmer is not None:
                self.trimmer.request_finished()

    def linger(self, conn: GuardedConn) -> bool:
        """Close ``conn`` gracefully on a closing thread; return False when too many are lingering already."""
        with self._held_lock:
            if self.closer is None or self._lingering >= _MAX_LINGERING:
                return False
            self._lingering += 1

        def close():
            try:
                conn.close_gracefully()
            finally:
                with self._held_lock:
                    self._lingering -= 1

        self.closer.submit(close)
        return True

    def release(self, address: str | None) -> None:
        """Give back the connection slot of ``address``."""
        if address is None or address in self.trusted:
            return
        with self._held_lock:
            self._held[address] -= 1
            if self._held[address] <= 0:
                del self._held[address]

    def _admit(self, address: str | None) -> bool:
        if address is None or address in self.trusted:
            return True
        with self._held_lock:
            if self._held[address] >= self.per_address:
                return False
            self._held[address] += 1
            return True

    def _refuse(self, client_sock: socket.socket, address: str | None) -> None:
        try:
            client_sock.setblocking(False)
            client_sock.send(_REFUSAL)
        except OSError:
            pass  # the client is gone or its buffer full: the close says the same
        finally:
            client_sock.close()
        now = time.monotonic()
        if len(self._refusals_logged) > 10000:  # many addresses: forget those not refused lately
            self._refusals_logged = {a: t for a, t in self._refusals_logged.items() if now - t < _REFUSAL_LOG_SECONDS}
        if now - self._refusals_logged.get(address, -_REFUSAL_LOG_SECONDS) >= _REFUSAL_LOG_SECONDS:
            self._refusals_logged[address] = now
            self.log.warning("refusing connections from %s: it holds %d already", address, self.per_address)
