"""The Wyoming speech-to-text server (Home Assistant's voice pipeline): docs/home-assistant.md.

Speaks Wyoming with the ``wyoming`` package's own events and server classes: ``describe`` is
answered with ``info`` (VoiceGate's ASR, the Whisper model and its languages); ``transcribe``,
``audio-start``, ``audio-chunk``... ``audio-stop`` with one ``transcript``. Each request is one
voice command behind the household gate (app/gate/household.py): the transcript holds only the
words of roster members' verified voices, and its context says whose; anyone else's speech
gives an empty transcript. Failures are one Wyoming ``error`` event, then the connection closes.

The server runs on a thread of its own with an asyncio loop, inside the server process (the app
factory hands the worker its start, app/serving/companions.py), so that it shares the models,
the inference pool and the dictation slots with every other door. The gate's blocking work runs
on a thread pool, one call at a time per connection. Limits, as the HTTP side's: connections per
client address (CONNECTIONS_PER_ADDRESS), an event's size (POLICY_MAX_FRAME_BYTES), a client's
silence (POLICY_IDLE_SECONDS), a command's audio (POLICY_MAX_CLIP_SECONDS) and the time a
client may take to send it. Audio stays in memory and is dropped with the command.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
from flask import Flask
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioChunkConverter, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_read_event
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info
from wyoming.server import AsyncEventHandler, AsyncTcpServer

from ..audio.vad import SAMPLE_RATE
from ..engines.runtime import get_engines
from ..errors import SessionError, VoiceGateError
from ..gate.base import Context
from ..gate.household import CommandSession, open_command
from ..gate.policy import Policy
from ..gate.settings import current_policy
from ..gate.stream import BLOCK

logger = logging.getLogger(__name__)

PROTOCOL = "wyoming"
VERSION = "1"
# Events a client may send per second of the longest command: Home Assistant sends a few tens (a chunk each).
EVENTS_PER_SECOND = 100
# After an error, what the client still sends is read and dropped for up to this long before the
# close: closing with unread data resets the connection, which can destroy the error in flight.
LINGER_SECONDS = 2.0
# A new gunicorn worker (a reload, a replaced worker) may start while the old one still holds the
# port for up to its graceful timeout (10 s, scripts/serve.sh): it waits that long, and a little more.
BIND_WAIT_SECONDS = 15.0
# Formats a chunk may come in (AudioChunkConverter makes 16 kHz mono s16 of them).
RATES, WIDTHS, MAX_CHANNELS = (8000, 96000), (1, 2, 3, 4), 8


class Limits:
    """What one connection may use, from the app's configuration."""

    def __init__(self, config):
        policy = Policy.from_config(config)
        self.per_address = int(config.get("CONNECTIONS_PER_ADDRESS", 32))
        self.event_bytes = policy.max_frame_bytes
        self.idle = policy.idle_seconds
        self.audio_seconds = policy.max_clip_seconds
        # Sending the command in real time takes its length; twice that, and a pause, is plenty.
        self.sending_seconds = 2 * policy.max_clip_seconds + policy.idle_seconds
        self.events = int(EVENTS_PER_SECOND * policy.max_clip_seconds) + 100


class TooLarge(ValueError):
    """An event announced more bytes than a connection may send in one."""


class BoundedReader:
    """The connection's StreamReader as ``async_read_event`` reads it, refusing oversized events."""

    def __init__(self, reader: asyncio.StreamReader, max_bytes: int):
        self._reader, self.max_bytes = reader, max_bytes
        self.refused = False

    async def readline(self) -> bytes:
        """Return the event's header line (the StreamReader's own limit bounds it)."""
        return await self._reader.readline()

    async def readexactly(self, size: int) -> bytes:
        """Return ``size`` bytes of data or payload; raise TooLarge (a ValueError) beyond the limit."""
        if size > self.max_bytes:
            self.refused = True
            raise TooLarge(size)  # async_read_event takes a ValueError for the end of the stream
        return await self._reader.readexactly(size)

    async def discard(self) -> bytes:
        """Read and return whatever arrives next, whatever its size (b"" at the end): it is dropped."""
        return await self._reader.read(1 << 16)

    def feed_eof(self) -> None:
        """End reading (AsyncEventHandler.stop)."""
        self._reader.feed_eof()


class CommandHandler(AsyncEventHandler):
    """One Wyoming connection: describe, or one transcription of a voice command."""

    def __init__(self, server: WyomingServer, address: str | None, admitted: bool,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.bounded = BoundedReader(reader, server.limits.event_bytes)
        super().__init__(self.bounded, writer)
        self.server, self.address, self.admitted = server, address, admitted
        self.limits = server.limits
        self.session: CommandSession | None = None
        self.language: str | None = None
        self.format: tuple[int, int, int] | None = None
        self.converter = AudioChunkConverter(rate=SAMPLE_RATE, width=2, channels=1)
        self.pending: list[np.ndarray] = []
        self.pending_samples = 0
        self.audio_seconds = 0.0
        self.events = 0
        self.waited = 0.0  # seconds spent waiting for this client's events
        self.failed = False

    async def run(self) -> None:
        """Handle events until the command is answered, the client leaves, or a limit is passed."""
        try:
            if not self.admitted:
                await self._fail("too_many_connections",
                                 f"at most {self.limits.per_address} connections from one address at once")
                return
            while True:
                event = await self._next_event()
                if event is None or not await self._handle(event):
                    break
        finally:
            await self.disconnect()
            if self.failed:
                await self._linger()
            self.writer.close()

    async def _linger(self) -> None:
        """Stop writing, and drop what the client still sends until it stops or LINGER_SECONDS pass."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER_SECONDS
        try:
            if self.writer.can_write_eof():
                self.writer.write_eof()
            while (left := deadline - loop.time()) > 0:
                if not await asyncio.wait_for(self.bounded.discard(), left):
                    return
        except (asyncio.TimeoutError, TimeoutError, ConnectionError, OSError):
            pass

    async def _next_event(self) -> Event | None:
        """Return the client's next event, or None (after an error event when a limit was passed)."""
        self.events += 1
        if self.events > self.limits.events:
            await self._fail("too_many_events", "too many events for one command")
            return None
        wait = min(self.limits.idle, self.limits.sending_seconds - self.waited)
        started = time.monotonic()
        try:
            event = await asyncio.wait_for(async_read_event(self.reader), timeout=max(wait, 0.0))
        except (asyncio.IncompleteReadError, ConnectionError):  # the client left mid-event
            logger.info("wyoming client %s left", self.address)
            return None
        except (TypeError, AttributeError, KeyError):  # a header whose data is not an object
            await self._fail("bad_event", "an event's header and data must be JSON objects")
            return None
        except (asyncio.TimeoutError, TimeoutError):
            slow = self.waited + (time.monotonic() - started) >= self.limits.sending_seconds
            await self._fail("too_slow" if slow else "idle",
                             f"a command must arrive within {self.limits.sending_seconds:g} s" if slow else
                             f"nothing was received for {self.limits.idle:g} s")
            return None
        self.waited += time.monotonic() - started
        if event is None and self.bounded.refused:
            await self._fail("frame_too_large", f"an event may carry at most {self.limits.event_bytes} bytes")
        return event

    async def handle_event(self, event: Event) -> bool:
        """Answer one event; return False when the connection is done."""
        request = _parse(event)
        if isinstance(request, Describe):
            await self.write_event((await self._blocking(info, self.server.app)).event())
            return True
        if isinstance(request, Transcribe):
            self.language = request.language or None
            return True
        if isinstance(request, AudioStart):
            await self._open((request.rate, request.width, request.channels))
            return True
        if isinstance(request, AudioChunk):
            await self._audio(request)
            return True
        if isinstance(request, AudioStop):
            if self.session is None:
                raise SessionError("not_started", "send audio-start and audio before audio-stop")
            await self._feed()
            command = await self._blocking(self.session.finish)
            logger.info("wyoming command %s: %d words from %s", command.request_id, len(command.text.split()),
                        ", ".join(s["user"] for s in command.speakers) or "no roster member")
            context = {"request_id": command.request_id, "speakers": command.speakers}
            await self.write_event(Transcript(text=command.text, context=context, language=self.session.language).event())
            return False
        return True  # events of other domains are not ours: ignored, as Wyoming servers do

    async def _handle(self, event: Event) -> bool:
        """Run handle_event; every refusal or failure is one error event and the end of the connection."""
        try:
            return await self.handle_event(event)
        except VoiceGateError as error:  # refusals, and e.g. a voiceprint whose key is gone: decide nothing
            await self._fail(error.code, error.message)
        except (ConnectionError, asyncio.IncompleteReadError):
            logger.info("wyoming client %s left", self.address)
        except Exception:
            logger.exception("wyoming command failed")
            await self._fail("internal", "the server failed to handle this command")
        return False

    async def _open(self, audio_format: tuple[int, int, int]) -> None:
        if self.session is not None:
            raise SessionError("bad_event", "one command per connection: audio-start came twice")
        rate, width, channels = audio_format
        if not (RATES[0] <= rate <= RATES[1] and width in WIDTHS and 1 <= channels <= MAX_CHANNELS):
            raise SessionError("bad_format", f"audio must be {RATES[0]}-{RATES[1]} Hz, 8-32 bit, "
                                             f"1-{MAX_CHANNELS} channels (16 kHz mono 16-bit is best)")
        self.format = audio_format
        self.session = await self._blocking(_open_command, self.server.app, self.address, self.language)

    async def _audio(self, chunk: AudioChunk) -> None:
        if self.session is None:  # audio-start is optional before the first chunk
            await self._open((chunk.rate, chunk.width, chunk.channels))
        if (chunk.rate, chunk.width, chunk.channels) != self.format:
            raise SessionError("bad_format", "every audio chunk must have the format of the first")
        if len(chunk.audio) % (chunk.width * chunk.channels):
            raise SessionError("bad_audio", "an audio chunk must hold whole samples of every channel")
        self.audio_seconds += chunk.seconds
        if self.audio_seconds > self.limits.audio_seconds:
            raise SessionError("too_long", f"a voice command may last at most {self.limits.audio_seconds:g} s")
        converted = self.converter.convert(chunk)
        samples = np.frombuffer(converted.audio, dtype="<i2").astype(np.float32) / 32768.0
        self.pending.append(samples)
        self.pending_samples += samples.size
        if self.pending_samples >= BLOCK:  # in the blocks every other surface feeds
            await self._feed()

    async def _feed(self) -> None:
        if not self.pending:
            return
        audio = np.concatenate(self.pending)
        self.pending, self.pending_samples = [], 0
        await self._blocking(self.session.feed, audio)

    async def _fail(self, code: str, message: str) -> None:
        self.failed = True
        logger.info("wyoming client %s refused: %s", self.address, code)
        try:
            await self.write_event(Error(text=message, code=code).event())
        except ConnectionError:
            pass  # gone already

    async def _blocking(self, fn, *args):
        return await self.server.blocking(fn, *args)

    async def disconnect(self) -> None:
        """Give back the dictation slot of an unfinished command and the address's connection."""
        session, self.session, self.pending = self.session, None, []
        try:
            if session is not None:
                await self._blocking(session.close)
        finally:
            if self.admitted:
                self.server.release(self.address)


_REQUESTS = (Describe, Transcribe, AudioStart, AudioChunk, AudioStop)


def _parse(event: Event):
    """Return the request an event of ours holds (None for other events); raise ``bad_event`` when it is malformed."""
    kind = next((request for request in _REQUESTS if request.is_type(event.type)), None)
    if kind is None:
        return None
    try:
        request = kind.from_event(event)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise SessionError("bad_event", f"a {event.type!r} event without the fields it needs") from None
    if isinstance(request, (AudioStart, AudioChunk)) and not all(
            isinstance(v, int) for v in (request.rate, request.width, request.channels)):
        raise SessionError("bad_event", f"a {event.type!r} event's rate, width and channels must be integers")
    if isinstance(request, Transcribe) and request.language is not None and not (
            isinstance(request.language, str) and len(request.language) <= 16):
        raise SessionError("bad_event", "transcribe's language must be a language code such as \"en\"")
    return request


def _open_command(app: Flask, address: str | None, language: str | None) -> CommandSession:
    """Open a command behind the household gate (in the app's context); raise SessionError."""
    ctx = Context(engines=get_engines(app), policy=current_policy(), secret_key=app.config["SECRET_KEY"],
                  protocol=PROTOCOL, client_addr=address)
    return open_command(ctx, language)


def info(app: Flask) -> Info:
    """Return what this server offers: VoiceGate's ASR, the Whisper model in use and its languages."""
    engines = get_engines(app)
    transcriber = engines.transcriber
    whisper = Attribution(name="OpenAI Whisper, run by faster-whisper", url="https://github.com/SYSTRAN/faster-whisper")
    model = AsrModel(name=engines.whisper_name or transcriber.model_name, attribution=whisper, installed=True,
                     description="Whisper, on the words of enrolled household voices only", version=None,
                     languages=transcriber.languages)
    program = AsrProgram(name="voicegate", attribution=Attribution(name="VoiceGate", url=""),
                         installed=True, description="VoiceGate: speech to text for enrolled voices only",
                         version=VERSION, models=[model], supports_transcript_streaming=False)
    return Info(asr=[program])


class WyomingServer:
    """The Wyoming server of one app, on its own thread and event loop (see the module docstring)."""

    def __init__(self, app: Flask, host: str, port: int):
        self.app, self.host, self.port = app, host, port
        self.limits = Limits(app.config)
        self._held: Counter[str] = Counter()
        self._seen = 0  # connections accepted since start, admitted or not
        self._held_lock = threading.Lock()
        # One blocking call at a time per connection; the inference pool bounds the model work.
        self._executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="wyoming")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: AsyncTcpServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, bind_wait: float = 0.0) -> WyomingServer:
        """Listen on host:port (0: any free port, then in ``port``) and serve on a thread; raise OSError if it cannot.

        ``bind_wait``: how long a port still held by another process may be waited for.
        """
        ready, failed = threading.Event(), []
        self._thread = threading.Thread(target=self._serve, args=(ready, failed, bind_wait), name="wyoming",
                                        daemon=True)
        self._thread.start()
        ready.wait()
        if failed:
            raise failed[0]
        logger.info("Wyoming speech-to-text server on %s:%d", self.host, self.port)
        return self

    def _serve(self, ready: threading.Event, failed: list, bind_wait: float) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        deadline = time.monotonic() + bind_wait
        while True:
            try:
                self._server = AsyncTcpServer(self.host, self.port)
                loop.run_until_complete(self._server.start(self._connection))
                break
            except OSError as error:
                if error.errno == errno.EADDRINUSE and time.monotonic() < deadline:
                    time.sleep(0.5)  # the worker being replaced is still closing
                    continue
                failed.append(error)
                ready.set()
                loop.close()
                return
        # AsyncTcpServer keeps asyncio's server here: read the port it bound (for port 0).
        self.port = self._server._server.sockets[0].getsockname()[1]
        ready.set()
        loop.run_forever()
        loop.close()

    def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> CommandHandler:
        """Return the handler of a new connection; over its address's limit, one that refuses it."""
        peer = writer.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) and peer else None
        return CommandHandler(self, address, self._admit(address), reader, writer)

    def _admit(self, address: str | None) -> bool:
        with self._held_lock:
            self._seen += 1
            if self._held[address] >= self.limits.per_address:
                return False
            self._held[address] += 1
            return True

    def open_connections(self) -> int:
        """Return how many connections are open now."""
        with self._held_lock:
            return sum(self._held.values())

    def connections_seen(self) -> int:
        """Return how many connections have been accepted since the server started."""
        with self._held_lock:
            return self._seen

    def release(self, address: str | None) -> None:
        """Give back one connection of ``address``."""
        with self._held_lock:
            self._held[address] -= 1
            if self._held[address] <= 0:
                del self._held[address]

    async def blocking(self, fn, *args):
        """Run ``fn(*args)`` in the app's context on the server's threads."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(self._in_app, fn, *args))

    def _in_app(self, fn, *args):
        with self.app.app_context():
            return fn(*args)

    def stop(self) -> None:
        """Close every connection and stop listening (tests; a server process just exits)."""
        if self._loop is None or self._server is None:
            return
        asyncio.run_coroutine_threadsafe(self._server.stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._executor.shutdown(wait=True)


def serve_in_background(app: Flask) -> WyomingServer | None:
    """Start the app's Wyoming server when WYOMING_PORT is set; return it (None when off)."""
    port = app.config.get("WYOMING_PORT")
    if not port:
        return None
    return WyomingServer(app, app.config["WYOMING_HOST"], int(port)).start(bind_wait=BIND_WAIT_SECONDS)
