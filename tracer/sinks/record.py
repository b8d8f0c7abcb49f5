"""Exchange -> claude-trace record (see docs/log-format.md), plus the default filter and redaction."""

from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import urlsplit

import orjson

from tracer.protocols.base import Body, Exchange, Message
from tracer.sinks.redact import (URL_HEADERS, form_has_grant_type, header_is_secret, oauth_request,
                                 redact_header_value, redact_json, redact_params, redact_url,
                                 redact_value)

__all__ = ["Clock", "Filter", "build_record", "headers_dict", "redact_value", "url_of"]

MAX_CHUNK_TIMES = 4000
INLINE_BODY_MAX = 16 << 20   # bodies above this are streamed into the log line by the writer


def headers_dict(headers: list[tuple[str, str]], redact: bool, oauth: bool = False) -> dict[str, str]:
    """Lower-cased names, repeated headers joined; credentials redacted (tracer/sinks/redact.py)."""
    out: dict[str, str] = {}
    for name, value in headers:
        k = name.lower()
        if redact:
            if header_is_secret(k):
                value = redact_header_value(k, value)
            elif k in URL_HEADERS and "?" in value:
                value = redact_url(value, oauth)
        if k in out:
            out[k] = out[k] + ("\n" if k == "set-cookie" else ", ") + value
        else:
            out[k] = value
    return out


@dataclass
class Clock:
    """Maps kernel CLOCK_MONOTONIC ns (bpf_ktime_get_ns) to epoch seconds."""

    offset_ns: int = field(default_factory=lambda: time.time_ns() - time.monotonic_ns())

    def epoch(self, mono_ns: int) -> float:
        return (mono_ns + self.offset_ns) / 1e9


BEDROCK_HOST = re.compile(r"^bedrock-runtime(?:-fips)?\.[a-z0-9-]+\.amazonaws\.com$")
BEDROCK_PATH = re.compile(r"^/model/[^/]+/(?:invoke|invoke-with-response-stream|converse|converse-stream)$")


@dataclass
class Filter:
    """claude-trace's default: only Messages API calls on the API host (or Bedrock runtime)."""

    include_all: bool = False
    api_hosts: set[str] = field(default_factory=lambda: {"api.anthropic.com"})

    def add_base_url(self, url: str) -> None:
        try:
            host = urlsplit(url).hostname
        except ValueError:
            return
        if host:
            self.api_hosts.add(host.lower())

    def wants(self, ex: Exchange) -> bool:
        if self.include_all:
            return True
        req = ex.request
        if req.unknown_headers and not (req.authority and req.target):
            # HTTP/2 attached mid-connection: the URL is in HPACK state we never saw. Unknown is not
            # "not an API call", so keep it (the record says why its URL is missing).
            return True
        return self.is_api_call(ex)

    def is_api_call(self, ex: Exchange) -> bool:
        """A model API call (Messages API on an API host, Bedrock runtime): its bodies are the
        conversation and are logged unaltered. Unknown URL (attached mid-HTTP/2): not known to be one."""
        req = ex.request
        host = _hostname(req.authority)
        path = req.target.split("?", 1)[0]
        if host in self.api_hosts and path.endswith("/v1/messages"):
            return True
        return bool(BEDROCK_HOST.match(host) and BEDROCK_PATH.match(path))


def _hostname(authority: str) -> str:
    a = authority.strip().lower()
    if a.startswith("["):
        return a[1:a.find("]")] if "]" in a else a
    return a.rsplit(":", 1)[0] if a.count(":") == 1 else a


def url_of(req: Message) -> str:
    target = req.target
    if target.startswith(("http://", "https://")):
        return target  # absolute-form (proxies)
    if not target.startswith("/"):
        target = "/" + target if target != "*" else target
    return f"{req.scheme or 'https'}://{req.authority or 'unknown-host'}{target}"


class Record(dict):
    """A log record: serialised as a plain JSON object. ``bodies`` keeps the message bodies it was
    built from (not serialised), so that the writer can fall back to their raw text when a parsed
    JSON body cannot be serialised (orjson reads nesting up to 1024 levels but writes only 254).
    Empty when redaction rewrote the bodies: their raw text is not safe to log."""

    __slots__ = ("bodies",)


def raw_body_text(raw: bytes) -> tuple[str, str]:
    """A body as text the way the log carries unparsed bodies: (UTF-8 text, "") or (base64, "base64")."""
    try:
        return raw.decode("utf-8"), ""
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


class StreamedText:
    """A body too big to hold as one str; the JSONL writer streams it into the line."""

    def __init__(self, body: Body, base64_encoded: bool = False):
        self.body = body
        self.base64 = base64_encoded


def _is_utf8(body: Body) -> bool:
    import codecs
    dec = codecs.getincrementaldecoder("utf-8")()
    try:
        for chunk in body.chunks():
            dec.decode(chunk)
        dec.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def body_fields(msg: Message, is_response: bool) -> tuple[dict, dict]:
    """(claude-trace fields, tracer extras) for a message body."""
    extras: dict = {}
    body = msg.body
    if body.size == 0:
        return ({"body": None} if not is_response else {"body_raw": ""}), extras
    ctype = msg.header("content-type").lower()
    if body.size > INLINE_BODY_MAX:
        if _is_utf8(body):
            return {"body_raw": StreamedText(body)}, extras
        extras["encoding"] = "base64"
        return {"body_raw": StreamedText(body, base64_encoded=True)}, extras
    raw = body.getvalue()
    if "event-stream" not in ctype:
        try:
            return {"body": orjson.loads(raw)}, extras
        except orjson.JSONDecodeError:
            pass
    text, encoding = raw_body_text(raw)
    if encoding:
        extras["encoding"] = encoding
    if is_response:
        return {"body_raw": text}, extras
    return {"body": text}, extras


def _thin(points: list[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
    if len(points) <= limit:
        return points
    step = len(points) / limit
    out = [points[int(i * step)] for i in range(limit - 1)]
    out.append(points[-1])
    return out


_second: tuple[int, str] = (-1, "")      # the last whole second formatted, and its text


def logged_at(now: float | None = None) -> str:
    """The current UTC time as claude-trace writes it, e.g. 2026-11-30T20:03:01.123Z (the date part
    is formatted once a second: this runs for every record)."""
    global _second
    now = time.time() if now is None else now
    sec = int(now)
    us = round((now - sec) * 1e6)         # as datetime.fromtimestamp rounds, to the microsecond
    if us >= 1_000_000:
        sec, us = sec + 1, us - 1_000_000
    cached = _second
    if cached[0] != sec:
        cached = _second = (sec, datetime.fromtimestamp(sec, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{cached[1]}.{us // 1000:03d}Z"


_DEFAULT_FILTER = Filter()


def _redact_body(fields: dict, msg: Message, oauth: bool) -> None:
    """Secret members of a JSON or form body (redact.py); other bodies are left alone."""
    body = fields.get("body")
    if isinstance(body, (dict, list)):
        redact_json(body, oauth)
        return
    key = "body" if isinstance(body, str) else "body_raw"
    text = fields.get(key)
    if isinstance(text, str) and text and "x-www-form-urlencoded" in msg.header("content-type").lower():
        fields[key] = redact_params(text, oauth)


def build_record(ex: Exchange, clock: Clock, *, redact: bool = True, api_call: bool | None = None) -> Record:
    """``api_call``: whether this is a model API call (Filter.is_api_call; default: by the default
    filter's hosts) - its bodies are never altered by redaction."""
    req, resp = ex.request, ex.response
    t0 = req.ts_ns
    rq_fields, rq_extra = body_fields(req, False)
    url = url_of(req)
    oauth = False
    if redact:
        if api_call is None:
            api_call = _DEFAULT_FILTER.is_api_call(ex)
        if not api_call:      # a model API call is not an OAuth exchange, and its bodies are kept
            body = rq_fields.get("body")
            oauth = oauth_request(req.target.split("?", 1)[0], body) or (
                isinstance(body, str) and form_has_grant_type(body))
            _redact_body(rq_fields, req, oauth)
        if "?" in url or "@" in url:
            url = redact_url(url, oauth)
    record = Record({
        "request": {
            "timestamp": clock.epoch(t0),
            "method": req.method,
            "url": url,
            "headers": headers_dict(req.headers, redact, oauth),
            **rq_fields,
        },
        "response": None,
        "logged_at": logged_at(),
    })
    # the writer's raw-text fallback re-reads these bytes: only where redaction left the bodies alone
    # (a redacted body's raw text would put its secrets back; such a record falls back to a stub)
    bodies_redacted = redact and not api_call
    record.bodies = {} if bodies_redacted else {
        "request": req.body, "response": resp.body if resp is not None else None}
    extras: dict = {
        "pid": ex.conn.pid, "tid": ex.conn.tid, "comm": ex.conn.comm, "conn_id": ex.conn.conn_id,
        "protocol": ex.protocol, "stream_id": ex.stream_id,
        "complete": not ex.incomplete,
        "notes": list(ex.notes),
        "gaps": [{"direction": d, "bytes": n} for d, n in ex.gaps],
        "request_bytes": req.wire_bytes,
        "request_body_bytes": req.body.size,
    }
    if req.holes:
        extras["request_holes"] = [list(h) for h in req.holes]
    if rq_extra.get("encoding"):
        extras["request_body_encoding"] = rq_extra["encoding"]
    if req.content_encoding:
        extras["request_content_encoding"] = req.content_encoding
    if req.decode_error:
        extras["request_decode_error"] = req.decode_error
    if req.unknown_headers:
        extras["request_unknown_headers"] = req.unknown_headers
        extras["notes"].append(f"{req.unknown_headers} request header field(s) undecodable: HPACK state "
                               "from before the attach")
    if resp is not None:
        rs_fields, rs_extra = body_fields(resp, True)
        if bodies_redacted:
            _redact_body(rs_fields, resp, oauth)
        end = resp.end_ts_ns or resp.ts_ns
        record["response"] = {
            "timestamp": clock.epoch(end),
            "status_code": resp.status,
            "headers": headers_dict(resp.headers, redact, oauth),
            **rs_fields,
        }
        extras.update({
            "response_bytes": resp.wire_bytes,
            "response_body_bytes": resp.body.size,
            "content_encoding": resp.content_encoding,
            "decode_error": resp.decode_error,
            "ttfb_ms": round((resp.ts_ns - (req.end_ts_ns or t0)) / 1e6, 3) if resp.ts_ns else None,
            "duration_ms": round((end - t0) / 1e6, 3),
            "response_chunks": [[off, round((ts - t0) / 1e6, 3)]
                                for off, ts in _thin(ex.body_times, MAX_CHUNK_TIMES)],
        })
        if resp.decoded_truncated_at:
            extras["decoded_truncated_at"] = resp.decoded_truncated_at
            extras["notes"].append(f"decoded body cut at {resp.decoded_truncated_at} bytes (cap)")
        if rs_extra.get("encoding"):
            extras["response_body_encoding"] = rs_extra["encoding"]
        if resp.unknown_headers:
            extras["response_unknown_headers"] = resp.unknown_headers
        if resp.trailers:
            extras["trailers"] = headers_dict(resp.trailers, redact, oauth)
        if resp.holes:
            extras["response_holes"] = [list(h) for h in resp.holes]
        if not resp.complete:
            extras["notes"].append("response incomplete")
    if extras["notes"] or resp is None or not resp.complete:
        record["note"] = "; ".join(extras["notes"]) or "response incomplete"
    record["tracer"] = extras
    return record
