"""Start the mock server from Python: in a background thread, or as a subprocess.

    from tracer.mock import MockServer, MockServerProcess

    with MockServer(knobs={"delay_ms": 5}) as srv:         # own event loop in a daemon thread
        srv.url, srv.port, srv.cert_path, srv.state_dir
        ...
        recs = srv.wait_records(1)                          # or srv.records()

    with MockServerProcess(h2=True) as srv:                 # `python -m tracer.mock` subprocess
        ...                                                 # same attributes; records from records.jsonl
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from .knobs import Knobs, with_overrides
from .records import DEFAULT_BODY_LIMIT, read_records
from .server import MockServerCore, ServerConfig


def _knobs(knobs: Knobs | dict | None) -> Knobs:
    if knobs is None:
        return Knobs()
    if isinstance(knobs, Knobs):
        return knobs
    return with_overrides(Knobs(), knobs)


class _Common:
    state_dir: Path
    port: int
    cert_path: Path
    key_path: Path
    ca_path: Path
    records_path: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def records(self) -> list[dict]:
        raise NotImplementedError

    def wait_records(self, n: int, timeout: float = 10.0) -> list[dict]:
        """Wait until at least ``n`` exchanges are recorded; returns all records."""
        deadline = time.monotonic() + timeout
        while True:
            recs = self.records()
            if len(recs) >= n or time.monotonic() > deadline:
                if len(recs) < n:
                    raise TimeoutError(f"{len(recs)} records after {timeout}s, wanted {n}")
                return recs
            time.sleep(0.01)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


class MockServer(_Common):
    """The mock server on its own asyncio loop in a daemon thread of this process."""

    def __init__(self, *, port: int = 0, state_dir: str | os.PathLike | None = None, h2: bool = False,
                 knobs: Knobs | dict | None = None, record_limit: int = DEFAULT_BODY_LIMIT,
                 keep_records: bool = True, record_file: bool = True, key_type: str = "ec",
                 tls_version: str = "auto", request_log=None, keep_dir: bool | None = None):
        self._own_dir = state_dir is None
        self.state_dir = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="tracer-mock-"))
        self.keep_dir = (not self._own_dir) if keep_dir is None else keep_dir
        self.config = ServerConfig(port=port, state_dir=str(self.state_dir), h2=h2, knobs=_knobs(knobs),
                                   record_limit=record_limit, keep_records=keep_records,
                                   record_file=record_file, key_type=key_type,
                                   tls_version=tls_version, request_log=request_log)
        self.core = MockServerCore(self.config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "MockServer":
        ready = threading.Event()
        err: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.core.start())
            except BaseException as e:  # report to the starting thread
                err.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="tracer-mock-server", daemon=True)
        self._thread.start()
        ready.wait(30)
        if err:
            raise err[0]
        info = self.core.info()
        self.port = info["port"]
        self.cert_path = Path(info["cert"])
        self.key_path = Path(info["key"])
        self.ca_path = Path(info["ca"])
        self.records_path = self.state_dir / "records.jsonl"
        self.info = info
        return self

    def set_knobs(self, **overrides: Any) -> None:
        """Change the server-wide knob defaults while running (names with _ or -)."""
        self.core.app.defaults = with_overrides(self.core.app.defaults, overrides)

    def records(self) -> list[dict]:
        if self.config.keep_records:
            return self.core.records()
        return read_records(self.records_path)

    def stop(self) -> None:
        loop, t = self._loop, self._thread
        if loop is None or t is None:
            return
        if not loop.is_closed():
            fut = asyncio.run_coroutine_threadsafe(self.core.stop(), loop)
            try:
                fut.result(15)
            except Exception:
                pass
            loop.call_soon_threadsafe(loop.stop)
        t.join(15)
        self._loop = self._thread = None
        if not self.keep_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)


class MockServerProcess(_Common):
    """The mock server as a subprocess (``python -m tracer.mock``), e.g. to trace it or to isolate it.

    Extra CLI arguments go in ``args``; knobs become ``--NAME VALUE`` options. The child's stderr goes
    to ``<state_dir>/server.log``.
    """

    def __init__(self, *, port: int = 0, state_dir: str | os.PathLike | None = None, h2: bool = False,
                 knobs: dict | None = None, record_limit: int | None = None, args: list[str] = (),
                 python: str = sys.executable, env: dict | None = None, startup_timeout: float = 30.0,
                 keep_dir: bool | None = None):
        self._own_dir = state_dir is None
        self.state_dir = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="tracer-mock-"))
        self.keep_dir = (not self._own_dir) if keep_dir is None else keep_dir
        cmd = [python, "-m", "tracer.mock", "--port", str(port), "--dir", str(self.state_dir), "--quiet"]
        if h2:
            cmd.append("--h2")
        if record_limit is not None:
            cmd += ["--record-limit", str(record_limit)]
        for k, v in (knobs or {}).items():
            opt = "--" + k.replace("_", "-")
            if isinstance(v, bool):
                cmd.append(opt if v else "--no-" + opt[2:])
            else:
                cmd += [opt, str(v)]
        cmd += list(args)
        self.cmd = cmd
        self.env = env
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> "MockServerProcess":
        self.state_dir.mkdir(parents=True, exist_ok=True)
        errlog = open(self.state_dir / "server.log", "ab")
        try:
            self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=errlog,
                                         stdin=subprocess.DEVNULL, env=self.env)
        finally:
            errlog.close()
        line: list[bytes] = []
        t = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(self.startup_timeout)
        if not line or not line[0].strip():
            self.stop()
            log = (self.state_dir / "server.log").read_text(errors="replace")[-4000:]
            raise RuntimeError(f"mock server did not start: {' '.join(self.cmd)}\n{log}")
        try:
            self.info = orjson.loads(line[0])
            self.port = self.info["port"]
            self.cert_path = Path(self.info["cert"])
            self.key_path = Path(self.info["key"])
            self.ca_path = Path(self.info["ca"])
            self.records_path = Path(self.info["dir"]) / "records.jsonl"
        except Exception:
            self.stop()
            raise
        return self

    def records(self) -> list[dict]:
        return read_records(self.records_path)

    def stop(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if p is not None and p.stdout:
            p.stdout.close()
        self.proc = None
        if not self.keep_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)
