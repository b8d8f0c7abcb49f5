"""Where spans go: the OTLP/HTTP endpoint from ``--otlp-endpoint`` or the standard OpenTelemetry
environment, and the export options. Pure functions, no I/O.

Endpoint rules (OpenTelemetry "OTLP Exporter" specification, OTLP/HTTP):

- ``--otlp-endpoint URL`` and ``OTEL_EXPORTER_OTLP_ENDPOINT`` are *base* URLs: the signal path
  ``v1/traces`` is appended to their path (``http://collector:4318`` -> ``http://collector:4318/v1/traces``,
  ``http://gw/otlp/`` -> ``http://gw/otlp/v1/traces``).
- ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is used exactly as given (no path appended; no path means ``/``).
- The signal-specific variable wins over the base one; the command-line option wins over both.
- Only ``http`` and ``https`` URLs; tracer speaks OTLP/HTTP with protobuf bodies. An
  ``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL`` of ``grpc`` is refused with an explanation (gRPC receivers
  listen on another port, usually 4317); ``http/json`` is accepted and sent as protobuf, which every
  OTLP/HTTP receiver must accept.
- With no option, ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn the environment's
  endpoint off.

Headers (``OTEL_EXPORTER_OTLP_TRACES_HEADERS`` / ``OTEL_EXPORTER_OTLP_HEADERS``, W3C baggage format),
timeout, compression, certificates and batch sizes (``OTEL_BSP_*``) are read by the OpenTelemetry SDK
itself in the exporter process. Header values carry API keys: nothing here prints them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from tracer.invoker import InvokingUser

TRACES_PATH = "v1/traces"
DEFAULT_SESSION_IDLE_S = 300.0
DEFAULT_SHUTDOWN_TIMEOUT_S = 5.0
DEFAULT_EXIT_GRACE_S = 3.0       # a process' last records reach the log after its exit is known


class OtlpConfigError(ValueError):
    """The endpoint or an OTEL_* setting cannot be used (the message says why and what to do)."""


def _check_url(url: str, what: str) -> str:
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a bad port
    except ValueError as e:
        raise OtlpConfigError(f"{what} {display_url(url)!r} is not a URL: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OtlpConfigError(f"{what} {display_url(url)!r} must be an http:// or https:// URL with a host "
                              "(OTLP/HTTP, e.g. http://collector:4318)")
    del port
    return url


def signal_url(base: str) -> str:
    """A base endpoint URL with the traces signal path appended to its path (query kept)."""
    p = urlsplit(base)
    path = p.path if p.path.endswith("/") else p.path + "/"
    return urlunsplit((p.scheme, p.netloc, path + TRACES_PATH, p.query, p.fragment))


def display_url(url: str) -> str:
    """The URL without user:password@ and without a query (either may carry a key): safe to print."""
    try:
        p = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    host = p.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = p.port
    except ValueError:
        port = None
    netloc = host + (f":{port}" if port else "")
    return urlunsplit((p.scheme, netloc, p.path, "", ""))


def _true(v: str | None) -> bool:
    return (v or "").strip().lower() == "true"


def resolve_endpoint(cli_endpoint: str | None, env: Mapping[str, str]) -> tuple[str | None, str]:
    """(traces URL or None, where it came from). Raises OtlpConfigError for unusable settings."""
    if cli_endpoint:
        url, source = signal_url(_check_url(cli_endpoint, "--otlp-endpoint")), "--otlp-endpoint"
    else:
        if _true(env.get("OTEL_SDK_DISABLED")) or \
                (env.get("OTEL_TRACES_EXPORTER") or "").strip().lower() == "none":
            return None, ""
        traces = (env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or "").strip()
        base = (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "").strip()
        if traces:
            url, source = _check_url(traces, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), \
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        elif base:
            url, source = signal_url(_check_url(base, "OTEL_EXPORTER_OTLP_ENDPOINT")), "OTEL_EXPORTER_OTLP_ENDPOINT"
        else:
            return None, ""
    proto = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "")
    if proto.strip().lower() == "grpc":
        raise OtlpConfigError("OTEL_EXPORTER_OTLP_PROTOCOL=grpc: tracer exports OTLP over HTTP (protobuf) only; "
                              "point it at the receiver's OTLP/HTTP port (usually 4318) and unset the protocol "
                              "or set it to http/protobuf")
    return url, source


def otel_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The OTEL_* variables handed to the exporter process (the SDK reads headers, timeout,
    compression, certificates and batch settings from them)."""
    return {k: v for k, v in env.items() if k.startswith("OTEL_")}


@dataclass
class OtlpOptions:
    """What `tracer run/attach` and `tracer export otlp` need to export spans."""

    endpoint: str                      # full traces URL
    source: str = ""                   # --otlp-endpoint / OTEL_EXPORTER_OTLP_ENDPOINT / ...
    content: bool = False              # message content on spans (--otlp-content)
    session_idle_s: float = DEFAULT_SESSION_IDLE_S
    shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S
    env: dict[str, str] = field(default_factory=dict)   # OTEL_* variables for the SDK
    exit_grace_s: float = DEFAULT_EXIT_GRACE_S   # a process' sessions end this long after its exit
    run_as: InvokingUser | None = None  # the user the exporter process runs as (tracer/invoker.py)

    @property
    def display_endpoint(self) -> str:
        return display_url(self.endpoint)
