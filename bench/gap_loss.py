"""What a ring-buffer drop costs: one large SSE stream (chunked HTTP/1.1, 60 KB text deltas by default)
at full loopback speed under `tracer run`, CPython (httpx) and curl clients. Per run: the bytes the
ring dropped, the bytes that went missing from the logged body, the bytes skipped to resynchronise,
and the holes in the record. The goal: when drops happen, the body loses the dropped bytes and at most
the rest of one chunk per hole -- never the rest of the stream.

    .venv/bin/python bench/gap_loss.py [--mb 100] [--delta-kb 60] [--runs 3] [--tracer-arg=--ring-buffer-mb=1]

Drops depend on load: with the default ring a quiet machine may drop nothing (then there is nothing
to measure and the run says so); --tracer-arg=--ring-buffer-mb=1 makes them likely anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import ASYNC_CLIENT, ROOT, logs, machine, tracer_cmd  # noqa: E402

import orjson  # noqa: E402

from tracer.mock import MockServerProcess  # noqa: E402


def loss_figures(stderr: str) -> dict[str, int]:
    out = {}
    for line in stderr.splitlines():
        if line.startswith("losses:"):
            for item in line[len("losses:"):].split(";"):
                m = re.match(r"\s*(.+?): (\d+)$", item)
                if m:
                    out[m.group(1)] = int(m.group(2))
    return out


def client_cmd(kind: str, srv, size: int, delta: int) -> list[str]:
    knobs = [f"x-mock-text-bytes: {size}", f"x-mock-delta-size: {delta}"]
    if kind == "python":
        cmd = [sys.executable, str(ASYNC_CLIENT), srv.url, str(srv.ca_path), "--n", "1", "--stream"]
        for k in knobs:
            cmd += ["--header", k]
        return cmd
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": True,
                       "messages": [{"role": "user", "content": "gap bench"}]})
    cmd = ["curl", "-sS", "--http1.1", "--cacert", str(srv.ca_path), "-o", "/dev/null",
           "-H", "content-type: application/json", "-d", body]
    for k in knobs:
        cmd += ["-H", k]
    return cmd + [f"{srv.url}/v1/messages"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--delta-kb", type=int, default=60)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clients", default="python,curl")
    ap.add_argument("--tracer-arg", action="append", default=[])
    args = ap.parse_args()
    size, delta = args.mb * 1_000_000, args.delta_kb * 1000
    print(machine())
    print(f"stream: {args.mb} MB of text in {args.delta_kb} KB deltas, chunked SSE; tracer options: "
          f"{' '.join(args.tracer_arg) or '(defaults)'}")
    with MockServerProcess() as srv, tempfile.TemporaryDirectory(prefix="tracer-bench-gap-") as tmpd:
        env = dict(os.environ, ANTHROPIC_BASE_URL=srv.url)
        for kind in args.clients.split(","):
            for run in range(args.runs):
                out = Path(tmpd) / f"{kind}-{run}"
                p = subprocess.run(tracer_cmd("run", "-o", str(out), "--quiet", "--no-html", *args.tracer_arg,
                                              "--", *client_cmd(kind, srv, size, delta)),
                                   capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=1800)
                f = loss_figures(p.stderr)
                sent = srv.records()[-1]["response_body"]["length"]
                lines = logs(out)[0].read_bytes().splitlines() if logs(out) else []
                if len(lines) != 1:
                    print(f"{kind} #{run + 1}: expected one record, got {len(lines)}; exit {p.returncode}\n"
                          f"{p.stderr[-1500:]}")
                    continue
                rec = orjson.loads(lines[0])
                got = len((rec["response"] or {}).get("body_raw", "").encode())
                holes = rec["tracer"].get("response_holes") or []
                dropped = f.get("ring-buffer drops (bytes)", 0)
                missing = sent - got
                skipped = f.get("bytes skipped to resynchronise", 0)
                ratio = f"{missing / dropped:.2f}x the dropped bytes" if dropped else "no drops"
                print(f"{kind} #{run + 1}: ring drops {f.get('ring-buffer drops (events)', 0)} records / "
                      f"{dropped / 1e6:.2f} MB; body {got / 1e6:.2f} of {sent / 1e6:.2f} MB, missing "
                      f"{missing / 1e6:.2f} MB ({ratio}); skipped {skipped / 1e3:.1f} kB in {len(holes)} "
                      f"hole(s), at most {max((h[2] for h in holes), default=0) / 1e3:.1f} kB per hole; "
                      f"{(got - holes[-1][0]) / 1e6 if holes else 0:.2f} MB kept after the last hole")


if __name__ == "__main__":
    main()
