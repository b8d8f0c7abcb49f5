"""Bounded-memory log reading: long lines parsed with their big strings left in the file, read back
exactly, in pieces; bad lines skipped and counted."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from tracer.viewer import logs
from tracer.viewer.logs import BigString, iter_lines


def _materialize(v):
    if isinstance(v, BigString):
        return "".join(v.pieces(size=97))
    if isinstance(v, dict):
        return {k: _materialize(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_materialize(x) for x in v]
    return v


texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)) | st.sampled_from(
    ['"', "\\", "\n", "\x00", "é", "😀", "\u2028", "u"]), max_size=300)
values = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | texts,
                      lambda c: st.lists(c, max_size=4) | st.dictionaries(texts, c, max_size=4), max_leaves=20)


@given(values, st.integers(4, 64), st.sampled_from(["orjson", "stdlib-ascii"]))
@settings(max_examples=300, deadline=None)
def test_lean_parse_equals_whole_parse(tmp_path_factory, value, big, enc):
    rec = {"request": {"body": value}, "response": {"body_raw": value}}
    line = orjson.dumps(rec) if enc == "orjson" else json.dumps(rec, ensure_ascii=True).encode()
    p = tmp_path_factory.mktemp("lean") / "log.jsonl"
    p.write_bytes(b"\n" + line + b"\n")
    old = (logs.INLINE_LINE, logs.BIG_STRING, logs._READ)
    logs.INLINE_LINE, logs.BIG_STRING, logs._READ = 0, big, 37
    try:
        got = list(iter_lines(p))
    finally:
        logs.INLINE_LINE, logs.BIG_STRING, logs._READ = old
    assert len(got) == 1 and got[0].lineno == 2
    assert _materialize(got[0].record) == rec


def test_big_string_pieces_and_head(tmp_path):
    text = ("ab\"c\\d\né😀\u2028" * 50_000)
    rec = {"request": {"url": "u"}, "response": {"body_raw": text, "status_code": 200}}
    p = tmp_path / "log.jsonl"
    p.write_bytes(orjson.dumps(rec) + b"\n" + json.dumps(rec).encode() + b"\n")
    old = logs.INLINE_LINE
    logs.INLINE_LINE = 1000
    try:
        recs = [ln.record for ln in iter_lines(p)]
    finally:
        logs.INLINE_LINE = old
    for r in recs:
        b = r["response"]["body_raw"]
        assert isinstance(b, BigString) and r["response"]["status_code"] == 200
        for size in (7, 1001, 65536):
            assert "".join(b.pieces(size=size)) == text
        head, whole = b.head(10)
        assert head == text[:10] and not whole
        assert b.marker()["line"] in (1, 2)


def test_bad_lines_are_skipped_and_said(tmp_path):
    deep = "[" * 300 + "]" * 300
    lines = [orjson.dumps({"request": {"url": "a"}}).decode(), "not json",
             '{"request": {"body": ' + deep + "}}", "[1, 2]", '{"no": "request"}',
             orjson.dumps({"request": {"url": "b"}}).decode(), '{"request": {"url": "torn']
    p = tmp_path / "log.jsonl"
    p.write_text("\n".join(lines))
    warnings = []
    recs = [ln.record for ln in iter_lines(p, warnings)]
    assert [r["request"].get("url") for r in recs] == ["a", None, "b"]   # 300 levels parse; the build copes
    assert any(w.startswith("line 2:") for w in warnings) and any(w.startswith("line 7:") for w in warnings)
    assert any(w.startswith("line 4:") for w in warnings) and any(w.startswith("line 5:") for w in warnings)


def test_torn_long_line(tmp_path):
    p = tmp_path / "log.jsonl"
    p.write_bytes(orjson.dumps({"request": {"url": "a"}}) + b"\n" + b'{"request": {"body": "' + b"x" * 5000)
    old = logs.INLINE_LINE
    logs.INLINE_LINE = 100
    try:
        warnings = []
        recs = list(iter_lines(p, warnings))
    finally:
        logs.INLINE_LINE = old
    assert len(recs) == 1 and warnings and warnings[0].startswith("line 2:")


def _rchar() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    return 0


def test_page_build_reads_the_log_a_bounded_number_of_times(tmp_path, monkeypatch):
    """Two passes over the file (plus reading back big strings once each for the page and the rebuild):
    bytes read stay a small multiple of the log's size, with long lines or not."""
    from tracer.sinks.html import write_html
    from tracer.viewer.synth import SONNET, LogBuilder, write_jsonl

    monkeypatch.setattr(logs, "INLINE_LINE", 50_000)
    log = LogBuilder()
    for i in range(40):
        log.call({"model": SONNET, "messages": [{"role": "user", "content": f"q{i} " + "z" * (i * 5000)}],
                  "stream": True}, [{"type": "text", "text": f"answer {i}"}])
    path = tmp_path / "log.jsonl"
    write_jsonl(log.records, path)
    size = path.stat().st_size
    before = _rchar()
    write_html(path, tmp_path / "out.html")
    read = _rchar() - before
    assert read <= 6 * size + (2 << 20), (read, size)


def test_analysis_keeps_bounded_text_per_thread():
    from tracer.viewer.analyze import FIRST_TEXT_CHARS, Analyzer
    from tracer.viewer.synth import SONNET

    a = Analyzer(keep_responses=False)
    for i in range(50):
        a.add({"request": {"url": "https://api.anthropic.com/v1/messages", "method": "POST", "body": {
            "model": SONNET, "messages": [{"role": "user", "content": f"{i} " + "w" * 200_000}]}}, "response": None})
    an = a.finish()
    assert len(an.threads) == 50
    assert all(len(t.first_text) <= FIRST_TEXT_CHARS and len(t.prompt) <= 1024 for t in an.threads)
