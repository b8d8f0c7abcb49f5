"""Builds the single-file HTML viewer: the committed front-end bundle plus the log's data, embedded.

Layout of the page (all inline; nothing is fetched, a CSP forbids it):
- ``<script type="application/json" id="tracer-summary">``: calls' figures, threads, sessions.
- One ``<script type="application/json" id="cN">`` per call (request/response as logged, with the
  request's ``messages`` replaced by ids) and one ``id="mN"`` per distinct message: a Claude Code log
  repeats the whole history in every request, so each message is stored once. The front end parses
  these blobs only when it shows them.
- The blobs the first session needs come before the app script, the rest after it, so the first
  conversation paints while the browser is still reading the remainder of a large file.

All JSON is embedded with ``<``, ``>``, ``&``, U+2028 and U+2029 escaped, so no log content can close
the script element or be read as markup. The app script runs under a Content-Security-Policy that allows
only itself (by hash), inline styles and data: images.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import html
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO

from tracer.viewer.analyze import Analysis, analyze
from tracer.viewer.logs import dumps

FORMAT_VERSION = 1


def embed_json(obj: Any) -> bytes:
    """JSON safe to place inside a <script> element (no '<', '>', '&', U+2028, U+2029 bytes)."""
    return _escape(dumps(obj))


def _escape(b: bytes) -> bytes:
    return (b.replace(b"&", b"\\u0026").replace(b"<", b"\\u003c").replace(b">", b"\\u003e")
            .replace("\u2028".encode(), b"\\u2028").replace("\u2029".encode(), b"\\u2029"))


def asset(name: str) -> str:
    return (resources.files("tracer.viewer") / "assets" / name).read_text("utf-8")


class _MessageTable:
    def __init__(self) -> None:
        self.ids: dict[bytes, int] = {}
        self.blobs: list[bytes] = []

    def add(self, msg: Any) -> int:
        raw = dumps(msg)
        key = hashlib.blake2b(raw, digest_size=16).digest()
        i = self.ids.get(key)
        if i is None:
            i = self.ids[key] = len(self.blobs)
            self.blobs.append(_escape(raw))
        return i


def _call_blob(rec: dict, call, table: _MessageTable) -> tuple[bytes, list[int]]:
    req = dict(rec.get("request") or {})
    body = req.get("body")
    ids: list[int] = []
    if isinstance(body, dict) and isinstance(body.get("messages"), list):
        body = dict(body)
        ids = [table.add(m) for m in body["messages"]]
        body["messages"] = ids
        req["body"] = body
    blob = {"request": req, "response": rec.get("response"), "logged_at": rec.get("logged_at"),
            "note": rec.get("note"), "tracer": rec.get("tracer"), "msgref": bool(ids)}
    extra = {k: v for k, v in rec.items() if k not in ("request", "response", "logged_at", "note", "tracer")}
    if extra:
        blob["extra"] = extra
    if call.response is not None and isinstance((rec.get("response") or {}).get("body_raw"), str):
        blob["rebuilt"] = call.response
        blob["rebuild_errors"] = call.rebuild_errors
    return embed_json(blob), ids


def _initial_calls(an: Analysis) -> list[int]:
    """Calls whose blobs the first session's first paint needs (root chain's final calls)."""
    if not an.sessions:
        return []
    out = []
    tid: int | None = an.sessions[0].root
    seen = set()
    while tid is not None and tid not in seen:
        seen.add(tid)
        th = an.threads[tid]
        out.append(th.final)
        tid = th.continued_by
    return out


def build_page(records: list[dict], out: BinaryIO, *, source: str = "", warnings: list[str] | None = None,
               analysis: Analysis | None = None) -> Analysis:
    an = analysis or analyze(records)
    table = _MessageTable()
    blobs: list[bytes] = []
    msg_ids: list[list[int]] = []
    for rec, call in zip(records, an.calls):
        b, ids = _call_blob(rec, call, table)
        blobs.append(b)
        msg_ids.append(ids)

    models = sorted({c.model for c in an.calls if c.model})
    summary = {
        "version": FORMAT_VERSION,
        "source": source,
        "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "calls": [c.summary() for c in an.calls],
        "threads": [t.summary(an.calls) for t in an.threads],
        "sessions": [{"id": s.id, "root": s.root, "threads": s.threads, "calls": s.calls,
                      "title": an.threads[s.root].title, "totals": s.totals(an.calls)}
                     for s in an.sessions],
        "models": models,
        "messages": len(table.blobs),
        "warnings": list(warnings or []),
    }

    js = asset("viewer.js")
    css = asset("viewer.css")
    if "</script" in js.lower():
        raise RuntimeError("viewer.js contains '</script' and cannot be inlined")
    digest = base64.b64encode(hashlib.sha256(js.encode("utf-8")).digest()).decode()
    csp = (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; "
           "img-src data:; font-src data:; connect-src 'none'; form-action 'none'; base-uri 'none'")
    title = "tracer — " + (Path(source).name if source else "log")

    w = out.write
    w(b"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n")
    w(f'<meta http-equiv="Content-Security-Policy" content="{html.escape(csp)}">\n'.encode())
    w(b'<meta name="viewport" content="width=device-width, initial-scale=1">\n')
    w(b'<meta name="referrer" content="no-referrer">\n')
    w(f"<title>{html.escape(title)}</title>\n<style>{css}</style>\n</head>\n<body>\n".encode())
    w(b'<div id="app"><div class="loading">Loading\xe2\x80\xa6</div></div>\n')
    w(b'<script type="application/json" id="tracer-summary">')
    w(embed_json(summary))
    w(b"</script>\n")

    written_msgs: set[int] = set()
    written_calls: set[int] = set()

    def put_call(i: int) -> None:
        if i in written_calls:
            return
        written_calls.add(i)
        for m in msg_ids[i]:
            if m not in written_msgs:
                written_msgs.add(m)
                w(b'<script type="application/json" id="m%d">' % m)
                w(table.blobs[m])
                w(b"</script>\n")
        w(b'<script type="application/json" id="c%d">' % i)
        w(blobs[i])
        w(b"</script>\n")

    for i in _initial_calls(an):
        put_call(i)
    w(b"<script>")
    w(js.encode("utf-8"))
    w(b"</script>\n")
    for i in range(len(blobs)):
        put_call(i)
    for m in range(len(table.blobs)):  # (all are referenced by some call; kept for safety)
        if m not in written_msgs:
            written_msgs.add(m)
            w(b'<script type="application/json" id="m%d">' % m + table.blobs[m] + b"</script>\n")
    w(b'<script type="application/json" id="tracer-end">{}</script>\n</body></html>\n')
    return an
