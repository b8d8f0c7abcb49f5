"""Builds the single-file HTML viewer: the committed front-end bundle plus the log's data, embedded.

Layout of the page (all inline; nothing is fetched, a CSP forbids it):
- ``<script type="application/json" id="tracer-summary">``: calls' figures, threads, sessions.
- One ``<script type="application/json" id="cN">`` per call (request/response as logged, with the
  request's ``messages`` replaced by ids) and one ``id="mN"`` per distinct message: a Claude Code log
  repeats the whole history in every request, so each message is stored once. The front end parses
  these blobs only when it shows them.
- The blobs the first session needs come before the app script, the rest after it, so the first
  conversation paints while the browser is still reading the remainder of a large file.

Built in two passes over the log (``build_page_from_log``): the first analyses it record by record and
keeps only small facts per call; the second reads each record again and writes its blob at once. Memory
stays bounded whatever the log's size. A string the log reader left in the file (a body of a line
longer than ``logs.INLINE_LINE``) is embedded as its first ``HEAD_CHARS`` characters followed by a marker
saying how much more there is and on which log line; a rebuilt answer is cut the same way
(``REBUILT_CHARS``). Every cut is listed in the call's blob (``truncated``) and counted in the summary.

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
from typing import Any, BinaryIO, Callable

from tracer.viewer.analyze import Analysis, Analyzer, analyze, analyze_call
from tracer.viewer import logs as _logs
from tracer.viewer.logs import BigString, LogLine, dumps, iter_lines, read_line

FORMAT_VERSION = 1


def embed_json(obj: Any) -> bytes:
    """JSON safe to place inside a <script> element (no '<', '>', '&', U+2028, U+2029 bytes)."""
    return _escape(dumps(obj))


def _escape(b: bytes) -> bytes:
    return (b.replace(b"&", b"\\u0026").replace(b"<", b"\\u003c").replace(b">", b"\\u003e")
            .replace("\u2028".encode(), b"\\u2028").replace("\u2029".encode(), b"\\u2029"))


def asset(name: str) -> str:
    return (resources.files("tracer.viewer") / "assets" / name).read_text("utf-8")


HEAD_CHARS = 64 << 10          # characters of a big logged string embedded in the page
REBUILT_CHARS = 256 << 10      # characters of each rebuilt answer field embedded in the page
KEEP_REBUILT = 1 << 20         # a rebuilt response up to this size is kept from pass 1 for pass 2,
CACHE_BUDGET = 8 << 20         # with long lines' reduced records, while this budget lasts


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def cut_marker(more: str, line: int | None) -> str:
    where = f"see the log, line {line}" if line else "see the log"
    return f"\n\n[… {more} more, not in this page — {where}]"


def _inline_bigs(rec: Any, cuts: list[dict]) -> Any:
    """A copy of ``rec`` with every BigString replaced by its head and a marker (iterative walk)."""
    def conv(v: BigString, path: str) -> str:
        head, whole = v.head(HEAD_CHARS)
        if whole:
            return head
        more = max(0, v.raw_bytes - len(head.encode("utf-8", "surrogatepass")))
        cuts.append({"path": path, "line": v.lineno, "bytes": v.raw_bytes, "kept_chars": len(head)})
        return head + cut_marker("~" + _mb(more), v.lineno)

    if isinstance(rec, BigString):
        return conv(rec, "")
    if not isinstance(rec, (dict, list)):
        return rec
    root: list = [None]
    stack = [(rec, root, 0, "")]
    while stack:
        src, dst, key, path = stack.pop()
        if isinstance(src, dict):
            out: Any = {}
            dst[key] = out
            items = src.items()
        else:
            out = [None] * len(src)
            dst[key] = out
            items = enumerate(src)
        for k, x in items:
            p = f"{path}.{k}" if path else str(k)
            if isinstance(x, BigString):
                out[k] = conv(x, p)
            elif isinstance(x, (dict, list)):
                out[k] = None
                stack.append((x, out, k, p))
            else:
                out[k] = x
    return root[0]


def _has_big(v: Any) -> bool:
    stack = [v]
    while stack:
        c = stack.pop()
        if isinstance(c, BigString):
            return True
        if isinstance(c, dict):
            stack.extend(c.values())
        elif isinstance(c, list):
            stack.extend(c)
    return False


def _mark_rebuilt(msg: dict, truncated: list[dict], line: int | None, cuts: list[dict]) -> dict:
    """Append a visible marker to each answer field that the rebuild cut."""
    if not truncated:
        return msg
    msg = dict(msg)
    content = [dict(b) if isinstance(b, dict) else b for b in msg.get("content") or []]
    for t in truncated:
        i, fld = t["index"], t["field"]
        if isinstance(i, int) and i < len(content) and isinstance(content[i], dict) \
                and isinstance(content[i].get(fld), str):
            more = t["chars"] - t["kept"]
            content[i][fld] += cut_marker(f"{more:,} characters", line)
            cuts.append({"path": f"rebuilt.content.{i}.{fld}", "line": line, "chars": t["chars"],
                         "kept_chars": t["kept"]})
    msg["content"] = content
    return msg


class _PageWriter:
    """Writes the page: summary, then call blobs (each distinct message once, before its first call)."""

    def __init__(self, out: BinaryIO, an: Analysis, record: Callable[[int], dict],
                 lines: list[LogLine] | None, rebuilt: dict[int, dict]) -> None:
        self.w = out.write
        self.an = an
        self.record = record
        self.lines = lines
        self.rebuilt = rebuilt
        self.msg_ids: dict[bytes, int] = {}
        self.written_calls: set[int] = set()
        self.cuts = 0
        self.failed: list[str] = []

    def _message(self, msg: Any) -> int:
        raw = dumps(msg)
        key = hashlib.blake2b(raw, digest_size=16).digest()
        i = self.msg_ids.get(key)
        if i is None:
            i = self.msg_ids[key] = len(self.msg_ids)
            self.w(b'<script type="application/json" id="m%d">' % i)
            self.w(_escape(raw))
            self.w(b"</script>\n")
        return i

    def put_call(self, i: int) -> None:
        if i in self.written_calls:
            return
        self.written_calls.add(i)
        call = self.an.calls[i]
        line = self.lines[i].lineno if self.lines else None
        try:
            orig = rec = self.record(i)
            cuts: list[dict] = []
            if (self.lines is None or self.lines[i].length > _logs.INLINE_LINE) and _has_big(rec):
                rec = _inline_bigs(rec, cuts)
            req = dict(rec.get("request") or {})
            body = req.get("body")
            ids: list[int] = []
            if isinstance(body, dict) and isinstance(body.get("messages"), list):
                body = dict(body)
                ids = [self._message(m) for m in body["messages"]]
                body["messages"] = ids
                req["body"] = body
            blob = {"request": req, "response": rec.get("response"), "logged_at": rec.get("logged_at"),
                    "note": rec.get("note"), "tracer": rec.get("tracer"), "msgref": bool(ids), "line": line}
            extra = {k: v for k, v in rec.items()
                     if k not in ("request", "response", "logged_at", "note", "tracer")}
            if extra:
                blob["extra"] = extra
            if call.kind == "messages" or call.response is not None or i in self.rebuilt:
                r = self.rebuilt.get(i)
                if r is None:
                    r = self._rebuild(i, orig)
                if r is not None:
                    blob["rebuilt"] = _mark_rebuilt(r[0], r[1], line, cuts)
                    blob["rebuild_errors"] = call.rebuild_errors
            if cuts:
                blob["truncated"] = cuts
                self.cuts += len(cuts)
            data = embed_json(blob)
        except (RecursionError, ValueError, TypeError, OSError) as e:
            self.failed.append(f"line {line}: not shown ({type(e).__name__}: {str(e)[:80]})")
            data = embed_json({"request": {}, "response": None, "missing": str(e)[:200], "line": line})
        self.w(b'<script type="application/json" id="c%d">' % i)
        self.w(data)
        self.w(b"</script>\n")

    def _rebuild(self, i: int, rec: dict) -> tuple[dict, list[dict]] | None:
        """The rebuilt SSE answer of a call whose rebuild was not kept from the first pass."""
        res = rec.get("response")
        if not isinstance(res, dict) or not isinstance(res.get("body_raw"), (str, BigString)):
            return None
        c = analyze_call(i, rec, REBUILT_CHARS)
        if c.response is None:
            return None
        return c.response, c.truncated


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


def _summary(an: Analysis, source: str, warnings: list[str]) -> dict:
    models = sorted({c.model for c in an.calls if c.model})
    return {
        "version": FORMAT_VERSION,
        "source": source,
        "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "calls": [c.summary() for c in an.calls],
        "threads": [t.summary(an.calls) for t in an.threads],
        "sessions": [{"id": s.id, "root": s.root, "threads": s.threads, "calls": s.calls,
                      "title": an.threads[s.root].title, "totals": s.totals(an.calls)}
                     for s in an.sessions],
        "models": models,
        "processes": an.processes,
        "skipped": len(warnings),
        "warnings": list(warnings[:50]),
        "limits": {"head_chars": HEAD_CHARS, "rebuilt_chars": REBUILT_CHARS},
        "prices": _price_summary(an),
    }


def _price_summary(an: Analysis) -> dict:
    """The price table's date and source, and the prices of the models this log's calls used."""
    from tracer.viewer.cost import PriceTable

    t = PriceTable.load()
    used: dict[str, dict] = {}
    unknown: set[str] = set()
    for c in an.calls:
        if c.kind != "messages":
            continue
        if c.price_model:
            if c.price_model not in used:
                m = t.match(c.model, c.provider)
                if m is not None:
                    used[c.price_model] = m.summary()
        elif c.model:
            unknown.add(c.model)
    return {"source": t.source, "date": t.date, "note": t.note, "models": used, "unknown": sorted(unknown)}


def _write(out: BinaryIO, an: Analysis, record: Callable[[int], dict], *, source: str, warnings: list[str],
           lines: list[LogLine] | None = None, rebuilt: dict[int, tuple] | None = None) -> dict:
    summary = _summary(an, source, warnings)
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
    pw = _PageWriter(out, an, record, lines, rebuilt or {})
    for i in _initial_calls(an):
        pw.put_call(i)
    w(b"<script>")
    w(js.encode("utf-8"))
    w(b"</script>\n")
    for i in range(len(an.calls)):
        pw.put_call(i)
    end = {"messages": len(pw.msg_ids), "truncated": pw.cuts, "failed": pw.failed}
    w(b'<script type="application/json" id="tracer-end">' + embed_json(end) + b"</script>\n</body></html>\n")
    warnings.extend(pw.failed)
    return end


def build_page(records: list[dict], out: BinaryIO, *, source: str = "", warnings: list[str] | None = None,
               analysis: Analysis | None = None) -> Analysis:
    """The page for records held in memory (tests, small logs)."""
    an = analysis or analyze(records)
    rebuilt = {c.index: (c.response, c.truncated) for c in an.calls
               if c.response is not None and isinstance((records[c.index].get("response") or {}).get("body_raw"),
                                                         (str, BigString))}
    _write(out, an, lambda i: records[i], source=source, warnings=list(warnings or []), rebuilt=rebuilt)
    return an


def build_page_from_log(path: str | Path, out: BinaryIO, *, source: str = "",
                        warnings: list[str] | None = None) -> tuple[Analysis, dict]:
    """The page for a log file in two streaming passes (bounded memory, linear time).

    Lines that cannot be read or analysed are skipped and described in ``warnings`` (which the page
    shows); returns the analysis and what the second pass counted (messages, truncated fields, failed).
    """
    warnings = warnings if warnings is not None else []
    path = Path(path)
    a = Analyzer(keep_responses=True, max_field_chars=REBUILT_CHARS)
    lines: list[LogLine] = []
    rebuilt: dict[int, tuple] = {}
    budget = CACHE_BUDGET
    for ln in iter_lines(path, warnings):
        n = len(a.calls)
        try:
            c = a.add(ln.record)
        except (RecursionError, ValueError, TypeError, KeyError, AttributeError, OSError) as e:
            del a.calls[n:]
            a._facts.pop(n, None)
            warnings.append(f"line {ln.lineno}: cannot be analysed ({type(e).__name__}: {str(e)[:80]})")
            continue
        raw = (ln.record.get("response") or {}).get("body_raw") if isinstance(ln.record.get("response"), dict) else None
        if c.response is not None and isinstance(raw, (str, BigString)):
            try:
                size = len(dumps(c.response))
            except (TypeError, RecursionError):
                size = -1
            if 0 <= size <= KEEP_REBUILT and size <= budget:
                rebuilt[n] = (c.response, c.truncated)
                budget -= size
        c.response = None
        keep: dict = {}
        if ln.length > _logs.INLINE_LINE and _logs.last_reduced_bytes <= budget:
            keep = ln.record       # a long line, small once its big strings stay in the file: no rescan
            budget -= _logs.last_reduced_bytes
        lines.append(LogLine(ln.lineno, ln.offset, ln.length, keep))
    an = a.finish()
    f = open(path, "rb")
    try:
        def record(i: int) -> dict:
            ln = lines[i]
            if ln.record:
                return ln.record
            return read_line(f, str(path), ln.lineno, ln.offset, ln.length)
        end = _write(out, an, record, source=source or str(path), warnings=warnings, lines=lines, rebuilt=rebuilt)
    finally:
        f.close()
    return an, end
