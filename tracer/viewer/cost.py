"""What a call cost, from its token counts and the dated price table of genai-prices.

The table (``assets/prices.json``, extracted from the pinned ``genai-prices`` package by
scripts/update_prices.py) covers Anthropic's API and Anthropic models on Bedrock. A model the table does
not know has cost None ("unknown" in the viewer): never a guess.

    t = PriceTable.load()
    m = t.match("claude-sonnet-4-5-20250929", "anthropic")     # ModelPrices or None
    m.cost(usage, when=epoch_seconds)                          # USD, from a Messages ``usage`` object

Prices are per million tokens. Anthropic's ``input_tokens`` excludes cached tokens: cache reads and
writes are priced on their own, and a tier ("above 200k input tokens") applies to every token of a
request once its total input (uncached + cache read + cache write) passes the tier's start.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any


def _match(clause: dict, text: str) -> bool:
    if "or" in clause:
        return any(_match(c, text) for c in clause["or"])
    if "and" in clause:
        return all(_match(c, text) for c in clause["and"])
    if "starts_with" in clause:
        return text.startswith(clause["starts_with"].lower())
    if "ends_with" in clause:
        return text.endswith(clause["ends_with"].lower())
    if "contains" in clause:
        return clause["contains"].lower() in text
    if "equals" in clause:
        return text == clause["equals"].lower()
    if "regex" in clause:
        return re.search(clause["regex"], text) is not None
    return False


def _rate(v: Any, total_in: int) -> float | None:
    if v is None:
        return None
    if isinstance(v, dict):
        r = float(v["base"])
        for start, price in v["tiers"]:
            if total_in > start:
                r = float(price)
        return r
    return float(v)


def _n(v: Any) -> int:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 else 0


@dataclass
class ModelPrices:
    provider: str
    id: str
    name: str
    prices: list[dict]           # [{"start": "YYYY-MM-DD" | None, "prices": {...}}], later ones win

    def at(self, when: float | None) -> dict:
        chosen = self.prices[0]["prices"]
        try:
            day = _dt.datetime.fromtimestamp(when, _dt.timezone.utc).date().isoformat() if when else None
        except (OverflowError, OSError, ValueError):
            day = None
        for p in self.prices:
            if p["start"] is None or (day is not None and day >= p["start"]):
                chosen = p["prices"]
        return chosen

    def cost(self, usage: dict, when: float | None = None) -> float | None:
        """USD for one response's ``usage``; None when a token kind it used has no price here."""
        p = self.at(when)
        uncached = _n(usage.get("input_tokens"))
        read = _n(usage.get("cache_read_input_tokens"))
        write = _n(usage.get("cache_creation_input_tokens"))
        cc = usage.get("cache_creation") if isinstance(usage.get("cache_creation"), dict) else {}
        w1h = min(_n(cc.get("ephemeral_1h_input_tokens")), write)
        w5m = write - w1h
        out = _n(usage.get("output_tokens"))
        stu = usage.get("server_tool_use") if isinstance(usage.get("server_tool_use"), dict) else {}
        searches = _n(stu.get("web_search_requests"))
        total_in = uncached + read + write
        total = 0.0
        # a cached-token kind without its own price is priced as the kind it refines (a cache read or
        # write is input; a 1-hour write is a write), as genai-prices does; web searches without a
        # price cost nothing there either
        for count, keys, per in ((uncached, ("input_mtok",), 1e6), (out, ("output_mtok",), 1e6),
                                 (read, ("cache_read_mtok", "input_mtok"), 1e6),
                                 (w5m, ("cache_write_mtok", "input_mtok"), 1e6),
                                 (w1h, ("cache_write_1h_mtok", "cache_write_mtok", "input_mtok"), 1e6),
                                 (searches, ("web_searches_kcount",), 1e3)):
            if not count:
                continue
            r = next((x for x in (_rate(p.get(k), total_in) for k in keys) if x is not None), None)
            if r is None:
                if keys[0] == "web_searches_kcount":
                    continue
                return None
            total += count * r / per
        return total

    def summary(self) -> dict:
        return {"provider": self.provider, "id": self.id, "name": self.name, "prices": self.prices}


class PriceTable:
    def __init__(self, data: dict) -> None:
        self.source = data.get("source", "")
        self.date = data.get("date")
        self.note = data.get("note", "")
        self.providers = {p["id"]: p for p in data.get("providers", [])}

    @classmethod
    @lru_cache(maxsize=1)
    def load(cls) -> "PriceTable":
        text = (resources.files("tracer.viewer") / "assets" / "prices.json").read_text("utf-8")
        return cls(json.loads(text))

    def match(self, model: str, provider: str = "anthropic") -> ModelPrices | None:
        """The first model of ``provider`` whose match rule accepts ``model`` (as genai-prices does)."""
        ref = (model or "").lower()
        if not ref:
            return None
        order = [provider] + list(self.providers.get(provider, {}).get("fallback", []))
        for pid in order:
            p = self.providers.get(pid)
            if not p:
                continue
            for m in p["models"]:
                if _match(m["match"], ref):
                    return ModelPrices(pid, m["id"], m.get("name") or m["id"], m["prices"])
        return None


def provider_for(host: str) -> str:
    """genai-prices' provider id for an API host: Bedrock runtime hosts are "aws", the rest Anthropic."""
    h = (host or "").lower()
    return "aws" if h.startswith("bedrock-runtime.") or ".bedrock-runtime." in h or h.startswith("bedrock-runtime-") \
        else "anthropic"
