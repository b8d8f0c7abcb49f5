"""``python -m tracer.mock`` == ``tracer mock-server``."""

from tracer.commands.mock import mock_server

if __name__ == "__main__":
    mock_server.main(prog_name="python -m tracer.mock")
