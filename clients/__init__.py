"""Command-line clients of VoiceGate's protocols; they import no Flask and no model."""
