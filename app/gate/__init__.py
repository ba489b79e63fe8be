"""Who may speak, and what gets written down: enrollment, verification and identity-gated dictation.

Protocol-independent state machines. An adapter (WebSocket, HTTP, Kõnele) decodes
audio to 16 kHz mono float32 and calls ``audio()``, ``stop()`` and ``poll()``; each
returns the messages (plain dicts) to send. Failures that end a session raise
SessionError with a stable code. Model calls go through the bounded inference pool.
"""
