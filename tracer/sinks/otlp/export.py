"""The OpenTelemetry SDK side: SpanData -> SDK spans with their resources, batched export over OTLP/HTTP
(protobuf) with the SDK's retries and backoff, and the accounting of what was delivered.

Delivery is counted by wrapping the exporter: a span counts as exported only when the endpoint accepted
the batch that carried it. Everything handed to the processor and not confirmed by the end (queue full,
endpoint down or stalling, shutdown deadline) is *undelivered*. The SDK's log messages are captured (the
first failure and the recovery are reported once each, never the request headers).

Resources: one per traced process: ``service.name=tracer`` (``OTEL_SERVICE_NAME`` /
``OTEL_RESOURCE_ATTRIBUTES`` override it and add to it), ``service.version``, ``host.name``, ``host.arch``,
``os.type``, ``process.pid``, ``process.parent_pid``, ``process.executable.name``/``path``,
``process.command``, ``process.owner``, ``claude_code.version``, and with content on
``process.command_line``/``process.command_args`` and ``tracer.process.chain`` (the traced ancestors,
``python3 agent.py → claude``) (the arguments can carry a prompt, as in ``claude -p "..."``; the
OpenTelemetry SDK's own process detector leaves them out by default for the same reason). A process
tracer follows (a child, an exec'd program) is described by its records' ``tracer.process``: command
lines there are redacted like the log's, and so are those of the processes tracer is pointed at. Backends that drop resource
attributes (Phoenix keeps only ``openinference.project.name``, which selects the project) still see them:
every span carries them as OpenInference ``metadata`` (a JSON object) and the owner as ``user.id``.
"""

from __future__ import annotations

import logging
import os
import re
import platform
import socket
import threading
from dataclasses import dataclass
from typing import Callable, Mapping

import orjson
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.sdk.version import __version__ as sdk_version
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from tracer.sinks.otlp.spans import SpanData, parse_user_agent

try:
    from importlib.metadata import version as _dist_version
    TRACER_VERSION = _dist_version("tracer")
except Exception:  # noqa: BLE001 - running from a source tree
    TRACER_VERSION = "0"

SCOPE = InstrumentationScope("tracer", TRACER_VERSION)
_KINDS = {"CLIENT": SpanKind.CLIENT, "INTERNAL": SpanKind.INTERNAL}
_FLAGS = TraceFlags(TraceFlags.SAMPLED)
METADATA_KEYS_SKIP = ("telemetry.sdk.",)


@dataclass
class ProcessInfo:
    pid: int
    exe: str = ""
    argv: tuple[str, ...] = ()
    owner: str = ""
    command_line: str = ""         # the log's tracer.process command (redacted) when argv is not known
    ppid: int | None = None
    chain: str = ""                # the log's tracer.process chain_text: "python3 agent.py → claude"
    comm: str = ""
    client: str = ""               # user-agent product of its first call, e.g. claude-cli
    client_version: str = ""


class Resources:
    """One Resource per traced process, built on first use; the environment's attributes win."""

    def __init__(self, env: Mapping[str, str], host: str | None = None, *, command_line: bool = False):
        self.command_line = command_line
        base = {
            "telemetry.sdk.language": "python", "telemetry.sdk.name": "opentelemetry",
            "telemetry.sdk.version": sdk_version,
            "service.name": "tracer", "service.version": TRACER_VERSION,
            "host.name": host or socket.gethostname(), "host.arch": platform.machine(), "os.type": "linux",
        }
        self._env = self._env_resource(env)
        self.base = Resource(base).merge(self._env)
        self.processes: dict[int, ProcessInfo] = {}
        self._cache: dict[int | None, tuple[Resource, str, str]] = {}

    @staticmethod
    def _env_resource(env: Mapping[str, str]) -> Resource:
        saved = {k: os.environ.get(k) for k in ("OTEL_RESOURCE_ATTRIBUTES", "OTEL_SERVICE_NAME")}
        try:
            for k in saved:
                if env.get(k) is not None:
                    os.environ[k] = env[k]
                else:
                    os.environ.pop(k, None)
            return OTELResourceDetector().detect()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def note_process(self, info: ProcessInfo) -> None:
        old = self.processes.get(info.pid)
        if old is not None:       # keep what was learnt from records (client version)
            info.client = info.client or old.client
            info.client_version = info.client_version or old.client_version
        self.processes[info.pid] = info
        self._cache.pop(info.pid, None)

    def note_record(self, pid: int | None, rec: dict) -> None:
        """Learn the client (user-agent) of a process from its records, before its first span leaves."""
        if pid is None or pid in self._cache:
            return
        info = self.processes.get(pid)
        # the process as the log describes it (tracer.process, docs/log-format.md): executable,
        # command line (redacted like the log), parent and chain of traced ancestors; for a process
        # tracer was pointed at (note_process), what /proc told is kept and the log adds the rest, so
        # live export and `tracer export otlp` of the log describe it alike
        tr = rec.get("tracer") if isinstance(rec.get("tracer"), dict) else {}
        proc = tr.get("process") if isinstance(tr.get("process"), dict) else {}
        ppid = proc.get("ppid")
        ppid = ppid if isinstance(ppid, int) and not isinstance(ppid, bool) and ppid > 0 else None
        if info is None:
            info = ProcessInfo(pid, exe=str(proc.get("exe") or ""), comm=str(tr.get("comm") or ""),
                               command_line=str(proc.get("command") or ""), ppid=ppid,
                               chain=str(proc.get("chain_text") or ""))
            self.processes[pid] = info
        else:
            info.ppid = info.ppid if info.ppid is not None else ppid
            info.chain = info.chain or str(proc.get("chain_text") or "")
        if not info.client:
            headers = (rec.get("request") or {}).get("headers")
            ua = ""
            if isinstance(headers, dict):
                ua = str(headers.get("user-agent") or "")
            info.client, info.client_version = parse_user_agent(ua)

    def get(self, pid: int | None) -> tuple[Resource, str, str]:
        """(resource, its metadata JSON, user.id) for a traced process."""
        hit = self._cache.get(pid)
        if hit is not None:
            return hit
        attrs: dict = {}
        info = self.processes.get(pid) if pid is not None else None
        if pid is not None:
            attrs["process.pid"] = pid
        if info is not None:
            if info.exe:
                attrs["process.executable.path"] = info.exe
                attrs["process.executable.name"] = os.path.basename(info.exe)
            if info.argv:
                attrs["process.command"] = info.argv[0]
                if self.command_line:     # arguments can be content (claude -p "PROMPT"): only with content
                    attrs["process.command_args"] = list(info.argv)
                    attrs["process.command_line"] = " ".join(info.argv)
            elif info.command_line:
                attrs["process.command"] = info.exe or info.command_line.split(" ", 1)[0]
                if self.command_line:
                    attrs["process.command_line"] = info.command_line
            if info.ppid is not None:
                attrs["process.parent_pid"] = info.ppid
            if info.chain and self.command_line:     # the ancestors' commands: content too
                attrs["tracer.process.chain"] = info.chain
            if info.owner:
                attrs["process.owner"] = info.owner
            if info.client in ("claude-cli", "claude-code") and info.client_version:
                attrs["claude_code.version"] = info.client_version
        # the process' own attributes under the environment's (which win)
        res = Resource(dict(self.base.attributes)).merge(Resource(attrs)).merge(self._env)
        meta = {k: (list(v) if isinstance(v, tuple) else v) for k, v in res.attributes.items()
                if not k.startswith(METADATA_KEYS_SKIP)}
        owner = info.owner if info else ""
        out = (res, orjson.dumps(meta).decode(), owner)
        self._cache[pid] = out
        return out


def to_readable(s: SpanData, resources: Resources) -> ReadableSpan:
    res, meta, owner = resources.get(s.pid)
    attrs = dict(s.attributes)
    attrs["metadata"] = meta
    if owner:
        attrs.setdefault("user.id", owner)
    parent = SpanContext(s.trace_id, s.parent_id, False, _FLAGS) if s.parent_id else None
    status = Status(StatusCode.ERROR, s.status_message or None) if s.status == "ERROR" else Status(StatusCode.UNSET)
    return ReadableSpan(name=s.name, context=SpanContext(s.trace_id, s.span_id, False, _FLAGS), parent=parent,
                        resource=res, attributes=attrs, kind=_KINDS.get(s.kind, SpanKind.INTERNAL),
                        status=status, start_time=s.start_ns, end_time=max(s.end_ns, s.start_ns),
                        instrumentation_scope=SCOPE)


_ERRNO = re.compile(r"\[Errno -?\d+\] [^\"')]+|Read timed out|Connection aborted|RemoteDisconnected[^\"')]*"
                    r"|certificate verify failed[^\"')]*|Name or service not known")


def short_error(msg: str) -> str:
    """The gist of an SDK/requests error message ('[Errno 111] Connection refused', 'Read timed out')."""
    m = _ERRNO.search(msg)
    if m:
        return m.group(0).strip()
    code = re.search(r"code: (\d{3})", msg)
    if code:
        return f"HTTP {code.group(1)}" + (msg[msg.find("reason:"):][:120].replace("reason:", ":") if "reason:" in msg else "")
    return msg[:200]


class _SdkLog(logging.Handler):
    """Keeps the SDK's last error message (one line; the SDK never logs headers)."""

    def __init__(self, on_error: Callable[[str], None]):
        super().__init__(logging.WARNING)
        self.on_error = on_error

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage().splitlines()[0][:300]
        except Exception:  # noqa: BLE001
            return
        if record.levelno >= logging.ERROR or "Transient error" in msg or "Queue full" in msg:
            self.on_error(msg)


@dataclass
class DeliveryStats:
    submitted: int = 0             # spans handed to the processor
    exported: int = 0              # accepted by the endpoint
    failed: int = 0                # in batches the exporter gave up on
    batches: int = 0
    failed_batches: int = 0
    last_error: str = ""

    @property
    def undelivered(self) -> int:
        return self.submitted - self.exported


class CountingExporter(SpanExporter):
    def __init__(self, inner: SpanExporter, stats: DeliveryStats, on_change: Callable[[bool, str], None]):
        self.inner = inner
        self.stats = stats
        self.on_change = on_change
        self._lock = threading.Lock()
        self._failing = False

    def export(self, spans):
        try:
            result = self.inner.export(spans)
        except Exception as e:  # noqa: BLE001 - counted like any failed batch
            self.stats.last_error = f"{type(e).__name__}: {e}"[:300]
            result = SpanExportResult.FAILURE
        with self._lock:
            self.stats.batches += 1
            if result is SpanExportResult.SUCCESS:
                self.stats.exported += len(spans)
                if self._failing:
                    self._failing = False
                    self.on_change(False, "")
            else:
                self.stats.failed += len(spans)
                self.stats.failed_batches += 1
                if not self._failing:
                    self._failing = True
                    self.on_change(True, self.stats.last_error)
        return result

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class Exporter:
    """Batched OTLP/HTTP export of SpanData (``submit`` never blocks; the queue is bounded)."""

    def __init__(self, endpoint: str, env: Mapping[str, str], *, resources: Resources | None = None,
                 on_change: Callable[[bool, str], None] | None = None, schedule_delay_ms: int = 500,
                 inner: SpanExporter | None = None, timeout: float | None = None):
        self.stats = DeliveryStats()
        self.resources = resources or Resources(env)
        self._on_change = on_change or (lambda failing, msg: None)
        handler = _SdkLog(self._sdk_error)
        for name in ("opentelemetry", "opentelemetry.exporter", "opentelemetry.sdk"):
            lg = logging.getLogger(name)
            lg.addHandler(handler)
            lg.propagate = False
            lg.setLevel(logging.WARNING)
        self._inner = inner or OTLPSpanExporter(endpoint=endpoint, timeout=timeout)
        self.exporter = CountingExporter(self._inner, self.stats, self._on_change)
        kw = {}
        if "OTEL_BSP_SCHEDULE_DELAY" not in env:
            kw["schedule_delay_millis"] = schedule_delay_ms
        self.processor = BatchSpanProcessor(self.exporter, **kw)

    def _sdk_error(self, msg: str) -> None:
        if "max retries or shutdown" in msg and self.stats.last_error:
            return          # the generic give-up line: keep the reason seen before it
        self.stats.last_error = short_error(msg)

    def submit(self, spans: list[SpanData]) -> None:
        for s in spans:
            self.processor.on_end(to_readable(s, self.resources))
            self.stats.submitted += 1

    def export_now(self, spans: list[SpanData], batch: int = 256) -> None:
        """Synchronous export (tracer export otlp): each batch with the SDK's retries and backoff."""
        for i in range(0, len(spans), batch):
            chunk = [to_readable(s, self.resources) for s in spans[i:i + batch]]
            self.stats.submitted += len(chunk)
            self.exporter.export(chunk)

    def close(self, timeout_s: float) -> DeliveryStats:
        """Export what is queued, for at most ``timeout_s`` seconds; then stop (whatever is left is
        undelivered)."""
        done = threading.Event()

        def run():
            try:
                self.processor.shutdown()   # exports what is queued, then shuts the exporter down
            finally:
                done.set()
        t = threading.Thread(target=run, name="tracer-otlp-close", daemon=True)
        t.start()
        if not done.wait(timeout_s + 1.0):
            try:
                self._inner.shutdown()      # interrupts a retry backoff; a stalled request stays behind
            except Exception:  # noqa: BLE001
                pass
        return self.stats
