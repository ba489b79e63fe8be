"""Thin adapters from wire protocols to the gate: /ws/voice, /api/v1 and Kõnele's kaldi-gstreamer-server endpoints."""
