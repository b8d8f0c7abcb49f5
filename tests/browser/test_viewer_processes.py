"""The viewer's process panel (records' tracer.process chains) in headless Chromium, and the tree the
page embeds for it - also from hostile chains."""

from __future__ import annotations

import copy

from tests.browser.test_viewer_browser import pytestmark  # noqa: F401  (the skip rule)
from tests.browser.test_viewer_features import features
from tracer.sinks.html import write_html
from tracer.viewer.processes import ProcessTree
from tracer.viewer.synth import claude_code_session, write_jsonl

AGENT = {"pid": 4100, "command": "python3 agent.py --task </script><b>x</b>"}
CLAUDE = {"pid": 4123, "command": "claude --output-format stream-json"}
HELPER = {"pid": 4200, "command": "node helper.mjs"}


def _with_processes(records: list[dict]) -> list[dict]:
    out = []
    for i, r in enumerate(records):
        r = copy.deepcopy(r)
        chain = [AGENT, CLAUDE] if i % 3 else [AGENT, HELPER]
        r.setdefault("tracer", {})["process"] = {"pid": chain[-1]["pid"], "chain": chain}
        out.append(r)
    return out


def test_panel_shows_the_tree_with_calls(tmp_path):
    records = _with_processes(claude_code_session().records)
    path = tmp_path / "tree.jsonl"
    write_jsonl(records, path)
    out = features(write_html(path), "--processes")
    n_helper = sum(1 for i in range(len(records)) if i % 3 == 0)
    assert out["procSummary"] == "3 processes (2 with calls)"
    assert out["procLines"] == [
        {"depth": 1, "text": f"4100 {AGENT['command']} no calls"},         # (as text, never markup)
        {"depth": 2, "text": f"4200 {HELPER['command']} {n_helper} call{'s' if n_helper > 1 else ''}"},
        {"depth": 2, "text": f"4123 {CLAUDE['command']} {len(records) - n_helper} calls"},
    ]                                                                       # in order of appearance


def test_one_process_no_panel(tmp_path):
    records = claude_code_session().records
    path = tmp_path / "one.jsonl"
    write_jsonl(records, path)
    out = features(write_html(path), "--processes")
    assert out["panels"] == 0


def test_hostile_chains_are_ignored_or_bounded():
    t = ProcessTree()
    bad = [{"tracer": {"process": {"chain": "x"}}}, {"tracer": {"process": {"chain": [{"pid": "1"}]}}},
           {"tracer": {"process": {"chain": [{"pid": True}]}}}, {"tracer": {"process": {"chain": [{"pid": -3}]}}},
           {"tracer": []}, {"tracer": {"process": {"chain": [None]}}}]
    for i, r in enumerate(bad):
        t.add(i, r)
    assert t.summary() == []
    t.add(0, {"tracer": {"process": {"chain": [{"pid": 7, "command": "x" * 10_000}]}}})
    (p,) = t.summary()
    assert len(p["command"]) == 200 and p["calls"] == 1 and p["parent"] is None
