"""Search, cost and "what changed" in headless Chromium (issue 16): on the synthetic Claude Code session,
on a real traced Claude Code session, and on 1,000-pair logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.browser.test_viewer_browser import probe, pytestmark, session_page  # noqa: F401  (fixture, skip rule)
from tracer.sinks.html import write_html
from tracer.viewer.analyze import analyze
from tracer.viewer.cost import PriceTable
from tracer.viewer.logs import read_records
from tracer.viewer.synth import big_log, unique_log, write_jsonl


def features(page: Path, *args: str, timeout: float = 300) -> dict:
    out = probe(page, *args, timeout=timeout, script="features.mjs")
    assert out["consoleErrors"] == [] and out["pageErrors"] == [] and out["requests"] == []
    return out


def usd(x: float) -> str:
    return "$0" if x == 0 else f"${x:.4f}" if x < 0.01 else f"${x:.2f}"


@pytest.fixture(scope="module")
def synth(session_page):
    return session_page


def test_cost_per_call_session_and_total(synth):
    page, log = synth
    an = analyze(log.records)
    q = "return round_price(sum"
    out = features(page, q, "--changes", "3")
    # every Messages call priced by the table (Sonnet 4.5, Haiku 3.5): page figures = Python's
    s0 = an.sessions[0]
    want = [usd(an.calls[i].cost) for i in s0.calls]
    assert out["callCosts"] == want and all(c.cost for c in an.calls if c.kind == "messages")
    total = sum(c.cost for c in an.calls if c.cost is not None)
    assert out["headerCost"] == "cost " + usd(total)
    assert out["sessionCosts"][0].endswith(usd(s0.totals(an.calls)["cost"]))
    t = PriceTable.load()
    assert t.date in out["priceDate"] and t.source in out["priceTitle"] and "Claude Sonnet 4.5" in out["priceTitle"]


def test_search_lists_and_highlights_in_place(synth):
    page, _ = synth
    out = features(page, "return round_price(sum", "You are an agent for Claude Code", "All tests pass.")
    r = out["queries"]["return round_price(sum"]        # an Edit's new_string, in a tool input
    assert r["head"].startswith("1 match") and r["labels"][0].startswith("session 1 · main · call #")
    assert "tool input" in r["labels"][0] and r["view"] == "view-conversations"
    assert r["highlight"]["text"] == "return round_price(sum" and r["marksVisible"]
    r = out["queries"]["You are an agent for Claude Code"]   # a subagent's system prompt, folded away
    assert "subagent" in r["labels"][0] and "system prompt" in r["labels"][0] and r["marksVisible"]
    r = out["queries"]["All tests pass."]                    # the final answer
    assert r["labels"] and r["highlight"]["text"] == "All tests pass." and r["marksVisible"]


def test_what_changed_since_previous_call(synth):
    page, log = synth
    out = features(page, "--changes", "3")
    an = analyze(log.records)
    th = an.threads[an.calls[3].thread]
    prev = th.calls[th.calls.index(3) - 1]
    assert out["changes"].startswith(f"Compared with call #{prev}: 2 messages added")
    assert "only its per-request billing line differs" in out["changes"]
    assert "Messages added" in out["changes"] and "assistant: [Bash" in out["changes"] and "user: [result" in out["changes"]
    assert out["callChanges"][0].startswith("first call")
    assert sum(1 for c in out["callChanges"] if c.startswith("+2 msgs")) >= 10


def test_real_claude_code_session(traced_claude_log, tmp_path):
    recs, warnings = read_records(traced_claude_log)
    an = analyze(recs)
    page = write_html(traced_claude_log, tmp_path / "real.html")
    root = an.threads[an.sessions[0].root]
    answer = [b["text"] for b in an.calls[root.final].response["content"] if b.get("type") == "text"][-1]
    needle = answer.strip().splitlines()[0][:40]
    out = features(page, "say hi", needle)
    assert out["queries"]["say hi"]["labels"] and out["queries"]["say hi"]["marksVisible"]
    assert out["queries"][needle]["labels"] and out["queries"][needle]["highlight"]["text"].lower() == needle.lower()
    # the mock answers as a real model name: priced, or "unknown" when the table does not know it
    for c in an.calls:
        if c.kind == "messages":
            assert (c.cost is not None) == (PriceTable.load().match(c.model, c.provider) is not None)
    assert out["headerCost"].startswith("cost ")


@pytest.mark.parametrize("shape", ["sessions", "unique"])
def test_thousand_pairs_search(tmp_path, shape):
    log = tmp_path / f"{shape}.jsonl"
    write_jsonl(big_log(1000, 100 << 20) if shape == "sessions" else unique_log(1000, 100 << 20), log)
    page = write_html(log)
    q = "grep -rn item77 src/" if shape == "sessions" else "Task 999:"
    out = features(page, q, "no-such-text-anywhere")
    r = out["queries"][q]
    assert r["labels"] and r["marksVisible"] and r["highlight"]["text"] == q
    assert out["queries"]["no-such-text-anywhere"]["head"].startswith("0 matches")
    # first search includes building the index over ~100 MB of page data
    assert r["ms"] < 20_000, r
    (Path(__file__).resolve().parents[2] / "test-artifacts").mkdir(exist_ok=True)
    (Path(__file__).resolve().parents[2] / "test-artifacts" / f"viewer-search-{shape}.json").write_text(
        json.dumps({q: r["ms"], "no match": out["queries"]["no-such-text-anywhere"]["ms"]}))


def test_search_says_when_bodies_were_cut(tmp_path, monkeypatch):
    from tracer.viewer import logs as vlogs
    from tracer.viewer import page as vpage
    from tracer.viewer.synth import SONNET, LogBuilder

    monkeypatch.setattr(vlogs, "INLINE_LINE", 20_000)
    monkeypatch.setattr(vpage, "HEAD_CHARS", 2000)
    monkeypatch.setattr(vpage, "REBUILT_CHARS", 2000)
    text = "BEGINNING of a long answer. " + "filler words here " * 5000 + "THE END OF IT"
    log = LogBuilder()
    log.call({"model": SONNET, "messages": [{"role": "user", "content": "write a lot"}], "stream": True},
             [{"type": "text", "text": text}])
    path = tmp_path / "cut.jsonl"
    write_jsonl(log.records, path)
    out = features(write_html(path), "BEGINNING of a long", "THE END OF IT")
    assert out["queries"]["BEGINNING of a long"]["labels"] and out["queries"]["BEGINNING of a long"]["cutNote"]
    assert out["queries"]["THE END OF IT"]["head"].startswith("0 matches") and out["queries"]["THE END OF IT"]["cutNote"]
