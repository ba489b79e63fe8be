"""What both WebSocket adapters share: waiting for the client's next frame.

While waiting, the session's ready messages (partials) are sent; a client silent for the
policy's ``idle_seconds`` is ended, and a binary frame over ``max_frame_bytes`` is refused.
Each adapter says how a failure is told in its own protocol.
"""
from __future__ import annotations

import time
from typing import Callable

from ..gate.policy import Policy

# How often a waiting adapter looks for messages of its own to send.
POLL_SECONDS = 0.1


def receive_frame(conn, policy: Policy, poll: Callable[[], None],
                  failure: Callable[[str, str], Exception]) -> bytes | str:
    """Return the client's next frame (bytes for binary, str for text); call ``poll`` while waiting.

    ``failure(code, message)`` makes the exception to raise: ``idle_timeout`` or ``frame_too_large``.
    """
    deadline = time.monotonic() + policy.idle_seconds
    while True:
        message = conn.receive(timeout=POLL_SECONDS)
        if message is not None:
            break
        poll()
        if time.monotonic() > deadline:
            raise failure("idle_timeout", f"nothing received for {policy.idle_seconds:g} s")
    if isinstance(message, (bytes, bytearray)):
        if len(message) > policy.max_frame_bytes:
            raise failure("frame_too_large", f"audio frames may hold at most {policy.max_frame_bytes} bytes")
        return bytes(message)
    return message
