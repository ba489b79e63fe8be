"""VoiceGate's benchmark suite: the service measured as a client meets it (python -m bench)."""
