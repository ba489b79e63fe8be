"""Servers that run inside the server process beside the HTTP side (the Wyoming one, for now).

The app factory registers how to start each (it knows them; this layer does not), and the
gunicorn worker starts them once the app is loaded in its own process, so that they share
its models and limits. A test or a command that only builds the app starts nothing.
"""
from __future__ import annotations

from typing import Callable

from flask import Flask

_KEY = "voicegate.companions"


def register(app: Flask, start: Callable[[], object]) -> None:
    """Have ``start`` called when a server process starts serving ``app``."""
    app.extensions.setdefault(_KEY, []).append(start)


def start_all(app) -> None:
    """Start every companion server registered for ``app`` (anything without them: nothing)."""
    for start in getattr(app, "extensions", {}).get(_KEY, ()):
        start()
