"""What crosses between device and server: codecs, messages, protocol."""
