"""``tracer mock-server``: the mock Anthropic Messages API over HTTPS (see tracer/mock/)."""

from __future__ import annotations

import sys

import click

from tracer.mock.knobs import KNOB_FIELDS, KNOB_HELP, Knobs, choices, knob_type

_HELP = """Run a mock Anthropic Messages API over HTTPS on 127.0.0.1. Needs no privileges: started
as root for someone else (sudo), it runs as the user who invoked sudo.

\b
Prints ONE JSON line on stdout once listening, e.g.
  {"url": "https://127.0.0.1:4443", "port": 4443, "dir": "...", "cert": ".../cert.pem",
   "key": ".../key.pem", "ca": ".../ca.pem", "records": ".../records.jsonl", "alpn": [...], "pid": N}
and a human summary on stderr (unless --quiet). Stops cleanly on Ctrl-C / SIGTERM.

\b
State dir (--dir, default a new temp dir):
  cert.pem      leaf + CA chain; also usable as the client's CA bundle:
                curl --cacert DIR/cert.pem, NODE_EXTRA_CA_CERTS=DIR/cert.pem, ssl cafile
  key.pem, ca.pem, server.json (the JSON line above)
  records.jsonl one line per completed exchange: request as received, response as sent, bodies
                (response body before content-encoding) as text/base64 + sha256 + length

\b
Routes: POST /v1/messages (JSON Message, or SSE with "stream": true),
  POST /v1/messages/count_tokens, POST /v1/oauth/token (grant_type authorization_code or
  refresh_token, JSON or form: random access/refresh tokens), GET|HEAD /, anything else: 404 Anthropic
  error JSON.
Scenario (auto): a request offering a "Bash" tool whose last user message has no tool_result gets a
  tool_use (Bash, {"command": "echo hi", ...}, stop_reason tool_use); after a tool_result the answer
  is "The command printed: <output>"; otherwise text. "thinking" enabled -> a thinking block first.

\b
Knobs: every knob option below is the server-wide default; a request overrides it with a header
  x-mock-NAME: VALUE  or a query parameter  mock-NAME=VALUE  (NAME like text-bytes, delay-ms).
  e.g. curl ... -H 'x-mock-text-bytes: 100000000' -H 'x-mock-delta-size: 65536'   (100 MB SSE)

\b
Claude Code against it:
  ANTHROPIC_BASE_URL=https://127.0.0.1:PORT ANTHROPIC_API_KEY=sk-ant-mock \\
  NODE_EXTRA_CA_CERTS=DIR/cert.pem claude -p "say hi" --allowedTools Bash
"""


def _knob_options(f):
    for name in reversed(list(KNOB_FIELDS)):
        default = getattr(Knobs(), name)
        opt = "--" + name.replace("_", "-")
        t = knob_type(name)
        help_ = KNOB_HELP.get(name, "") + f"  [default: {default!r}]"
        if t is bool:
            f = click.option(f"{opt}/--no-{opt[2:]}", name, default=None, help=help_)(f)
        else:
            ch = choices(name)
            ctype = click.Choice(ch) if ch else {int: int, float: float}.get(t, str)
            f = click.option(opt, name, type=ctype, default=None, metavar=None if ch else t.__name__.upper(),
                             help=help_)(f)
    return f


@click.command("mock-server", help=_HELP, context_settings={"max_content_width": 110})
@click.option("--port", "-p", type=int, default=0, show_default=True, help="TCP port (0: ephemeral).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Listen address (keep it loopback).")
@click.option("--dir", "state_dir", type=click.Path(file_okay=False), default=None,
              help="State dir for certs and records (default: a new temp dir). Existing valid "
                   "cert.pem/key.pem/ca.pem there are reused.")
@click.option("--h2/--no-h2", default=False, show_default=True,
              help="Offer h2 in ALPN (served by tracer.mock.h2 when available).")
@click.option("--key-type", type=click.Choice(["ec", "rsa"]), default="ec", show_default=True,
              help="Certificate key type.")
@click.option("--tls-version", type=click.Choice(["auto", "1.2", "1.3"]), default="auto",
              show_default=True, help="Restrict TLS to one version.")
@click.option("--record-limit", type=int, default=4 << 20, show_default=True,
              help="Store bodies up to this many bytes in records; larger: sha256 + length only.")
@click.option("--no-records", is_flag=True, help="Do not write records.jsonl (benchmarks).")
@click.option("--log-requests", is_flag=True, help="One line per exchange on stderr.")
@click.option("--quiet", "-q", is_flag=True, help="No human summary on stderr.")
@_knob_options
def mock_server(port, host, state_dir, h2, key_type, tls_version, record_limit, no_records,
                log_requests, quiet, **knob_values):
    import asyncio
    import logging
    import signal

    import orjson

    from tracer.errors import TracerError
    from tracer.invoker import become

    try:        # the mock server needs none of root's powers: under sudo it runs as the invoking user
        become()
    except TracerError as e:
        raise click.ClickException(str(e)) from None

    from tracer.mock.knobs import with_overrides
    from tracer.mock.server import MockServerCore, ServerConfig

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="mock-server: %(levelname)s %(message)s")
    try:
        knobs = with_overrides(Knobs(), {k: v for k, v in knob_values.items() if v is not None})
    except ValueError as e:
        raise click.BadParameter(str(e)) from None

    def req_log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    cfg = ServerConfig(host=host, port=port, state_dir=state_dir, h2=h2, key_type=key_type,
                       record_limit=record_limit, keep_records=False, record_file=not no_records,
                       knobs=knobs, tls_version=tls_version,
                       request_log=req_log if log_requests else None)

    async def run() -> None:
        core = MockServerCore(cfg)
        await core.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        info = core.info()
        sys.stdout.write(orjson.dumps(info).decode() + "\n")
        sys.stdout.flush()
        if not quiet:
            d = info["dir"]
            print(f"tracer mock-server listening on {info['url']} (ALPN {', '.join(info['alpn'])})\n"
                  f"  state dir: {d}\n"
                  f"  try: curl --cacert {d}/cert.pem {info['url']}/v1/messages "
                  f"-d '{{\"model\":\"m\",\"max_tokens\":64,\"stream\":true,"
                  f"\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'\n"
                  f"  Ctrl-C to stop", file=sys.stderr, flush=True)
        await stop.wait()
        await core.stop()
        if not quiet:
            n = core.recorder.count if core.recorder else 0
            print(f"tracer mock-server stopped after {n} exchanges", file=sys.stderr, flush=True)

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


COMMANDS = [mock_server]
