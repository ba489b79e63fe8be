"""Where audio enters: bytes of any format to 16 kHz mono float32, and where the speech is in it."""
