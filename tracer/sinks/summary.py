"""The end-of-run summary (Session.summary()): as text on stderr, and as JSON for --summary-json."""

from __future__ import annotations

from pathlib import Path

import orjson

from tracer.sinks.jsonl import open_log
from tracer.threads import who
from tracer.sinks.otlp.sink import format_otlp


LOSSES = (("ring_drops_events", "ring-buffer drops (events)"),
          ("ring_drops_bytes", "ring-buffer drops (bytes)"),
          ("truncated_bytes", "bytes beyond the per-call copy limit"),
          ("copy_fail_bytes", "bytes unreadable in the target"),
          ("denied_bytes", "bytes not copied: the process no longer ran with the approved credentials "
                           "(setuid/setgid exec)"),
          ("gap_bytes", "bytes missing from streams (gaps)"),
          ("skipped_bytes", "bytes skipped to resynchronise"),
          ("parse_errors", "parse errors"), ("decode_errors", "decode errors"),
          ("non_http_connections", "non-HTTP connections"),
          ("unknown_header_blocks", "HTTP/2 header blocks undecodable (attached mid-connection)"),
          ("spool_lost_records", "ring records the spool could not take"),
          ("unparsed_bytes", "captured bytes never parsed (the parsing process failed)"),
          ("records_lost", "records lost (log write failures)"),
          ("records_stub", "records written as stubs (not serialisable; bodies left out)"),
          ("records_raw_body", "records with raw-text bodies (their JSON was not serialisable)"),
          ("otlp_spans_undelivered", "OTLP spans undelivered"),
          ("otlp_records_not_exported", "logged calls not exported over OTLP"),
          ("worker_errors", "internal errors"))


def losses(s: dict) -> str:
    """Every non-zero loss counter with its meaning, and every process whose TLS traffic may be
    missing, or "none"."""
    found = [f"{label}: {s[key]}" for key, label in LOSSES if s.get(key)]
    found += process_problems(s.get("processes") or [])
    return "; ".join(found) if found else "none"


def process_problems(procs: list[dict]) -> list[str]:
    """Processes whose TLS traffic may be missing from the log (tracer/processes/table.py summary)."""
    out = []
    unprobed = [p for p in procs if p["traced"] and p["problems"]]
    if unprobed:
        out.append(f"TLS code not probed in {len(unprobed)} process(es): " + ", ".join(
            f"pid {p['pid']} ({p['problems'][0]})" for p in unprobed[:5]))
    late = [p for p in procs if p["traced"] and p["late"] and any(t["mapped"] for t in p["tls"])]
    if late:
        out.append(f"probed after they started running: {len(late)} process(es) ("
                   + ", ".join(f"pid {p['pid']}" for p in late[:5]) + ")")
    ran = [p for p in procs if p.get("unprobed")]
    if ran:
        out.append(f"ran before tracer could probe them: {len(ran)} process(es): " + ", ".join(
            f"pid {p['pid']} ({p['unprobed']})" for p in ran[:5]))
    dropped = [p for p in procs if not p["traced"] and "exited before" not in p["why_not"]]
    if dropped:
        out.append(f"not traced: {len(dropped)} process(es): " + ", ".join(
            f"pid {p['pid']} ({p['why_not']})" for p in dropped[:5]))
    return out


def format_summary(s: dict) -> str:
    lines = [f"FAILED: tracer's {who(f['thread'])} died ({f['error']}"
             + (f"; at {f['where']}" if f['where'] else "") + f"): {f['consequence']}"
             for f in s.get("thread_failures") or ()]
    lines += [
        f"pairs: {s['pairs_logged']} logged, {s['pairs_filtered_out']} filtered out, "
        f"{s['pairs_incomplete']} incomplete ({s['pairs_seen']} seen on {s['connections']} connections)",
        f"captured: {s['bytes_captured']} bytes in {s['ring_records']} ring records over {s['duration_s']} s",
        f"losses: {losses(s)}",
    ]
    for note in s.get("notes") or ():      # e.g. a target that lost the right to be traced
        lines.append(f"note: {note}")
    if s.get("stage") == "spool":
        lines.append(f"deferred parsing: {s['spool_bytes'] / 1e6:.1f} MB spooled, peak backlog "
                     f"{s['spool_peak_backlog_bytes'] / 1e6:.1f} MB, parsed "
                     f"{s['parse_after_capture_s']:.1f} s after the capture ended (held "
                     f"{s.get('parse_held_s', 0):.1f} s while records came fast); ring at most "
                     f"{100 * s['ring_peak_fill']:.0f} % full, drained at least every "
                     f"{s['ring_max_drain_interval_ms']:.0f} ms")
    if s.get("last_worker_error"):
        lines.append(f"last internal error: {s['last_worker_error']}")
    if s.get("last_serialization_error"):
        lines.append(f"last serialisation error: {s['last_serialization_error']}")
    if s.get("process_tree"):
        n = sum(1 for p in s["processes"] if p["traced"])
        lines.append(f"processes ({n} traced):")
        lines += s["process_tree"]
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
