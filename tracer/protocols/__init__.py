"""Sans-IO protocol parsers: bytes in, events out. Nothing in this package touches files or sockets."""
