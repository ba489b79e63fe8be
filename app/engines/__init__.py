"""The models, loaded once per process: ECAPA speaker embeddings, Whisper, the Silero VAD, and the pool that runs them."""
