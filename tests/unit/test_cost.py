"""Cost per call: the committed price table is what the pinned genai-prices gives, and our arithmetic
equals genai_prices.calc_price for every Anthropic and Bedrock-Anthropic model it lists."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from tracer.viewer.cost import PriceTable, provider_for

ROOT = Path(__file__).resolve().parents[2]
genai_prices = pytest.importorskip("genai_prices", reason="genai-prices is in the test extra (pyproject.toml)")

TABLE = PriceTable.load()
MODELS = [(pid, m["id"]) for pid, p in TABLE.providers.items() for m in p["models"]]


def test_committed_table_matches_pinned_package():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "update_prices.py"), "--check"])
    assert r.returncode == 0, "tracer/viewer/assets/prices.json is stale: run scripts/update_prices.py"
    assert TABLE.date and TABLE.source.startswith("genai-prices ")
    assert len(MODELS) > 20 and {pid for pid, _ in MODELS} == {"anthropic", "aws"}


@given(st.sampled_from(MODELS), st.integers(0, 400_000), st.integers(0, 50_000), st.integers(0, 300_000),
       st.integers(0, 100_000), st.integers(0, 100_000), st.integers(0, 5),
       st.sampled_from([dt.datetime(2025, 6, 1, tzinfo=dt.timezone.utc), dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)]))
@settings(max_examples=400, deadline=None)
def test_cost_equals_genai_prices(model, uncached, out, read, w5m, w1h, searches, when):
    pid, mid = model
    m = TABLE.match(mid, pid)
    usage = {"input_tokens": uncached, "output_tokens": out, "cache_read_input_tokens": read,
             "cache_creation_input_tokens": w5m + w1h,
             "cache_creation": {"ephemeral_5m_input_tokens": w5m, "ephemeral_1h_input_tokens": w1h},
             "server_tool_use": {"web_search_requests": searches}}
    ours = m.cost(usage, when.timestamp()) if m is not None else None
    try:
        theirs = genai_prices.calc_price(
            genai_prices.Usage(input_tokens=uncached + read + w5m + w1h, output_tokens=out, cache_read_tokens=read,
                               cache_write_tokens=w5m + w1h, cache_write_1h_tokens=w1h, web_searches=searches),
            mid, provider_id=pid, genai_request_timestamp=when)
    except LookupError:         # a model reference genai-prices does not resolve: neither do we
        assert m is None
        return
    except Exception:           # genai-prices refuses a usage it has no price for: so do we
        assert ours is None
        return
    assert m is not None and m.id == theirs.model.id
    assert ours is not None and ours == pytest.approx(float(theirs.total_price), rel=1e-9, abs=1e-12)


def test_matching_real_names_and_unknown_models():
    assert TABLE.match("claude-sonnet-4-5-20250929").id == "claude-sonnet-4-5"
    assert TABLE.match("claude-3-5-haiku-20241022") is not None
    assert TABLE.match("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "aws") is not None
    assert TABLE.match("gpt-4o") is None and TABLE.match("") is None
    assert provider_for("bedrock-runtime.us-east-1.amazonaws.com") == "aws"
    assert provider_for("api.anthropic.com") == "anthropic"
