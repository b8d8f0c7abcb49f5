"""Command line: `tracer attach|run|mock-server|doctor|locate|html|index`."""

from __future__ import annotations

import importlib

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="tracer")
def main() -> None:
    """Out-of-process eBPF tracer for LLM API traffic.

    Puts uprobes on the TLS library inside an unmodified process (OpenSSL, Node's static OpenSSL,
    BoringSSL inside Bun/Claude Code), reassembles HTTP and Server-Sent Events from the plaintext and
    writes claude-trace-compatible JSONL logs plus an HTML viewer. Needs root (or CAP_BPF+CAP_PERFMON).
    """


# Sub-commands live next to the code they drive; each module exposes click commands in COMMANDS.
_COMMAND_MODULES = [
    "tracer.commands.capture",     # attach, run
    "tracer.commands.doctor",      # doctor
    "tracer.commands.mock",        # mock-server
    "tracer.commands.locate",      # locate
    "tracer.commands.viewer",      # html, index
]

for _mod in _COMMAND_MODULES:
    try:
        _m = importlib.import_module(_mod)
    except ModuleNotFoundError as e:  # a command module not written yet
        if e.name != _mod:
            raise
        continue
    for _cmd in getattr(_m, "COMMANDS", ()):
        main.add_command(_cmd)


if __name__ == "__main__":
    main()
