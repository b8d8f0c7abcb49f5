"""A thread of tracer's that dies is reported at once, kept for the summary, and fails the run."""

from __future__ import annotations

import threading

from tracer.sinks.summary import format_summary
from tracer.threads import ThreadFailures, start_thread


def test_death_is_recorded_reported_and_handled(capsys):
    failures = ThreadFailures()
    done = threading.Event()

    def body():
        raise KeyError("gone")

    t = start_thread("tracer-x", body, failures, "x no longer happens", on_death=done.set)
    t.join(5)
    assert done.is_set()
    (f,) = failures.as_list()
    assert f["thread"] == "tracer-x" and f["error"] == "KeyError: 'gone'" and "in body" in f["where"]
    assert "INTERNAL ERROR: thread tracer-x died" in capsys.readouterr().err


def test_summary_says_failed_first():
    s = {"pairs_logged": 1, "pairs_filtered_out": 0, "pairs_incomplete": 0, "pairs_seen": 1,
         "connections": 1, "bytes_captured": 10, "ring_records": 2, "duration_s": 1.0, "log": "x.jsonl",
         "records_stub": 1, "records_raw_body": 2, "last_serialization_error": "TypeError: Recursion limit",
         "thread_failures": [{"thread": "tracer-jsonl", "error": "MemoryError: x", "where": "jsonl.py:1",
                              "consequence": "records are no longer written"}]}
    text = format_summary(s)
    first = text.splitlines()[0]
    assert first.startswith("FAILED: tracer's thread tracer-jsonl died (MemoryError: x")
    assert "records written as stubs" in text and "records with raw-text bodies" in text
    assert "last serialisation error: TypeError: Recursion limit" in text
