"""The real client releases whose TLS function addresses were established independently
(tests/data/locate_known.json), for the tests that locate or run them."""

from __future__ import annotations

import json
from pathlib import Path

KNOWN: list[dict] = json.loads((Path(__file__).parent / "data" / "locate_known.json").read_text())["releases"]


def versions(package: str) -> list[str]:
    """The known versions of `package` (npm name), oldest first as the file lists them."""
    return [r["version"] for r in KNOWN if r["package"] == package]
