"""What the live view (`--follow`, `tracer tail`) costs the capture.

1. Pipeline (no kernel): the parsing stage fed the ring records of Claude-Code-like pairs (50 KB request,
   200 SSE deltas read one by one), interleaved rounds, medians:
     A  no live feed;
     B  the feed attached but no view connected (the parsers' progress hook is None);
     C  a real view process (`tracer tail`, lines to /dev/null) connected through the feed.
   Printed: CPU of the parsing thread per pair (what the capture waits behind), of the whole tracing
   process per pair (parsing + the feed's sender thread), and of the view process per pair.
2. End to end (real eBPF, root): `tracer attach` on a Claude-Code-like load (streaming requests at a
   fixed rate, 200 SSE events each), without and with --follow (view output to /dev/null), interleaved:
   tracer CPU (% of one core), the view's CPU, client-side request time p50/p99, losses.

    .venv/bin/python bench/live_feed.py [--pairs 300] [--rounds 5] [--seconds 20] [--no-e2e]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import ASYNC_CLIENT, cpu_seconds, machine, pct, proc_children, tracer_cmd  # noqa: E402

import orjson  # noqa: E402

from tracer.capture import event as ev  # noqa: E402
from tracer.capture.pipeline import Capture  # noqa: E402
from tracer.live.feed import LiveFeed  # noqa: E402
from tracer.live.launch import BOOT  # noqa: E402
from tracer.sinks.record import Clock, Filter, build_record  # noqa: E402
from tracer.testing.helpers import record  # noqa: E402


# ------------------------------------------------------------------------------------ 1. pipeline

def pair_records(n_pairs: int) -> list[bytes]:
    off = {ev.DIR_WRITE: 0, ev.DIR_READ: 0}
    t = [1_000_000_000]
    out = []

    def put(d, data):
        out.append(record(data, conn=0x1000, pid=4242, dir=d, stream_off=off[d], ts_ns=t[0], comm="claude"))
        off[d] += len(data)
        t[0] += 1_000_000
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": "x" * 500} for i in range(100)]
    for i in range(n_pairs):
        body = orjson.dumps({"model": "claude-sonnet-4-5", "stream": True, "max_tokens": 1024,
                             "messages": history + [{"role": "user", "content": f"turn {i}"}]})
        put(ev.DIR_WRITE, b"POST /v1/messages HTTP/1.1\r\nHost: api.anthropic.com\r\nContent-Type: "
                          b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        put(ev.DIR_READ, b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        evs = [b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","model":"claude-sonnet-4-5",'
               b'"usage":{"input_tokens":9,"output_tokens":1}}}\n\n',
               b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":'
               b'{"type":"text","text":""}}\n\n']
        evs += [b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":'
                b'{"type":"text_delta","text":"word %d "}}\n\n' % k for k in range(200)]
        evs += [b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
                b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
                b'"usage":{"output_tokens":400}}\n\n', b'event: message_stop\ndata: {"type":"message_stop"}\n\n']
        for e in evs:
            put(ev.DIR_READ, b"%x\r\n%s\r\n" % (len(e), e))
        put(ev.DIR_READ, b"0\r\n\r\n")
    return out


def start_view(tmp: Path) -> tuple[subprocess.Popen, socket.socket]:
    log = tmp / "empty.jsonl"
    log.write_bytes(b"")
    a, b = socket.socketpair()
    fd = os.open(log, os.O_RDONLY)
    paths = [str(Path(__file__).resolve().parents[1])] + [os.path.abspath(p) for p in sys.path if p]
    p = subprocess.Popen([sys.executable, "-I", "-S", "-c", BOOT, json.dumps(paths), "tail", "--log-fd", str(fd),
                          "--feed-fd", str(b.fileno()), "--view", "lines", "--last", "0"],
                         pass_fds=(fd, b.fileno()), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(fd)
    b.close()
    return p, a


def pipeline_round(records: list[bytes], mode: str, tmp: Path) -> tuple[float, float, float]:
    clock = Clock()
    flt = Filter()
    logged = []
    cap = Capture(lambda ex: logged.append(build_record(ex, clock)), deferred=False)
    feed = view = None
    if mode != "A":
        feed = LiveFeed(clock=clock, wants=flt.wants)
        feed.attach(cap)
        feed.start()
    if mode == "C":
        view, sock = start_view(tmp)
        feed.add_client(sock)
        time.sleep(0.5)                                     # the view's imports
    c0 = _children_cpu()
    p0, t0 = time.process_time(), time.thread_time()
    for r in records:
        cap.feed(r)
    cap.close_all("end")
    t1 = time.thread_time()
    if feed is not None:
        feed.close(timeout=30)                              # everything sent, the view told to end
    p1 = time.process_time()
    if view is not None:
        view.wait(60)                                       # its CPU counts once it is waited for
    return t1 - t0, p1 - p0, _children_cpu() - c0


def _children_cpu() -> float:
    r = os.times()
    return r.children_user + r.children_system


def pipeline(n_pairs: int, rounds: int) -> None:
    records = pair_records(n_pairs)
    mb = sum(len(r) for r in records) / 1e6
    res = {m: [] for m in "ABC"}
    with tempfile.TemporaryDirectory(prefix="tracer-bench-live-") as d:
        for i in range(rounds):
            for m in ("ABC" if i % 2 == 0 else "CBA"):
                res[m].append(pipeline_round(records, m, Path(d)))
    med = {m: [statistics.median(x[k] for x in res[m]) * 1e6 / n_pairs for k in range(3)] for m in res}
    print(f"pipeline: {n_pairs} Claude-like pairs ({mb:.1f} MB of ring records: 50 KB request, 200 SSE reads), "
          f"{rounds} interleaved rounds, medians, CPU µs per pair:")
    names = {"A": "no live feed", "B": "feed, no view connected", "C": "feed + a view process"}
    for m in "ABC":
        parse, proc, view = med[m]
        print(f"  {m} {names[m]:<26} parsing thread {parse:8.1f}  ({parse / med['A'][0]:.2f}x A)   "
              f"tracing process {proc:8.1f}  ({proc / med['A'][1]:.2f}x A)" + (f"   view process {view:8.1f}" if m == "C" else ""))


# ------------------------------------------------------------------------------------ 2. end to end

def _wait_tracing(errfile: Path, t: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "tracing" in errfile.read_text():
            return
        if t.poll() is not None:
            raise RuntimeError(errfile.read_text())
        time.sleep(0.05)
    raise RuntimeError("tracer did not start")


def _view_pid(tracer_pid: int) -> int | None:
    for pid in proc_children().get(tracer_pid, []):
        try:
            if b"tail" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return None


def e2e_round(srv, tmp: Path, follow: bool, seconds: int, tag: str) -> dict:
    go = tmp / f"go-{tag}"
    env = dict(os.environ, ANTHROPIC_BASE_URL=srv.url)
    client = subprocess.Popen([sys.executable, str(ASYNC_CLIENT), srv.url, str(srv.ca_path), "--go-file", str(go),
                               "--n", str(seconds * 2), "--rate", "2", "--concurrency", "4", "--stream",
                               "--prompt-bytes", "50000", "--header", "x-mock-deltas: 200",
                               "--header", "x-mock-delay-ms: 2"], stdout=subprocess.PIPE, text=True, env=env)
    errfile = tmp / f"err-{tag}"
    summ = tmp / f"summary-{tag}.json"
    with open(errfile, "w") as ef:
        t = subprocess.Popen(tracer_cmd("attach", "--pid", str(client.pid), "-o", str(tmp / f"log-{tag}"),
                                        "--no-html", "--summary-json", str(summ), *(["--follow"] if follow else ["--quiet"])),
                             stdout=subprocess.DEVNULL, stderr=ef, env=env)
    _wait_tracing(errfile, t)
    time.sleep(0.5)
    vp = _view_pid(t.pid) if follow else None
    c0, v0, w0 = cpu_seconds(t.pid), (cpu_seconds(vp) if vp else 0.0), time.monotonic()
    go.touch()
    out, _ = client.communicate(timeout=seconds * 5 + 120)
    c1, v1, w1 = cpu_seconds(t.pid), (cpu_seconds(vp) if vp else 0.0), time.monotonic()
    t.send_signal(2)
    t.wait(120)
    lines = [json.loads(l) for l in out.splitlines() if l.startswith("{") and '"t1"' in l]
    lat = [(r["t1"] - r["t0"]) * 1000 for r in lines if r.get("t1") and not r.get("error")]
    s = json.loads(summ.read_text())
    losses = {k: s[k] for k in ("ring_drops_events", "gap_bytes", "records_lost") if s.get(k)}
    return {"cpu": (c1 - c0) / (w1 - w0), "view": (v1 - v0) / (w1 - w0), "p50": pct(lat, 50), "p99": pct(lat, 99),
            "pairs": s["pairs_logged"], "n": len(lat), "losses": losses}


def e2e(seconds: int, rounds: int) -> None:
    from tracer.mock import MockServerProcess
    res = {False: [], True: []}
    with MockServerProcess() as srv, tempfile.TemporaryDirectory(prefix="tracer-bench-live-e2e-") as d:
        for i in range(rounds):
            for follow in ((False, True) if i % 2 == 0 else (True, False)):
                res[follow].append(e2e_round(srv, Path(d), follow, seconds, f"{i}-{int(follow)}"))
    print(f"end to end: tracer attach on {seconds * 2} streaming requests at 2/s (50 KB request, 200 SSE "
          f"events, 4 concurrent), {rounds} rounds each, interleaved, medians:")
    for follow in (False, True):
        rs = res[follow]
        med = {k: statistics.median(r[k] for r in rs) for k in ("cpu", "view", "p50", "p99")}
        print(f"  {'with --follow   ' if follow else 'without --follow'} tracer CPU {100 * med['cpu']:5.2f} % of a core"
              + (f", view process {100 * med['view']:5.2f} %" if follow else "")
              + f"; request time p50 {med['p50']:.0f} ms p99 {med['p99']:.0f} ms; "
              f"pairs logged {[r['pairs'] for r in rs]} of {[r['n'] for r in rs]}; losses {[r['losses'] for r in rs]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--e2e-rounds", type=int, default=2)
    ap.add_argument("--no-e2e", action="store_true")
    args = ap.parse_args()
    print(machine())
    pipeline(args.pairs, args.rounds)
    if not args.no_e2e:
        if os.geteuid() != 0:
            print("end to end: skipped (needs root for eBPF)")
        else:
            e2e(args.seconds, args.e2e_rounds)
    print(machine())


if __name__ == "__main__":
    main()
