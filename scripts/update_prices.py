"""Extract the Anthropic (and Bedrock-Anthropic) model prices from the pinned genai-prices package into
tracer/viewer/assets/prices.json, which the viewer build reads (the package itself is not imported at
run time: with pydantic it would add ~27 MB to the end-of-run build).

    .venv/bin/python scripts/update_prices.py          # after changing the genai-prices pin
tests/unit/test_cost.py checks that the committed file is what the pinned package gives, and that
tracer.viewer.cost computes the same prices as genai_prices.calc_price.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tracer" / "viewer" / "assets" / "prices.json"
PROVIDERS = ("anthropic", "aws")


def _clause(c) -> dict:
    name = type(c).__name__
    if name == "ClauseOr":
        return {"or": [_clause(x) for x in c.or_]}
    if name == "ClauseAnd":
        return {"and": [_clause(x) for x in c.and_]}
    for key in ("starts_with", "ends_with", "contains", "regex", "equals"):
        if hasattr(c, key):
            return {key: getattr(c, key)}
    raise ValueError(f"unknown clause {name}")


def _price(v):
    if v is None:
        return None
    if isinstance(v, Decimal):
        return str(v)
    return {"base": str(v.base), "tiers": [[t.start, str(t.price)] for t in v.tiers]}


def _prices(mp) -> dict:
    return {k: _price(v) for k, v in vars(mp).items() if not k.startswith("_") and v is not None}


def is_anthropic(provider_id: str, model) -> bool:
    return provider_id == "anthropic" or "claude" in model.id or "anthropic" in model.id


def table() -> dict:
    from genai_prices.data import providers

    dates: list[str] = []
    out = []
    for p in providers:
        if p.id not in PROVIDERS:
            continue
        models = []
        for m in p.models:
            if not is_anthropic(p.id, m):
                continue
            if isinstance(m.prices, list):
                prices = []
                for cp in m.prices:
                    start = cp.constraint.start_date.isoformat() if cp.constraint is not None else None
                    if start:
                        dates.append(start)
                    prices.append({"start": start, "prices": _prices(cp.prices)})
            else:
                prices = [{"start": None, "prices": _prices(m.prices)}]
            models.append({"id": m.id, "name": m.name, "match": _clause(m.match), "prices": prices})
        for text in [p.price_comments or ""] + [m.price_comments or "" for m in p.models if is_anthropic(p.id, m)]:
            dates += re.findall(r"\b(20\d\d-\d\d-\d\d)\b", text)
        out.append({"id": p.id, "name": p.name, "fallback": list(getattr(p, "fallback_model_providers", None) or []),
                    "models": models})
    return {"source": f"genai-prices {version('genai-prices')}",
            "date": max(dates) if dates else None,
            "note": "USD per million tokens (web searches per thousand); tiers apply to all tokens once the "
                    "request's total input tokens pass their start",
            "providers": out}


def main() -> None:
    data = json.dumps(table(), indent=1, sort_keys=True) + "\n"
    if "--check" in sys.argv:
        sys.exit(0 if OUT.read_text() == data else 1)
    OUT.write_text(data)
    print(f"{OUT}: {sum(len(p['models']) for p in json.loads(data)['providers'])} models, date "
          f"{json.loads(data)['date']}")


if __name__ == "__main__":
    main()
