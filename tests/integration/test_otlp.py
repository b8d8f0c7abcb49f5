"""OpenTelemetry export into a real backend: Arize Phoenix, started here (one server for the module), fed by
`tracer run --otlp-endpoint` tracing real clients (CPython, Node, Claude Code with a subagent and a Bash
round trip) and by `tracer export otlp`; spans are read back through Phoenix's REST API
(GET /v1/projects/{project}/spans) and compared with what the mock server recorded.

Phoenix lives in its own virtualenv (scripts/bootstrap-phoenix.sh, cached under /var/cache/tracer), runs on
127.0.0.1 with a free port and a temporary working directory, telemetry off, and any outbound HTTP it might
try pointed at a dead loopback proxy. Each test writes to its own Phoenix project (the x-project-name
header through OTEL_EXPORTER_OTLP_HEADERS, or the openinference.project.name resource attribute through
OTEL_RESOURCE_ATTRIBUTES), so tests do not see each other's spans.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import (assert_pair_matches, client_env, node_client, py_client, read_log,
                                        start_attach, tracer_cmd)
from tests.known_releases import versions
from tracer.mock import MockServer, body_bytes
from tracer.testing.helpers import claude_env, end_process
from tracer.testing.releases import fetch_npm_release

ROOT = Path(__file__).resolve().parents[2]
NATIVE = versions("@anthropic-ai/claude-code-linux-x64")
NODE = shutil.which("node") or "/usr/bin/node"
JS_RELEASE = "2.0.77"


# ------------------------------------------------------------------------------------------- Phoenix

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Phoenix:
    def __init__(self, url: str, proc: subprocess.Popen, log: Path):
        self.url = url
        self.proc = proc
        self.log = log

    @property
    def endpoint(self) -> str:
        return self.url

    def spans(self, project: str) -> list[dict]:
        out, cursor = [], None
        while True:
            q = "limit=1000" + (f"&cursor={cursor}" if cursor else "")
            try:
                with urllib.request.urlopen(f"{self.url}/v1/projects/{project}/spans?{q}", timeout=30) as r:
                    d = json.load(r)
            except urllib.error.HTTPError as e:
                if e.code == 404:      # the project does not exist (yet)
                    return []
                raise
            out += d["data"]
            cursor = d.get("next_cursor")
            if not cursor:
                return out

    def wait_spans(self, project: str, n: int, timeout: float = 60.0) -> list[dict]:
        """Phoenix ingests in the background: wait until ``n`` spans are queryable (and no more arrive)."""
        deadline = time.monotonic() + timeout
        spans: list[dict] = []
        while time.monotonic() < deadline:
            spans = self.spans(project)
            if len(spans) >= n:
                time.sleep(0.5)
                again = self.spans(project)
                if len(again) == len(spans):
                    return spans
                spans = again
            time.sleep(0.25)
        raise AssertionError(f"Phoenix project {project}: {len(spans)} spans after {timeout}s, expected {n}")


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory):
    boot = subprocess.run(["bash", str(ROOT / "scripts" / "bootstrap-phoenix.sh")], capture_output=True,
                          text=True, timeout=1800)
    assert boot.returncode == 0, f"bootstrap-phoenix.sh failed:\n{boot.stderr[-3000:]}"
    venv_bin = Path(boot.stdout.strip().splitlines()[-1]).parent
    last = ""
    for _attempt in range(3):
        wd = tmp_path_factory.mktemp("phoenix")
        port, grpc = _free_port(), _free_port()
        env = {"PATH": f"{venv_bin}:/usr/bin:/bin", "HOME": str(wd), "LANG": "C.UTF-8",
               "PHOENIX_WORKING_DIR": str(wd), "PHOENIX_HOST": "127.0.0.1", "PHOENIX_PORT": str(port),
               "PHOENIX_GRPC_PORT": str(grpc), "PHOENIX_TELEMETRY_ENABLED": "false",
               "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
               # whatever it might try to fetch goes to a dead loopback proxy, never off the machine
               "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
               "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
               "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
        log = wd / "phoenix.log"
        proc = subprocess.Popen([str(venv_bin / "phoenix"), "serve"], stdout=log.open("wb"),
                                stderr=subprocess.STDOUT, env=env, cwd=str(wd), start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                    ready = r.status == 200
            except OSError:
                pass
            if ready:
                break
            time.sleep(0.3)
        if ready:
            try:
                yield Phoenix(url, proc, log)
            finally:
                end_process(proc, 15)
            return
        last = log.read_text(errors="replace")[-3000:]
        proc.kill()
        proc.wait(5)
    pytest.fail(f"phoenix serve did not start:\n{last}")


def _project() -> str:
    return "t-" + uuid.uuid4().hex[:10]


def _otel_env(base: dict, project: str, **extra) -> dict:
    env = {k: v for k, v in base.items() if not k.startswith("OTEL_")}
    env["OTEL_EXPORTER_OTLP_HEADERS"] = f"x-project-name={project}"
    env.update(extra)
    return env


def _by_id(spans):
    return {s["context"]["span_id"]: s for s in spans}


def _sse_facts(raw: bytes) -> dict:
    """id, model, usage and stop reason of an SSE Messages stream, read directly from its events."""
    out = {"input": 0, "output": 0, "cache_read": 0, "cache_creation": 0, "stop": None, "id": None,
           "model": None, "tool_uses": []}
    for line in raw.decode().splitlines():
        if not line.startswith("data:"):
            continue
        ev = json.loads(line[5:])
        if ev.get("type") == "message_start":
            m = ev["message"]
            out["id"], out["model"] = m["id"], m["model"]
            u = m.get("usage") or {}
            out["input"] = u.get("input_tokens", 0)
            out["cache_read"] = u.get("cache_read_input_tokens", 0)
            out["cache_creation"] = u.get("cache_creation_input_tokens", 0)
            out["output"] = u.get("output_tokens", 0)
        elif ev.get("type") == "message_delta":
            out["stop"] = ev["delta"].get("stop_reason")
            u = ev.get("usage") or {}
            out["output"] = u.get("output_tokens", out["output"])
            out["input"] = u.get("input_tokens", out["input"])
        elif ev.get("type") == "content_block_start" and ev["content_block"]["type"] == "tool_use":
            out["tool_uses"].append(ev["content_block"])
    return out


def _expected(mock_rec: dict) -> dict:
    raw = body_bytes(mock_rec["response_body"])
    req = json.loads(body_bytes(mock_rec["request_body"]))
    if mock_rec["status"] >= 400:
        return {"status": mock_rec["status"], "req": req, "error": json.loads(raw)["error"]["type"]}
    if req.get("stream"):
        f = _sse_facts(raw)
    else:
        b = json.loads(raw)
        u = b["usage"]
        f = {"id": b["id"], "model": b["model"], "stop": b["stop_reason"], "input": u["input_tokens"],
             "output": u["output_tokens"], "cache_read": u.get("cache_read_input_tokens", 0),
             "cache_creation": u.get("cache_creation_input_tokens", 0),
             "tool_uses": [c for c in b["content"] if c["type"] == "tool_use"]}
    f.update(status=mock_rec["status"], req=req)
    return f


def _check_chat_span(span: dict, exp: dict, mock_port: int):
    a = span["attributes"]
    req = exp["req"]
    assert span["name"] == f"chat {req['model']}"
    assert span["span_kind"] == "LLM"
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "anthropic"
    assert a["llm.system"] == "anthropic"
    assert a["gen_ai.request.model"] == req["model"]
    assert a["gen_ai.request.max_tokens"] == req["max_tokens"]
    assert a["server.address"] == "127.0.0.1" and a["server.port"] == mock_port
    assert a["http.response.status_code"] == exp["status"]
    assert a["tracer.complete"] is True
    if exp["status"] >= 400:
        assert span["status_code"] == "ERROR"
        assert a["error.type"] == exp["error"]
        return
    assert span["status_code"] == "UNSET", span["status_message"]
    total_in = exp["input"] + exp["cache_read"] + exp["cache_creation"]
    assert a["gen_ai.response.model"] == exp["model"] == a["llm.model_name"]
    assert a["gen_ai.response.id"] == exp["id"]
    assert a["gen_ai.response.finish_reasons"] == [exp["stop"]]
    assert a["gen_ai.usage.input_tokens"] == total_in == a["llm.token_count.prompt"]
    assert a["gen_ai.usage.output_tokens"] == exp["output"] == a["llm.token_count.completion"]
    assert a["gen_ai.usage.cache_read.input_tokens"] == exp["cache_read"] == \
        a["llm.token_count.prompt_details.cache_read"]
    assert a["gen_ai.usage.cache_creation.input_tokens"] == exp["cache_creation"] == \
        a["llm.token_count.prompt_details.cache_write"]
    assert a["llm.token_count.total"] == total_in + exp["output"]
    if req.get("stream"):
        assert a["gen_ai.request.stream"] is True
        assert 0 < a["gen_ai.response.time_to_first_chunk"] < 30
    else:
        assert "gen_ai.response.time_to_first_chunk" not in a


def _span_times_match(span: dict, rec: dict):
    """Start and end are the log record's kernel timestamps (Phoenix keeps microseconds)."""
    from datetime import datetime
    start = datetime.fromisoformat(span["start_time"]).timestamp()
    end = datetime.fromisoformat(span["end_time"]).timestamp()
    assert abs(start - rec["request"]["timestamp"]) < 1e-5
    assert abs(end - rec["response"]["timestamp"]) < 1e-5


def _no_content(spans: list[dict], texts: list[str]):
    blob = json.dumps([s["attributes"] for s in spans])
    for t in texts:
        assert t not in blob, f"message content {t!r} exported without --otlp-content"
    for s in spans:
        for k in s["attributes"]:
            assert not k.startswith(("llm.input_messages", "llm.output_messages", "gen_ai.input.messages",
                                     "gen_ai.output.messages", "gen_ai.system_instructions",
                                     "gen_ai.tool.call.arguments", "gen_ai.tool.call.result")), k


def _run(cmd, out_dir, env, *extra, timeout=240):
    t0 = time.monotonic()
    p = subprocess.run(tracer_cmd("run", "-o", str(out_dir), "--quiet", "--no-html", *extra, "--", *cmd),
                       env=env, capture_output=True, text=True, timeout=timeout)
    return p, time.monotonic() - t0


# ------------------------------------------------------------------------------------------- tests

def test_python_and_node_calls_in_phoenix(phoenix, mock, tmp_path):
    """CPython (OpenSSL) and Node (static OpenSSL) clients, streaming and not, plus an API error, a stream
    error event and a response cut off mid-stream: every logged call is a chat span whose attributes
    match what the mock server sent; conversations are sessions; content stays off by default."""
    project = _project()
    env = _otel_env(client_env(mock), project)
    url = phoenix.endpoint
    clients = [py_client(mock, "--stream", "--json", "--count", "2"),
               py_client(mock, "--header", "x-mock-status:529"),
               py_client(mock, "--stream", "--header", "x-mock-error-after:2"),
               py_client(mock, "--stream", "--header", "x-mock-abort-after:3"),    # the client fails
               node_client(mock, "--stream", "--json")]
    logs = []
    for i, cmd in enumerate(clients):
        p, _ = _run(cmd, tmp_path / f"log{i}", env, "--otlp-endpoint", url)
        assert p.returncode == 0 or "abort-after" in " ".join(cmd), p.stderr[-2000:]
        assert f"exporting spans to {url}/v1/traces" in p.stderr
        assert "otlp:" in p.stderr and "undelivered" not in p.stderr, p.stderr[-2000:]
        logs.append(read_log(tmp_path / f"log{i}"))
    all_recs = [r for recs in logs for r in recs]
    chats_expected = len(all_recs)
    assert chats_expected == 9
    spans = phoenix.wait_spans(project, chats_expected)
    chats = [s for s in spans if s["name"].startswith("chat")]
    sessions = [s for s in spans if s["name"].startswith("invoke_agent")]
    assert len(chats) == chats_expected
    by_rid = {}
    for s in chats:
        rid = (s["attributes"].get("http.response.header.request-id") or [None])[0]
        by_rid[rid] = s
    ids = _by_id(spans)
    for rec in all_recs:
        m = {str(r["id"]): r for r in mock.records()}[rec["response"]["headers"]["x-mock-record-id"]]
        span = by_rid[rec["response"]["headers"].get("request-id")]
        if rec["tracer"]["complete"]:
            assert_pair_matches(mock, rec)
            exp = _expected(m)
            if m["status"] == 200 and rec["response"].get("body_raw", "").find("event: error") >= 0:
                assert span["status_code"] == "ERROR" and span["attributes"]["error.type"] == "stream_error"
                assert "Overloaded" in span["status_message"]
            else:
                _check_chat_span(span, exp, mock.port)
            _span_times_match(span, rec)
        else:   # cut off mid-stream: an error span with tracer's completeness figures
            assert span["status_code"] == "ERROR"
            assert span["attributes"]["tracer.complete"] is False
            assert span["attributes"]["error.type"] == "incomplete"
            assert "incomplete" in span["status_message"]
        # every call hangs under its conversation's session span, in the same trace
        parent = ids[span["parent_id"]]
        assert parent["name"] == "invoke_agent" and parent["span_kind"] == "AGENT"
        assert parent["context"]["trace_id"] == span["context"]["trace_id"]
        assert parent["attributes"]["session.id"] == span["attributes"]["session.id"]
        meta = span["attributes"]
        assert meta["metadata.service.name"] == "tracer"
        assert meta["metadata.process.pid"] == rec["tracer"]["pid"]
        assert meta["metadata.host.name"] == socket.gethostname()
    # one session per conversation (same first message), spanning its calls
    convs = {}
    for rec in all_recs:
        b = rec["request"].get("body") or {}
        convs.setdefault((rec["tracer"]["pid"], json.dumps(b.get("messages", [None])[0])), []).append(rec)
    assert len(sessions) == len(convs)
    for s in sessions:
        a = s["attributes"]
        kids = [c for c in chats if c["parent_id"] == s["context"]["span_id"]]
        assert a["tracer.session.calls"] == len(kids) >= 1
        assert s["start_time"] == min(k["start_time"] for k in kids)
        assert s["end_time"] == max(k["end_time"] for k in kids)
    _no_content(spans, ["hello from python", "hello from node", "Hi! This is the tracer mock"])
    phoenix_proc_ok(phoenix)


def phoenix_proc_ok(phoenix):
    assert phoenix.proc.poll() is None, "Phoenix died"


@pytest.fixture(scope="module")
def subagent_mock():
    with MockServer(knobs={"scenario": "subagent"}) as srv:
        yield srv


_CLAUDE_LOGS: dict[str, tuple[Path, str, int]] = {}


@pytest.mark.parametrize("kind,version,content", [
    pytest.param("native", NATIVE[-1], True, id=f"native-{NATIVE[-1]}-content"),
    pytest.param("node", JS_RELEASE, False, id=f"cli.js-{JS_RELEASE}"),
])
def test_claude_code_subagent_in_phoenix(phoenix, subagent_mock, tmp_path, kind, version, content):
    """`claude -p` whose main conversation starts a subagent (Task/Agent tool) that runs a Bash round trip:
    one session span, a chat span per API call, an execute_tool span per tool call timed from the
    response that asked for it to the request that carried its result, the subagent's calls and tools
    under the Task/Agent span; Claude Code's version and the process on every span."""
    mock = subagent_mock
    if kind == "native":
        cmd = [str(fetch_npm_release("@anthropic-ai/claude-code-linux-x64", version))]
    else:
        cmd = [NODE, str(fetch_npm_release("@anthropic-ai/claude-code", version))]
    home = tmp_path / "home"
    home.mkdir()
    project = _project()
    env = _otel_env(claude_env(mock, home), project)
    prompt = "say hi through a subagent"
    t0 = time.time()
    extra = ["--otlp-endpoint", phoenix.endpoint] + (["--otlp-content"] if content else [])
    p, _ = _run(cmd + ["-p", prompt, "--allowedTools", "Bash,Task,Agent"], tmp_path / "log", env, *extra)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "The subagent reported" in p.stdout
    recs = read_log(tmp_path / "log")
    log_path = next((tmp_path / "log").glob("*.jsonl"))
    _CLAUDE_LOGS[kind] = (log_path, project, len(recs))
    served = {str(r["id"]): r for r in mock.records() if r["arrival"] >= t0 and r["path"] == "/v1/messages"}
    assert sorted(served) == sorted(r["response"]["headers"]["x-mock-record-id"] for r in recs)

    tools_expected = sum(len(_expected(m)["tool_uses"]) for m in served.values())
    spans = phoenix.wait_spans(project, len(recs) + tools_expected + 1)
    chats = [s for s in spans if s["name"].startswith("chat")]
    tools = [s for s in spans if s["name"].startswith("execute_tool")]
    sessions = [s for s in spans if s["name"].startswith("invoke_agent")]
    assert len(chats) == len(recs) and len(tools) == tools_expected
    assert len(sessions) == 1, [s["name"] for s in sessions]
    sess = sessions[0]
    assert sess["name"] == "invoke_agent Claude Code" and sess["span_kind"] == "AGENT"
    assert sess["attributes"]["gen_ai.agent.version"] == version
    assert sess["attributes"]["tracer.session.calls"] == len(recs)
    assert sess["attributes"]["tracer.session.subagents"] == 1
    assert all(s["context"]["trace_id"] == sess["context"]["trace_id"] for s in spans)
    by_rid = {(s["attributes"].get("http.response.header.request-id") or [None])[0]: s for s in chats}
    chat_of = {}
    for rec in recs:
        m = served[rec["response"]["headers"]["x-mock-record-id"]]
        span = by_rid[rec["response"]["headers"]["request-id"]]
        exp = _expected(m)
        _check_chat_span(span, exp, mock.port)
        _span_times_match(span, rec)
        assert span["attributes"]["user_agent.original"].startswith(f"claude-cli/{version}")
        assert span["attributes"]["metadata.claude_code.version"] == version
        assert span["attributes"]["metadata.process.pid"] == rec["tracer"]["pid"]
        assert span["attributes"]["metadata.process.command"] == cmd[0]
        if content:      # the arguments carry the prompt: content
            assert span["attributes"]["metadata.process.command_line"].endswith(prompt + " --allowedTools Bash,Task,Agent")
        else:
            assert "metadata.process.command_line" not in span["attributes"]
        for use in exp["tool_uses"]:
            chat_of[use["id"]] = (span, use, rec)
    result_of = {}
    for rec in recs:
        last = [m for m in rec["request"]["body"]["messages"] if m["role"] == "user"][-1]
        for b in last["content"] if isinstance(last["content"], list) else []:
            if b.get("type") == "tool_result":
                result_of.setdefault(b["tool_use_id"], rec)
    # tool spans: ids, names, timing, parents
    agent_span = None
    for t in tools:
        a = t["attributes"]
        assert t["span_kind"] == "TOOL"
        span, use, rec = chat_of[a["gen_ai.tool.call.id"]]
        assert t["name"] == f"execute_tool {use['name']}" and a["gen_ai.tool.name"] == use["name"]
        assert a["gen_ai.operation.name"] == "execute_tool"
        assert t["parent_id"] == span["parent_id"], "a tool call is a sibling of the call that asked for it"
        assert t["start_time"] == span["end_time"]
        assert a["tracer.tool.result_seen"] is True and t["status_code"] == "UNSET"
        carrier = result_of[a["gen_ai.tool.call.id"]]      # the request that brought the result back
        assert t["end_time"] == by_rid[carrier["response"]["headers"]["request-id"]]["start_time"]
        if use["name"] in ("Task", "Agent"):
            agent_span = t
            assert a["tracer.subagent.type"] == "general-purpose"
    assert agent_span is not None and agent_span["parent_id"] == sess["context"]["span_id"]
    # the subagent's calls and its Bash call hang under the Task/Agent span
    under_agent = [s for s in spans if s["parent_id"] == agent_span["context"]["span_id"]]
    assert {s["name"].split()[0] for s in under_agent} == {"chat", "execute_tool"}
    assert all(s["attributes"].get("tracer.thread.kind") == "subagent" for s in under_agent if s["name"].startswith("chat"))
    bash = [s for s in under_agent if s["name"] == "execute_tool Bash"]
    assert len(bash) == 1
    main = [s for s in chats if s["parent_id"] == sess["context"]["span_id"]
            and s["attributes"]["tracer.thread.kind"] == "main"]
    assert main
    if content:
        assert bash[0]["attributes"]["gen_ai.tool.call.result"].strip() == "hi"
        assert json.loads(bash[0]["attributes"]["gen_ai.tool.call.arguments"])["command"] == "echo hi"
        assert sess["attributes"]["input.value"] == prompt
        assert "The subagent reported" in sess["attributes"]["output.value"]
        last = max(main, key=lambda s: s["start_time"])
        assert "The subagent reported" in last["attributes"]["output.value"]
        msgs = json.loads(last["attributes"]["gen_ai.input.messages"])
        assert any(p.get("type") == "tool_call_response" for m in msgs for p in m["parts"])
        assert any(k.startswith("llm.input_messages.") for k in last["attributes"])
    else:
        _no_content(spans, [prompt, "echo hi", "The subagent reported"])
    phoenix_proc_ok(phoenix)


def _tree(spans: list[dict]) -> list:
    """Spans without ids: name, kind, status, times, attributes (less the process-dependent metadata),
    and the path of parent names; sorted."""
    ids = _by_id(spans)
    out = []
    for s in spans:
        path, p = [], s["parent_id"]
        while p in ids:
            path.append(ids[p]["name"])
            p = ids[p]["parent_id"]
        # the process' executable, command and owner come from the live process, not from the log
        attrs = {k: v for k, v in s["attributes"].items()
                 if not k.startswith("metadata.process.") and k != "user.id"}
        attrs["metadata.process.pid"] = s["attributes"].get("metadata.process.pid")
        out.append((s["name"], s["span_kind"], s["status_code"], s["start_time"], s["end_time"],
                    json.dumps(attrs, sort_keys=True), tuple(path)))
    return sorted(out)


@pytest.mark.parametrize("kind", ["native", "node"])
def test_export_otlp_gives_the_same_spans(phoenix, tmp_path, kind):
    """`tracer export otlp` of the log written during the live run sends the same spans (same names,
    attributes, times, parent structure; only ids differ)."""
    if kind not in _CLAUDE_LOGS:
        pytest.skip("the live Claude Code test did not run")
    log_path, live_project, n = _CLAUDE_LOGS[kind]
    live = phoenix.spans(live_project)
    project = _project()
    env = _otel_env(dict(os.environ), project)
    args = ["export", "otlp", str(log_path), "--endpoint", phoenix.endpoint] + (["--content"] if kind == "native" else [])
    p = subprocess.run(tracer_cmd(*args), env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert f"{len(live)} of {len(live)} spans exported" in p.stderr
    exported = phoenix.wait_spans(project, len(live))
    a, b = _tree(exported), _tree(live)
    for x, y in zip(a, b):
        if x != y:
            ax, ay = json.loads(x[5]), json.loads(y[5])
            diff = {k: (ax.get(k), ay.get(k)) for k in set(ax) | set(ay) if ax.get(k) != ay.get(k)}
            raise AssertionError(f"{x[0]} differs: {x[:5]} vs {y[:5]}, {x[6]} vs {y[6]}: {str(diff)[:2000]}")
    assert a == b


class _StallingServer:
    """Accepts connections, reads, never answers (until closed)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.accepted = 0
        self._stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            self.conns.append(c)

    def close(self):
        self._stop = True
        self.t.join(2)
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.mark.parametrize("endpoint_kind", ["refused", "stalling"])
def test_dead_or_stalling_endpoint(mock, tmp_path, endpoint_kind):
    """An endpoint that refuses connections or accepts and never answers: the log is complete and exact,
    the summary counts every span as undelivered, and tracer exits within its shutdown timeout."""
    stall = None
    if endpoint_kind == "refused":
        port = _free_port()       # nothing listens there
    else:
        stall = _StallingServer()
        port = stall.port
    try:
        env = {k: v for k, v in client_env(mock).items() if not k.startswith("OTEL_")}
        t_client = time.monotonic()
        cp = subprocess.run(py_client(mock, "--stream", "--json", "--count", "2"), env=env, capture_output=True,
                            timeout=60)
        untraced = time.monotonic() - t_client
        assert cp.returncode == 0
        p, wall = _run(py_client(mock, "--stream", "--json", "--count", "2"), tmp_path / "log", env,
                       "--otlp-endpoint", f"http://127.0.0.1:{port}", "--otlp-shutdown-timeout", "2")
        assert p.returncode == 0, p.stderr[-2000:]
        recs = read_log(tmp_path / "log")
        assert len(recs) == 4
        for r in recs:
            assert_pair_matches(mock, r)
        assert "losses: OTLP spans undelivered: 6" in p.stderr, p.stderr   # 4 calls + 2 sessions
        assert "0 of 6 spans exported" in p.stderr
        # bounded: the 2 s shutdown timeout plus the exporter process' grace, beyond the traced run itself
        assert wall < untraced + 2 + 2 + 8, (wall, untraced, p.stderr)
        if stall is not None:
            assert stall.accepted >= 1
        else:
            assert "Connection refused" in p.stderr
    finally:
        if stall is not None:
            stall.close()


def test_two_hosts_in_one_phoenix(phoenix, mock, tmp_path):
    """Two tracer runs with different OTEL_RESOURCE_ATTRIBUTES (two "hosts") land in one Phoenix project
    (chosen with openinference.project.name) and can be told apart; OTEL_SERVICE_NAME overrides the
    service name."""
    project = _project()
    runs = {}
    for host in ("laptop-a", "ci-runner-7"):
        env = {k: v for k, v in client_env(mock).items() if not k.startswith("OTEL_")}
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=phoenix.endpoint, OTEL_SERVICE_NAME="claude-fleet",
                   OTEL_RESOURCE_ATTRIBUTES=f"host.name={host},openinference.project.name={project},team=infra")
        p, _ = _run(py_client(mock, "--stream"), tmp_path / host, env)
        assert p.returncode == 0, p.stderr
        assert "from OTEL_EXPORTER_OTLP_ENDPOINT" in p.stderr
        runs[host] = read_log(tmp_path / host)[0]
    spans = phoenix.wait_spans(project, 4)
    assert len(spans) == 4
    hosts = {}
    for s in spans:
        a = s["attributes"]
        assert a["metadata.service.name"] == "claude-fleet"
        assert a["metadata.team"] == "infra"
        hosts.setdefault(a["metadata.host.name"], []).append(s)
    assert sorted(hosts) == ["ci-runner-7", "laptop-a"]
    for host, ss in hosts.items():
        assert {s["attributes"]["metadata.process.pid"] for s in ss} == {runs[host]["tracer"]["pid"]}
        assert len({s["context"]["trace_id"] for s in ss}) == 1


def test_attach_under_sudo_exports_as_the_invoking_user(phoenix, mock, tmp_path, user_dir):
    """`sudo tracer attach` with the endpoint and headers from the (preserved) OTEL_* environment: the
    exporter process runs as the invoking user (SUDO_UID), not root; the spans name the attached
    process' executable."""
    go = tmp_path / "go"
    client = subprocess.Popen(py_client(mock, "--stream", "--go-file", str(go)), env=client_env(mock),
                              stdout=subprocess.PIPE)
    project = _project()
    env = _otel_env(dict(os.environ), project, OTEL_EXPORTER_OTLP_ENDPOINT=phoenix.endpoint,
                    SUDO_UID="65534", SUDO_GID="65534", SUDO_USER="nobody")
    out = user_dir() / "log"           # the log is created as the invoking user, in a directory of theirs
    t = None
    try:
        t, _s, lines = start_attach(client.pid, out, "--allow-other-users", env=env)   # the client is root's
        assert any("exporting spans to" in line for line in lines), lines
        go.touch()
        assert client.wait(60) == 0
        rest = t.communicate(timeout=60)[1]
    finally:              # a failed assertion must not leave the tracer or the client behind
        for p in (client, t):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)
    assert t.returncode == 0, rest
    assert "2 of 2 spans exported" in rest, rest
    spans = phoenix.wait_spans(project, 2)
    chat = next(s for s in spans if s["name"].startswith("chat"))
    a = chat["attributes"]
    assert a["metadata.process.pid"] == client.pid
    assert a["metadata.process.executable.name"].startswith("python3")
    assert a["metadata.process.owner"] == "root" and a["user.id"] == "root"
    assert "; sent as uid 65534" in rest, rest
