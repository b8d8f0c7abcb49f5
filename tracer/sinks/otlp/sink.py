"""tracer's side of live OTLP export: starts the exporter process (``worker``), tells it about targets,
stops it within a bounded time, and turns its figures into the run's summary.

The exporter process reads the log through a read-only descriptor of the file tracer writes, so the
capture path does no export work: nothing here runs per pair. It runs as the invoking user (the one
tracer/invoker.py names) when tracer runs under sudo: the endpoint, its headers (API keys) and TLS
files come from that user's options and environment, and the connection to their endpoint is theirs,
not root's. Its stdin carries control messages, its stdout its figures; a dead, stalled or slow
exporter never blocks tracer: writes to it are non-blocking, and ``finish`` waits at most the
configured shutdown timeout plus a grace period, then kills it and counts what was not delivered.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import threading
import time
from pathlib import Path

from tracer.invoker import child_credentials, user_environment
from tracer.sinks.otlp.config import OtlpOptions
from tracer.sinks.redact import redact_argv

GRACE_S = 2.0
PASS_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
            "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")


def _process_facts(pid: int) -> dict:
    out: dict = {"pid": pid}
    try:
        out["exe"] = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        pass
    try:        # redacted as the log's tracer.process command is (tracer/sinks/redact.py)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            out["argv"] = redact_argv([a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a])
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/comm") as f:
            out["comm"] = f.read().strip()
    except OSError:
        pass
    try:
        out["owner"] = pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name
    except (OSError, KeyError):
        pass
    return out


class OtlpSink:
    def __init__(self, opts: OtlpOptions, log_path: Path, *, stderr=None, host: str | None = None,
                 source_fd: int | None = None):
        """``source_fd``: the writer's descriptor of the log; the exporter gets a read-only one of that
        very file (reopened through /proc/self/fd: nothing in the user's directory is looked up
        again as root). Without it, ``log_path`` is opened (never through a final symlink)."""
        self.opts = opts
        self.stderr = stderr or sys.stderr
        self.stats: dict = {}
        self.final: dict | None = None
        self.dead_reason = ""
        self.lost_messages = 0
        self._done = threading.Event()
        if source_fd is not None:
            fd = os.open(f"/proc/self/fd/{source_fd}", os.O_RDONLY | os.O_CLOEXEC)
        else:
            fd = os.open(log_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        env.update({k: os.environ[k] for k in PASS_ENV if k in os.environ})
        env.update(opts.env)
        kw: dict = {}
        if opts.run_as is not None:      # as the invoking user: their ids, groups and HOME
            kw = child_credentials(opts.run_as)
            env = user_environment(env, opts.run_as)
            env.setdefault("HOME", "/")
        try:
            self.proc = subprocess.Popen([sys.executable, "-I", "-m", "tracer.sinks.otlp.worker", str(fd)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(fd,), env=env,
                                         cwd="/", start_new_session=True, **kw)
        finally:
            os.close(fd)
        os.set_blocking(self.proc.stdin.fileno(), False)
        self._send({"config": {"endpoint": opts.endpoint, "display_endpoint": opts.display_endpoint,
                               "content": opts.content, "idle_s": opts.session_idle_s,
                               "shutdown_timeout_s": opts.shutdown_timeout_s, "host": host,
                               "exit_grace_s": opts.exit_grace_s}})
        self._reader = threading.Thread(target=self._read, name="tracer-otlp-stats", daemon=True)
        self._reader.start()

    def _send(self, msg: dict) -> None:
        data = (json.dumps(msg) + "\n").encode()
        try:
            n = os.write(self.proc.stdin.fileno(), data)
            if n != len(data):
                self.lost_messages += 1
        except (BlockingIOError, BrokenPipeError, OSError):
            self.lost_messages += 1

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict) and isinstance(msg.get("stats"), dict):
                self.stats = msg["stats"]
            elif isinstance(msg, dict) and isinstance(msg.get("final"), dict):
                self.stats = self.final = msg["final"]
        rc = self.proc.wait()
        if self.final is None and not self.dead_reason:
            self.dead_reason = f"the exporter process exited (status {rc})"
        self._done.set()

    # -- during the run -----------------------------------------------------------------------------
    def alive(self) -> bool:
        return not self._done.is_set()

    def add_target(self, pid: int, command: tuple[str, list[str]] | None = None) -> None:
        facts = _process_facts(pid)
        if command:          # started by tracer run, not exec'ed yet: /proc still shows the launcher
            facts["exe"], facts["argv"] = command[0], redact_argv(list(command[1]))
        self._send({"target": facts})

    def target_exited(self, pid: int) -> None:
        self._send({"exited": pid})

    def status(self) -> str:
        s = self.stats
        return f"otlp {s.get('exported', 0)}/{s.get('spans', 0)} spans" if s else "otlp starting"

    def abort(self) -> None:
        """tracer could not start after all: stop the exporter at once."""
        try:
            self.proc.kill()
        except OSError:
            pass

    # -- the end -----------------------------------------------------------------------------------
    def finish(self, records_written: int) -> dict:
        """Let the exporter read the rest of the log and deliver, within the shutdown timeout; then
        the summary figures."""
        t0 = time.monotonic()
        self._send({"finish": {"timeout_s": self.opts.shutdown_timeout_s}})
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        killed = False
        if not self._done.wait(self.opts.shutdown_timeout_s + GRACE_S):
            killed = True
            self.proc.kill()
            self._done.wait(2.0)
        s = self.stats
        read = int(s.get("records", 0))
        spans = int(s.get("spans", 0))
        exported = int(s.get("exported", 0))
        out = {
            "otlp_endpoint": self.opts.display_endpoint,
            "otlp_spans": spans,
            "otlp_spans_exported": exported,
            "otlp_spans_undelivered": spans - exported,
            "otlp_records_not_exported": max(0, records_written - read),
            "otlp_chat_spans": int(s.get("chat_spans", 0)),
            "otlp_tool_spans": int(s.get("tool_spans", 0)),
            "otlp_session_spans": int(s.get("session_spans", 0)),
            "otlp_shutdown_s": round(time.monotonic() - t0, 3),
            "otlp_exporter_uid": s.get("uid"),
            "otlp_last_error": s.get("last_error", "") or ("" if self.final else self.dead_reason),
        }
        if killed:
            out["otlp_last_error"] = (f"exporter stopped after the {self.opts.shutdown_timeout_s:g} s shutdown "
                                      f"timeout" + (f" ({out['otlp_last_error']})" if out["otlp_last_error"] else ""))
        return out


def format_otlp(s: dict) -> str | None:
    if "otlp_endpoint" not in s:
        return None
    line = (f"otlp: {s['otlp_spans_exported']} of {s['otlp_spans']} spans exported to {s['otlp_endpoint']} "
            f"({s['otlp_chat_spans']} calls, {s['otlp_tool_spans']} tool calls, {s['otlp_session_spans']} sessions)")
    uid = s.get("otlp_exporter_uid")
    if uid is not None and uid != os.geteuid():
        line += f"; sent as uid {uid}"
    lost = []
    if s.get("otlp_spans_undelivered"):
        lost.append(f"{s['otlp_spans_undelivered']} spans undelivered")
    if s.get("otlp_records_not_exported"):
        lost.append(f"{s['otlp_records_not_exported']} logged calls not exported")
    if lost:
        line += "; " + ", ".join(lost)
        if s.get("otlp_last_error"):
            line += f" (last error: {s['otlp_last_error']})"
    return line
