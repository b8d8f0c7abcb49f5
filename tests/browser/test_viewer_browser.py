"""The HTML viewer in a real headless Chromium (Debian's, driven by playwright-core; see
scripts/bootstrap-browser.sh). Screenshots go to test-artifacts/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tracer.sinks.html import write_html
from tracer.viewer.synth import (XSS_IMG, XSS_SCRIPT, big_log, claude_code_session, compacted_session, unique_log,
                                 write_jsonl)

ROOT = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).resolve().parent / "harness"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and shutil.which("node") and (HARNESS / "node_modules" / "playwright-core").exists()),
    reason="needs chromium and the browser harness: run scripts/bootstrap-browser.sh")


def probe(page: Path, *extra: str, timeout: float = 240, script: str = "probe.mjs") -> dict:
    r = subprocess.run(["node", str(HARNESS / script), str(page), *extra], capture_output=True, text=True,
                       timeout=timeout, cwd=HARNESS)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "fatal" not in out, out.get("fatal")
    return out


@pytest.fixture(scope="module")
def session_page(tmp_path_factory) -> tuple[Path, object]:
    d = tmp_path_factory.mktemp("viewer")
    log = claude_code_session()
    compacted_session(log)
    path = d / "claude-code.jsonl"
    write_jsonl(log.records, path)
    return write_html(path), log


@pytest.fixture(scope="module")
def seen(session_page) -> dict:
    ARTIFACTS.mkdir(exist_ok=True)
    return probe(session_page[0], "--screenshot", str(ARTIFACTS / "viewer-conversation.png"),
                 "--screenshot2", str(ARTIFACTS / "viewer-compacted.png"),
                 "--screenshot3", str(ARTIFACTS / "viewer-json-debug.png"))


def test_no_errors_and_no_network(seen):
    assert seen["consoleErrors"] == [] and seen["pageErrors"] == []
    assert seen["requests"] == []
    assert seen["dialogs"] == 0


def test_prompt_tool_round_trip_and_answer_visible(seen):
    text = seen["conversationText"]
    assert "Fix the failing price test in shop/cart.py" in text                   # user prompt
    assert "$ cd /home/dev/shop && python -m pytest -q tests/test_cart.py" in text  # Bash tool call
    assert "test_total: assert 10.0 == 9.99" in text                             # its result
    assert "All tests pass." in text and "Fixed" in text                          # final answer (markdown)
    for tool in ("TodoWrite", "Bash", "Glob", "Read", "Edit", "Task", "MultiEdit", "WebSearch", "WebFetch", "Write"):
        assert tool in seen["toolNames"]
    assert "Run the test suite" in text                                           # TodoWrite checklist
    assert "+     return round_price(sum(i.price for i in items))" in text        # Edit as a diff
    assert "TTFT" in text and "tok/s" in text                                     # per-call figures


def test_subagent_and_compaction(seen):
    assert "Find every caller of round_price" in seen["subagentText"]
    assert "shop/money.py:3:def round_price(x):" in seen["subagentText"]
    assert seen["compactedMarkers"] == 1
    assert "Refactor the billing module" in seen["session2Text"]
    assert "Done refactoring." in seen["session2Text"]
    assert seen["callRows"] == 16


def test_payloads_shown_as_text_never_run(seen):
    assert seen["xss"] == 0 and seen["imgOnerror"] == 0
    # the payload is visible, literally, as text
    assert XSS_IMG in seen["conversationText"] and XSS_SCRIPT in seen["conversationText"]
    # a javascript: link keeps its text but loses its target
    assert seen["jsLinkCount"] == 1 and not (seen["jsLinkHref"] or "").lower().startswith("javascript")


def test_raw_and_json_views_and_model_filter(seen, session_page):
    _, log = session_page
    assert seen["rawRows"] == len(log.records)
    assert seen["jsonRows"] == sum(1 for r in log.records if "messages" in (r["request"].get("body") or {}))
    assert "x-api-key" in seen["rawFirst"] and "sk-ant-api...abcd" in seen["rawFirst"]
    assert '"stop_reason": "tool_use"' in seen["jsonSecond"] and '"name": "TodoWrite"' in seen["jsonSecond"]
    assert "rebuilt from the SSE stream" in seen["jsonSecond"]
    assert seen["hasModelFilter"] and seen["filterModel"].startswith("claude-3-5-haiku")
    assert seen["filteredJsonRows"] == 2


def test_screenshot_written(seen):
    png = ARTIFACTS / "viewer-conversation.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


@pytest.mark.parametrize("shape", ["sessions", "unique"])
def test_thousand_pairs_first_conversation_within_3s(tmp_path, shape):
    """1,000 pairs, ~100 MB: ten long Claude-Code-like sessions (history repeated in every request, so
    the page deduplicates it), and 1,000 distinct prompts (nothing to deduplicate: a ~100 MB page)."""
    log = tmp_path / f"{shape}.jsonl"
    recs = big_log(1000, 100 << 20) if shape == "sessions" else unique_log(1000, 100 << 20)
    write_jsonl(recs, log)
    t0 = time.monotonic()
    page = write_html(log)
    build_s = time.monotonic() - t0
    runs = [probe(page, "--timing-only") for _ in range(2)]
    for r in runs:
        assert r["consoleErrors"] == [] and r["pageErrors"] == []
        assert r["sessions"] == (10 if shape == "sessions" else 1000)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"viewer-bench-{shape}.json").write_text(json.dumps({
        "pairs": len(recs), "log_bytes": log.stat().st_size, "html_bytes": page.stat().st_size,
        "build_s": round(build_s, 2),
        # Element Timing: first message of the first conversation painted, ms since navigation start
        "first_message_paint_ms": [r["firstMessagePaintMs"] for r in runs],
        # from page.goto() until the conversation is on screen and the page answers scripted input
        "first_conversation_interactive_ms": [r["firstConversationMs"] for r in runs],
        "load_ms": [r["loadMs"] for r in runs]}, indent=1))
    assert len(recs) == 1000 and log.stat().st_size > 90 << 20
    assert all(r["firstMessagePaintMs"] is not None for r in runs)
    assert min(r["firstMessagePaintMs"] for r in runs) <= 3000, runs
    assert min(r["firstConversationMs"] for r in runs) <= 3000, runs


REAL_LOGS = sorted(p for pattern in os.environ.get("TRACER_VIEWER_REAL_LOGS", "").split(os.pathsep) if pattern
                   for p in Path("/").glob(pattern.lstrip("/")))


@pytest.mark.parametrize("log", REAL_LOGS or ["traced-here"], ids=lambda p: getattr(p, "name", p))
def test_real_claude_code_log(tmp_path, log, request):
    """A log traced from a real Claude Code (`claude -p "say hi"` against the mock API, traced in this
    run; or the logs TRACER_VIEWER_REAL_LOGS points to)."""
    if log == "traced-here":
        log = request.getfixturevalue("traced_claude_log")
    from tracer.viewer.analyze import analyze
    from tracer.viewer.logs import read_records

    recs, warnings = read_records(log)
    an = analyze(recs)
    page = write_html(log, tmp_path / "real.html")
    seen = probe(page, "--screenshot", str(ARTIFACTS / f"viewer-real-{log.stem}.png"))
    assert seen["consoleErrors"] == [] and seen["pageErrors"] == [] and seen["requests"] == []
    assert not warnings and seen["sessions"] == len(an.sessions) >= 1
    # every Messages call of a real session lands in one conversation per Claude Code session id
    sids = {t.sid for t in an.threads if t.kind == "main"} - {""}
    if sids:
        assert len([t for t in an.threads if t.kind == "main" and t.continues is None]) <= len(sids)
    root = an.threads[an.sessions[0].root]
    assert root.title and root.title in seen["conversationText"]
    final = an.calls[root.final].response
    last_text = [b["text"] for b in final["content"] if b.get("type") == "text"]
    if last_text:
        assert last_text[-1].strip().splitlines()[0] in seen["conversationText"]


ODD_RECORDS = [
    {"request": {"method": "POST", "url": "https://api.anthropic.com/v1/messages", "body": {
        "model": 42, "system": {"weird": True}, "tools": [None, "Bash", {"name": 7}],
        "messages": [
            {"role": "user", "content": [None, 5, "str", {"type": "text"}, {"type": "text", "text": {"x": 1}},
                                         {"type": "image", "source": {"type": "base64", "media_type": "image/svg+xml",
                                                                      "data": "<svg onload=alert(1)>"}},
                                         {"type": "image", "source": {"type": "url", "url": "https://example.com/x.png"}},
                                         {"type": "mystery", "payload": "<b>bold?</b>"}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "t1", "name": "Edit", "input": "not an object"},
                {"type": "tool_use", "id": "t2", "name": "TodoWrite", "input": {"todos": "nope"}},
                {"type": "tool_use", "id": "t3", "name": "MultiEdit", "input": {"edits": [None, {"old_string": 1}]}},
                {"type": "tool_use", "name": "Task", "input": {"prompt": None}},
                {"type": "thinking"}, {"type": "redacted_thinking", "data": "xx"}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": {"obj": 1}},
                                         {"type": "tool_result", "tool_use_id": "t2", "content": [None, {"type": "text"}]},
                                         {"type": "tool_result", "tool_use_id": "zz", "is_error": True, "content": "orphan"}]},
            None, 17, {"content": "no role"}, {"role": "user", "content": {"type": "text", "text": "dict content"}},
        ]}},
     "response": {"status_code": "200", "headers": ["not", "a", "dict"],
                  "body_raw": "event: message_start\ndata: {\"type\": \"message_start\", \"message\": 5}\n\n"
                              "event: content_block_delta\ndata: {\"type\": \"content_block_delta\", \"index\": 3, "
                              "\"delta\": {\"type\": \"text_delta\", \"text\": \"<img src=x onerror=alert(1)>\"}}\n\n"},
     "tracer": {"response_chunks": [[0, 1.0], ["x", 2]]}},
    {"request": {"method": "GET", "url": None, "headers": None, "body": "plain text body"},
     "response": {"status_code": 500, "body": "oops"}, "note": "<i>odd</i>"},
    {"request": {"body": {"messages": []}}, "response": None},
]


def test_odd_records_render_without_errors(tmp_path):
    log = tmp_path / "odd.jsonl"
    write_jsonl(ODD_RECORDS, log)
    out = probe(write_html(log), "--open-all")
    assert out["consoleErrors"] == [] and out["pageErrors"] == [] and out["requests"] == []
    assert out["xss"] == 0 and out["dialogs"] == 0
    text = "\n".join(out["opened"])
    assert "dict content" in text and "orphan" in text and "plain text body" in text
    assert "<img src=x onerror=alert(1)>" in text    # shown, as text


def test_session_deep_link(session_page):
    out = probe(session_page[0], "--timing-only", "--hash", "#session=1")
    assert out["activeSession"] == "1" and out["headline"] == "Refactor the billing module"
    assert out["consoleErrors"] == [] and out["pageErrors"] == []
