"""The end-of-run summary (Session.summary()): as text on stderr, and as JSON for --summary-json."""

from __future__ import annotations

from pathlib import Path

import orjson

from tracer.sinks.jsonl import open_log
from tracer.sinks.otlp.sink import format_otlp


LOSSES = (("ring_drops_events", "ring-buffer drops (events)"),
          ("ring_drops_bytes", "ring-buffer drops (bytes)"),
          ("truncated_bytes", "bytes beyond the per-call copy limit"),
          ("copy_fail_bytes", "bytes unreadable in the target"),
          ("gap_bytes", "bytes missing from streams (gaps)"),
          ("skipped_bytes", "bytes skipped to resynchronise"),
          ("parse_errors", "parse errors"), ("decode_errors", "decode errors"),
          ("non_http_connections", "non-HTTP connections"),
          ("unknown_header_blocks", "HTTP/2 header blocks undecodable (attached mid-connection)"),
          ("records_lost", "records lost (log write failures)"),
          ("otlp_spans_undelivered", "OTLP spans undelivered"),
          ("otlp_records_not_exported", "logged calls not exported over OTLP"),
          ("worker_errors", "internal errors"))


def losses(s: dict) -> str:
    """Every non-zero loss counter with its meaning, or "none"."""
    found = [f"{label}: {s[key]}" for key, label in LOSSES if s.get(key)]
    return "; ".join(found) if found else "none"


def format_summary(s: dict) -> str:
    lines = [
        f"pairs: {s['pairs_logged']} logged, {s['pairs_filtered_out']} filtered out, "
        f"{s['pairs_incomplete']} incomplete ({s['pairs_seen']} seen on {s['connections']} connections)",
        f"captured: {s['bytes_captured']} bytes in {s['ring_records']} ring records over {s['duration_s']} s",
        f"losses: {losses(s)}",
    ]
    if s.get("last_worker_error"):
        lines.append(f"last internal error: {s['last_worker_error']}")
    if "otlp_endpoint" in s:
        lines.append(format_otlp(s))
    lines.append(f"log: {s['log']}")
    return "\n".join(lines)


def write_summary_json(path: Path, summary: dict) -> None:
    """The summary as one JSON object in a new file (never over an existing one, never through a
    symlink), owned by the invoking user like the log."""
    fd = open_log(Path(path))
    with open(fd, "wb") as f:
        f.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
