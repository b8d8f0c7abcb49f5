"""Behaviour knobs: server-wide defaults (CLI options) with per-request overrides.

A knob ``NAME`` can be set
- server-wide: ``tracer mock-server --NAME VALUE`` or ``MockServer(knobs={"NAME": VALUE})``,
- per request: header ``x-mock-NAME: VALUE`` or query parameter ``mock-NAME=VALUE`` / ``mock_NAME=VALUE``
  (query wins over header, both win over the server default).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import unquote_plus

_BOOL_TRUE = {"1", "true", "yes", "on", "y"}
_BOOL_FALSE = {"0", "false", "no", "off", "n", ""}


@dataclass(frozen=True)
class Knobs:
    scenario: str = "auto"       # auto | text | tool | subagent
    text: str = ""               # reply text (default: a short greeting / the tool output)
    text_bytes: int = -1         # total text length; -1 = the reply text as is
    deltas: int = 0              # number of text_delta events (0 = natural split)
    delta_size: int = 0          # bytes per text_delta (0 = natural split, 1024 for filler)
    thinking: str = "auto"       # auto (when the request enables it) | on | off
    tool_command: str = "echo hi"  # the Bash command the tool scenario asks for
    delay_ms: float = 0.0        # pause between SSE events / body chunks
    ttfb_ms: float = 0.0         # pause before the response head
    encoding: str = "identity"   # identity | auto | gzip | br | zstd | deflate (suffix ! forces)
    status: int = 200            # answer /v1/messages with this status and an error JSON
    close: bool = False          # send Connection: close and close after the response
    transfer: str = "auto"       # auto | chunked | length | close (HTTP/1.1 body framing)
    error_after: int = -1        # SSE: after N content deltas send an `error` event and stop
    abort_after: int = -1        # drop the connection (no close_notify) after N body chunks
    write_size: int = 0          # split every body chunk into writes of at most N bytes (0 = off)


KNOB_HELP: dict[str, str] = {
    "scenario": "auto: Claude Code flow (Bash tool_use when tools offer Bash and the last user "
                "message has no tool_result, else text); text: always text; tool: always tool_use; "
                "subagent: the main conversation starts a subagent (Task/Agent tool_use) that runs the "
                "Bash round trip, then answers with what the subagent reported",
    "text": "reply text (default: a short greeting, or 'The command printed: ...' after a tool_result)",
    "text_bytes": "total reply text size in bytes, filled with generated prose, streamed without "
                  "holding it in memory (e.g. 100000000 for 100 MB)",
    "deltas": "number of text_delta events the text is split into",
    "delta_size": "bytes of text per text_delta (default: natural word split; 1024 with --text-bytes)",
    "thinking": "auto (a thinking block when the request enables thinking) | on | off",
    "tool_command": "the command of the Bash tool_use",
    "delay_ms": "milliseconds between SSE events / body chunks",
    "ttfb_ms": "milliseconds before the response head is sent",
    "encoding": "content-coding: identity | auto | gzip | br | zstd | deflate; applied only when the "
                "client's Accept-Encoding allows it, unless suffixed with '!' (e.g. gzip!)",
    "status": "answer /v1/messages with this HTTP status and an Anthropic error JSON (e.g. 429, 500, 529)",
    "close": "send 'Connection: close' and close the connection after the response",
    "transfer": "HTTP/1.1 body framing: auto (JSON: content-length, SSE: chunked) | chunked | length "
                "| close (no length, end by closing)",
    "error_after": "SSE: after N text deltas send an 'error' event (overloaded_error) and end the stream",
    "abort_after": "drop the TCP connection abruptly after N body chunks (truncated response)",
    "write_size": "split each body chunk into writes of at most N bytes",
}

KNOB_FIELDS = {f.name: f for f in fields(Knobs)}
_CHOICES = {
    "scenario": ("auto", "text", "tool", "subagent"),
    "thinking": ("auto", "on", "off"),
    "transfer": ("auto", "chunked", "length", "close"),
}


def knob_type(name: str) -> type:
    return type(getattr(Knobs(), name))


def choices(name: str) -> tuple[str, ...] | None:
    return _CHOICES.get(name)


def convert(name: str, value: Any) -> Any:
    """Convert a raw (string) value for knob ``name``; raises ValueError with a readable message."""
    if name not in KNOB_FIELDS:
        raise ValueError(f"unknown knob {name!r}")
    t = knob_type(name)
    if isinstance(value, t) and not (t is int and isinstance(value, bool)):
        v = value
    elif t is bool:
        s = str(value).strip().lower()
        if s in _BOOL_TRUE:
            v = True
        elif s in _BOOL_FALSE:
            v = False
        else:
            raise ValueError(f"knob {name}: expected a boolean, got {value!r}")
    elif t is int:
        try:
            v = int(str(value).strip())
        except ValueError:
            raise ValueError(f"knob {name}: expected an integer, got {value!r}") from None
    elif t is float:
        try:
            v = float(str(value).strip())
        except ValueError:
            raise ValueError(f"knob {name}: expected a number, got {value!r}") from None
        if v != v or v < 0:
            raise ValueError(f"knob {name}: expected a non-negative number, got {value!r}")
    else:
        v = str(value)
    ch = _CHOICES.get(name)
    if ch is not None and v not in ch:
        raise ValueError(f"knob {name}: expected one of {', '.join(ch)}, got {value!r}")
    if name == "status" and not 100 <= v <= 599:
        raise ValueError(f"knob status: expected 100..599, got {value!r}")
    if name in ("deltas", "delta_size", "write_size") and v < 0:
        raise ValueError(f"knob {name}: must be >= 0")
    if name == "delta_size" and v > (16 << 20):
        raise ValueError("knob delta_size: at most 16 MiB")
    return v


def with_overrides(base: Knobs, overrides: dict[str, Any]) -> Knobs:
    """``base`` with ``overrides`` (names with - or _) converted and applied."""
    if not overrides:
        return base
    changes = {}
    for k, v in overrides.items():
        name = k.replace("-", "_")
        changes[name] = convert(name, v)
    return replace(base, **changes)


def from_request(headers: list[tuple[str, str]], query: list[tuple[str, str]]) -> dict[str, str]:
    """Collect per-request knob overrides from ``x-mock-*`` headers and ``mock-*`` query params."""
    out: dict[str, str] = {}
    for name, value in headers:
        n = name.lower()
        if n.startswith("x-mock-"):
            try:  # HTTP/1.1 header values arrive as latin-1 text; most clients send UTF-8
                value = value.encode("latin-1").decode("utf-8")
            except (UnicodeEncodeError, UnicodeDecodeError):
                pass
            out[n[7:].replace("-", "_")] = value
    for name, value in query:
        n = name.lower().replace("_", "-")
        if n.startswith("mock-"):
            out[n[5:].replace("-", "_")] = value
    return out


def parse_query(query: str) -> list[tuple[str, str]]:
    out = []
    for part in query.split("&"):
        if not part:
            continue
        k, _, v = part.partition("=")
        out.append((unquote_plus(k), unquote_plus(v)))
    return out
