"""`tracer export otlp LOG...`: send logs already written to an OpenTelemetry backend."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from tracer.sinks.otlp.config import OtlpConfigError, display_url, resolve_endpoint


@click.group("export")
def export_group() -> None:
    """Send logs already written elsewhere."""


@export_group.command("otlp")
@click.argument("logs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--endpoint", metavar="URL", default=None,
              help="OTLP/HTTP base URL, e.g. http://localhost:4318 (/v1/traces is appended). Default: "
                   "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT.")
@click.option("--content", is_flag=True,
              help="Put message content on the spans (as it is in the log, i.e. after its redaction).")
@click.option("--timeout", type=click.FloatRange(0.1, 3600), default=None, metavar="SECONDS",
              help="Per request: the exporter retries with backoff within this time. Default: "
                   "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT / OTEL_EXPORTER_OTLP_TIMEOUT (seconds, as the Python "
                   "SDK reads them), else 30.")
def export_otlp(logs, endpoint, content, timeout):
    """Export the calls of LOG files as OpenTelemetry spans (GenAI conventions + OpenInference).

    The same spans as `tracer run --otlp-endpoint` sends live: one `chat {model}` span per call,
    `execute_tool {name}` spans for tool calls, one `invoke_agent` span per Claude Code session (the
    viewer's grouping of the whole log), subagents under the Task call that started them. Resource:
    service.name=tracer (OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES override and add), this machine's
    host.name, the traced process from the log (tracer.process: executable, redacted command line with
    --content). Needs no root: run as root for someone else (sudo), it first becomes the invoking user
    for good, so logs are read and the endpoint reached with that user's permissions. Exit status 1
    if any span could not be delivered.
    """
    from tracer.errors import TracerError
    from tracer.invoker import become
    try:
        become()
    except TracerError as e:
        raise click.ClickException(str(e)) from None
    try:
        url, _source = resolve_endpoint(endpoint, os.environ)
    except OtlpConfigError as e:
        raise click.UsageError(str(e))
    if not url:
        raise click.UsageError("no endpoint: pass --endpoint URL or set OTEL_EXPORTER_OTLP_ENDPOINT")
    if timeout is None and not (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
                                or os.environ.get("OTEL_EXPORTER_OTLP_TIMEOUT")):
        timeout = 30.0
    from tracer.sinks.otlp.engine import SpanEngine
    from tracer.sinks.otlp.export import Exporter
    from tracer.sinks.otlp.reader import LineReader, parse_line

    def note(failing: bool, msg: str) -> None:
        click.echo(f"tracer: export to {display_url(url)} " + (f"failing: {msg}" if failing else "works again"),
                   err=True)

    from tracer.sinks.otlp.export import Resources
    exporter = Exporter(url, os.environ, on_change=note, resources=Resources(os.environ, command_line=content),
                        timeout=timeout)
    undelivered = 0
    for path in logs:
        engine = SpanEngine(content=content, prune=False)
        first_pass = _records(path, LineReader, parse_line)
        for i, rec in first_pass:
            exporter.resources.note_record(_pid(rec), rec)
            engine.plan(i, rec)
        engine.commit_plan()
        before = exporter.stats.exported, exporter.stats.submitted
        pending = []
        for i, rec in _records(path, LineReader, parse_line):
            pending.extend(engine.emit(i, rec))
            if len(pending) >= 512:
                exporter.export_now(pending)
                pending = []
        pending.extend(engine.finish())
        exporter.export_now(pending)
        st, d = engine.stats, exporter.stats
        sent, total = d.exported - before[0], d.submitted - before[1]
        undelivered += total - sent
        click.echo(f"{path}: {sent} of {total} spans exported to {display_url(url)} ({st.calls} calls, "
                   f"{st.tool_spans} tool calls, {st.session_spans} sessions"
                   + (f", {st.skipped} other records skipped" if st.skipped else "") + ")"
                   + (f"; {total - sent} undelivered (last error: {d.last_error})" if total - sent else ""),
                   err=True)
    exporter.close(5.0)
    sys.exit(1 if undelivered else 0)


def _pid(rec: dict):
    tr = rec.get("tracer") if isinstance(rec.get("tracer"), dict) else {}
    return tr.get("pid") if isinstance(tr.get("pid"), int) else None


def _records(path: Path, LineReader, parse_line):
    """(index, record) for each record of a log, read with bounded memory (as the live exporter does)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        reader = LineReader(fd)
        i = 0
        done = False
        while not done:
            items = reader.read(8 << 20)
            if reader.at_eof:
                items += reader.flush_last()      # a last line without a newline
                done = True
            for item in items:
                rec = parse_line(item, reader.stats)
                if rec is not None:
                    yield i, rec
                    i += 1
    finally:
        os.close(fd)


COMMANDS = [export_group]
