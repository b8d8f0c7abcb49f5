"""Command line: `tracer attach|run|tail|doctor|locate|html|index|mock-server|export`."""

from __future__ import annotations

import importlib

import click

# Sub-commands live next to the code they drive (tracer/commands/*); each module lists its click
# commands in COMMANDS. They are imported only when used, so `tracer attach` does not pay for the
# mock server's TLS stack or the viewer.
COMMAND_MODULES = {
    "attach": "tracer.commands.capture",
    "run": "tracer.commands.capture",
    "doctor": "tracer.commands.doctor",
    "locate": "tracer.commands.locate",
    "html": "tracer.commands.viewer",
    "index": "tracer.commands.viewer",
    "mock-server": "tracer.commands.mock",
    "export": "tracer.commands.export",
    "tail": "tracer.commands.tail",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMAND_MODULES)

    def get_command(self, ctx, name):
        mod = COMMAND_MODULES.get(name)
        if mod is None:
            return None
        for cmd in importlib.import_module(mod).COMMANDS:
            if cmd.name == name:
                return cmd
        return None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"],
                                              "max_content_width": 100})
@click.version_option(package_name="tracer")
def main() -> None:
    """Out-of-process eBPF tracer for LLM API traffic.

    Puts uprobes on the TLS library inside an unmodified process (OpenSSL, Node's static OpenSSL,
    BoringSSL inside Bun/Claude Code), reassembles HTTP and Server-Sent Events from the plaintext and
    writes claude-trace-compatible JSONL logs plus an HTML viewer. Needs root (or CAP_BPF+CAP_PERFMON).
    """


if __name__ == "__main__":
    main()
