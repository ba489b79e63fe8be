"""Timed calls to the service's public APIs: enroll, verify and dictate over the WebSocket, verify over HTTP.

WebSocket traffic goes through the project's own client (clients.voicegate.Conversation); audio is
sent as 16 kHz mono pcm_s16le in 100 ms frames, as that client sends a 16-bit WAV.
Latencies run from the moment the client sends ``stop`` after the last audio frame.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
import websocket

from clients.voicegate import Conversation

from .data import pcm16

PCM16K = {"encoding": "pcm_s16le", "sample_rate": 16000, "channels": 1}
REPLY_TIMEOUT = 180.0


class _Session:
    """A Conversation whose replies carry the time they arrived."""

    def __init__(self, ws_url: str, start: dict, admin=None):
        self.arrivals: list[float] = []
        self._lock = threading.Lock()
        self.conversation = Conversation(ws_url, {**start, "type": "start", "format": PCM16K}, echo=self._stamp,
                                         cookie=admin.cookie if admin else None, origin=admin.origin if admin else None)

    def _stamp(self, _line: str) -> None:
        # Called by the reader thread just before it files the reply, in arrival order.
        with self._lock:
            self.arrivals.append(time.perf_counter())

    def arrived(self, reply: dict) -> float:
        """Return when ``reply`` arrived (the Conversation files replies in arrival order)."""
        index = next(i for i, r in enumerate(self.conversation.replies) if r is reply)
        with self._lock:
            return self.arrivals[index]

    def ready(self) -> dict:
        """Wait for the server's ready (or its refusal)."""
        return self.conversation.wait_for("ready", timeout=REPLY_TIMEOUT)

    def close(self) -> None:
        """Close the session and its TCP connection."""
        self.conversation.close()
        # When the server's close frame arrives first, websocket-client never shuts the TCP socket
        # down; gunicorn then waits up to 2 s for it on its event loop, stalling every other
        # connection. Shutting it here keeps one request's end from delaying the next one's start.
        self.conversation.ws.shutdown()


def _refusal(reply: dict) -> str:
    return reply.get("code") or reply.get("type", "closed")


def _send(conversation: Conversation, audio: np.ndarray, realtime: bool) -> float:
    """Send the audio and then ``stop``; return when ``stop`` was sent."""
    try:
        conversation.send_audio(pcm16(audio), PCM16K, realtime)
        stopped = time.perf_counter()
        conversation.stop()
    except (websocket.WebSocketException, OSError):
        # The server closed the socket mid-stream; its reason (e.g. busy) is among the replies.
        stopped = time.perf_counter()
    return stopped


def enroll(ws_url: str, user: str, invite: str, clips: list[np.ndarray]) -> dict:
    """Enroll ``user`` clip by clip until the server stores a voiceprint; return what happened.

    The server stops asking once its minimums are met, so it may store fewer clips than offered.
    """
    session = _Session(ws_url, {"mode": "enroll", "user": user, "invite": invite})
    outcome = {"state": None, "clips_offered": len(clips), "clips_sent": 0, "clips_stored": 0, "refused": []}
    try:
        ready = session.ready()
        if ready["type"] != "ready":
            return {**outcome, "state": _refusal(ready)}
        conversation = session.conversation
        for clip in clips:
            seen = len(conversation.replies)
            conversation.send_audio(pcm16(clip), PCM16K, realtime=False)
            conversation.stop()
            outcome["clips_sent"] += 1
            progress = conversation.wait_for("progress", after=seen, timeout=REPLY_TIMEOUT)
            if progress["type"] != "progress":
                return {**outcome, "state": _refusal(progress)}
            if not progress["clip"]["accepted"]:
                outcome["refused"].append(progress["clip"]["reason"])
            if progress["percent"] >= 100:
                result = conversation.wait_for("result", after=seen, timeout=REPLY_TIMEOUT)
                if result["type"] != "result":
                    return {**outcome, "state": _refusal(result)}
                return {**outcome, "state": result["state"], "clips_stored": result["clips"]}
        return {**outcome, "state": "incomplete"}
    finally:
        session.close()


def verify(ws_url: str, user: str, audio: np.ndarray, realtime: bool = False, admin=None) -> dict:
    """Verify one utterance as ``user`` over the WebSocket; return state, score and latency (s).

    ``admin`` (bench.server.AdminSignIn): ask as that signed-in admin, who is shown every score.
    """
    session = _Session(ws_url, {"mode": "verify", "user": user}, admin)
    try:
        ready = session.ready()
        if ready["type"] != "ready":
            return {"state": _refusal(ready), "score": None, "threshold": None, "latency_s": None}
        stopped = _send(session.conversation, audio, realtime)
        reply = session.conversation.wait_for("result", timeout=REPLY_TIMEOUT)
        if reply["type"] != "result":
            return {"state": _refusal(reply), "score": None, "threshold": None, "latency_s": None}
        return {"state": reply["state"], "score": reply.get("score"), "threshold": reply.get("threshold"),
                "calibrated_score": reply.get("calibrated_score"), "target_far": reply.get("target_far"),
                "latency_s": session.arrived(reply) - stopped, "request_id": reply.get("request_id")}
    finally:
        session.close()


def verify_http(base_url: str, user: str, path: Path, admin=None) -> dict:
    """Verify a file as ``user`` with POST /api/v1/verify; return state, score and round-trip time (s).

    ``admin`` (bench.server.AdminSignIn): ask as that signed-in admin, who is shown every score.
    """
    data = path.read_bytes()
    began = time.perf_counter()
    response = requests.post(f"{base_url}/api/v1/verify", files={"audio": (path.name, data)},
                             data={"user": user}, timeout=REPLY_TIMEOUT, headers=admin.headers if admin else None)
    elapsed = time.perf_counter() - began
    if response.status_code != 200:
        try:
            code = response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = f"http_{response.status_code}"
        return {"state": code, "score": None, "latency_s": elapsed}
    body = response.json()
    return {"state": body["state"], "score": body.get("score"), "calibrated_score": body.get("calibrated_score"),
            "latency_s": elapsed, "request_id": body.get("request_id")}


@dataclass
class Dictation:
    """What one dictation stream got back."""

    finals: list[dict] = field(default_factory=list)  # each final, with "at_s": arrival after stop
    partials: int = 0
    shown: list[dict] = field(default_factory=list)  # every partial and final, in the order they came
    result: dict | None = None
    error: str | None = None
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def text(self) -> str:
        """Return the accepted finals' text, joined."""
        return " ".join(f["text"] for f in self.finals if f["state"] == "accept" and f.get("text"))

    @property
    def last_final_s(self) -> float | None:
        """Return when the last final arrived, in seconds after ``stop`` (negative: before it)."""
        return self.finals[-1]["at_s"] if self.finals else None

    def count(self, state: str) -> int:
        """Return how many finals had ``state``."""
        return sum(1 for f in self.finals if f["state"] == state)


def dictate(ws_url: str, user: str, audio: np.ndarray, realtime: bool, language: str | None = None) -> Dictation:
    """Dictate one recording as ``user`` (in ``language``; None: detected) and return its finals with their arrival times."""
    outcome = Dictation(audio_seconds=audio.size / 16000)
    began = time.perf_counter()
    session = _Session(ws_url, {"mode": "dictate", "user": user, **({"language": language} if language else {})})
    try:
        ready = session.ready()
        if ready["type"] != "ready":
            outcome.error = _refusal(ready)
            return outcome
        conversation = session.conversation
        stopped = _send(conversation, audio, realtime)
        reply = conversation.wait_for("result", timeout=REPLY_TIMEOUT)
        if reply["type"] == "result":
            outcome.result = reply
        else:
            outcome.error = _refusal(reply)
        for message in list(conversation.replies):
            if message["type"] in ("partial", "final"):
                outcome.shown.append(message)
            if message["type"] == "final":
                outcome.finals.append({**message, "at_s": session.arrived(message) - stopped})
            elif message["type"] == "partial":
                outcome.partials += 1
        return outcome
    finally:
        outcome.wall_seconds = time.perf_counter() - began
        session.close()
