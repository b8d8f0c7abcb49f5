"""Shared fixtures for real-eBPF integration tests: one mock server per session, the test clients'
command lines, running `tracer run` and comparing logs with what the server recorded. Running the
CLI (`tracer_cmd`, `start_attach`, summaries) lives in tracer/testing/helpers.py, shared with bench/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import orjson
import pytest

from tests.conftest import bpf_unavailable_reason
from tracer.mock import MockServer, body_bytes
from tracer.testing.helpers import start_attach, tracer_cmd, wait_for  # noqa: F401 - for the tests

CLIENTS = Path(__file__).resolve().parent / "clients"

_reason = bpf_unavailable_reason()
if _reason and os.environ.get("CI"):
    raise RuntimeError(f"integration tests must run in CI but cannot: {_reason}")
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath) and _reason:
            item.add_marker(pytest.mark.skip(reason=_reason))


@pytest.fixture(scope="session")
def mock():
    with MockServer() as srv:
        yield srv


@pytest.fixture
def user_dir():
    """user_dir(uid, gid) -> a fresh 0700 directory of that user (default nobody), reachable by them:
    pytest's own temp dirs are root's 0700, and tracer, writing as the invoking user (SUDO_UID), could
    not create anything there."""
    made = []

    def make(uid: int = 65534, gid: int = 65534, mode: int = 0o700) -> Path:
        d = Path(tempfile.mkdtemp(prefix="tracer-user-"))
        os.chown(d, uid, gid)
        os.chmod(d, mode)
        made.append(d)
        return d
    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


def client_env(mock, **extra) -> dict:
    env = dict(os.environ)
    env.update({"NODE_EXTRA_CA_CERTS": str(mock.ca_path), "ANTHROPIC_BASE_URL": mock.url})
    env.update(extra)
    return env


def py_client(mock, *args) -> list[str]:
    return ["/usr/bin/python3", str(CLIENTS / "py_client.py"), mock.url, str(mock.ca_path), *args]


def node_client(mock, *args) -> list[str]:
    return [shutil.which("node") or "/usr/bin/node", str(CLIENTS / "node_client.mjs"), mock.url, *args]


def curl_client(mock, *, first_body_from: str | None = None) -> list[str]:
    """curl (libcurl -> libssl SSL_read/SSL_write) making a streaming then a non-streaming request on
    one connection. first_body_from: a file (e.g. a FIFO) to read the first body from, so a test can
    hold curl, loaded and idle, until it has attached."""
    def one(stream: bool, data: str) -> list[str]:
        return ["--http1.1", "--cacert", str(mock.ca_path), "-sS", "-o", "/dev/null",
                "-w", "%header{x-mock-record-id}\n", "-H", "content-type: application/json",
                "-H", "x-api-key: sk-ant-api03-curlsecretcurlsecret", "-d", data, f"{mock.url}/v1/messages"]

    def body(stream: bool) -> str:
        return json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": stream,
                           "messages": [{"role": "user", "content": "hello from curl"}]})
    first = f"@{first_body_from}" if first_body_from else body(True)
    return ["curl", *one(True, first), "--next", *one(False, body(False))]


def curl_body(stream: bool) -> str:
    return json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": stream,
                       "messages": [{"role": "user", "content": "hello from curl"}]})


def read_log(out_dir: Path) -> list[dict]:
    logs = sorted(Path(out_dir).glob("*.jsonl"))
    assert len(logs) == 1, f"expected one log in {out_dir}, found {logs}"
    lines = logs[0].read_bytes().splitlines()
    return [orjson.loads(l) for l in lines]


# Waits in these tests are sized for a real machine; emulated guests (vm-tests' arm64 guests under
# TCG on a busy host run several times slower) stretch them with TRACER_TEST_TIME_SCALE.
TIME_SCALE = max(1.0, float(os.environ.get("TRACER_TEST_TIME_SCALE") or 1))


def scaled(seconds: float) -> float:
    return seconds * TIME_SCALE


def run_traced(cmd: list[str], out_dir: Path, *, env=None, extra=(), timeout=120):
    """`tracer run -- cmd`; returns (CompletedProcess, records)."""
    p = subprocess.run(tracer_cmd("run", "-o", str(out_dir), "--quiet", "--no-html", *extra, "--", *cmd),
                       env=env, capture_output=True, text=True, timeout=scaled(timeout))
    return p, read_log(out_dir)


def mock_record(mock, logged: dict) -> dict:
    rid = logged["response"]["headers"].get("x-mock-record-id")
    assert rid, f"no x-mock-record-id in {logged['response']['headers']}"
    for r in mock.records():
        if str(r["id"]) == rid:
            return r
    raise AssertionError(f"mock has no record {rid}")


def assert_pair_matches(mock, logged: dict):
    """The logged pair equals, byte for byte after decoding, what the mock server recorded."""
    m = mock_record(mock, logged)
    req, resp = logged["request"], logged["response"]
    assert req["method"] == m["method"]
    assert req["url"].endswith(m["target"])
    assert req["body"] == orjson.loads(body_bytes(m["request_body"]))
    assert resp["status_code"] == m["status"]
    sent = body_bytes(m["response_body"])
    if "body_raw" in resp:
        assert resp["body_raw"].encode() == sent
    else:
        assert resp["body"] == orjson.loads(sent)
    assert logged["tracer"]["complete"] is True, logged["tracer"]
    # default redaction of the API key
    assert "secret" not in req["headers"].get("x-api-key", "")
    return m
