"""Reading JSONL logs: ours and claude-trace's (the same schema, without the "tracer" key)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import orjson


def loads(line: bytes | str) -> Any:
    """orjson, falling back to the stdlib for what orjson refuses (lone surrogates, huge integers)."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        if isinstance(line, bytes):
            line = line.decode("utf-8", "surrogateescape")
        return json.loads(line)


def dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError:  # e.g. strings with lone surrogates, ints past 64 bits
        return json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode()


def iter_records(path: str | Path, warnings: list[str] | None = None) -> Iterator[dict]:
    """Yield each pair record of a JSONL log. Bad lines are skipped (and described in ``warnings``).

    A file holding one JSON array of records (some tools export that) is accepted too.
    """
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(1)
        while head in (b" ", b"\n", b"\r", b"\t"):
            head = f.read(1)
        f.seek(0)
        if head == b"[":
            try:
                data = loads(f.read())
            except ValueError as e:
                if warnings is not None:
                    warnings.append(f"not a JSON array: {e}")
                return
            for i, rec in enumerate(data if isinstance(data, list) else []):
                if isinstance(rec, dict):
                    yield rec
            return
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = loads(line)
            except ValueError as e:
                if warnings is not None:
                    warnings.append(f"line {lineno}: not JSON ({str(e)[:80]})")
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("request"), dict):
                if warnings is not None:
                    warnings.append(f"line {lineno}: not a request/response record")
                continue
            yield rec


def read_records(path: str | Path) -> tuple[list[dict], list[str]]:
    warnings: list[str] = []
    recs = list(iter_records(path, warnings))
    return recs, warnings
