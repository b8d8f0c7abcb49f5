"""The end-of-run viewer build and `tracer html` on big logs: time and memory as the user sees them.

Part 1 (`--run`): `tracer run` (default options, viewer on) of a CPython client that receives one 100 MB
streamed answer from the mock server (`x-mock-text-bytes: 100000000`), in 1 KB and in 60 KB text
deltas. Prints whether the logged body and the answer rebuilt from the log are byte-exact (sha256 vs the
mock's record and vs the text the mock generated), seconds from the command's exit to tracer's exit
(issue 11: <= 10 s), tracer's VmHWM and the peak RSS of tracer plus any process it started other than
the traced command (<= 100 MB), and what the page shows of the answer.

Part 2 (`--html`): `tracer html` on 1,000-pair logs (tracer/viewer/synth.py: ten Claude-Code-like
sessions, and 1,000 distinct ~100 KB prompts): VmHWM and seconds (<= 150 MB, <= 5 s).

    .venv/bin/python bench/viewer_build.py [--run] [--html] [--delta 1024 --delta 60000] [--mb 100]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import PY_CLIENT, ROOT, logs, machine, proc_children, tracer_cmd  # noqa: E402

from tracer.mock import MockServerProcess  # noqa: E402
from tracer.mock.app import text_pieces  # noqa: E402
from tracer.mock.knobs import Knobs  # noqa: E402

REPLY = "Here is the long answer you asked for."


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmHWM", "VmRSS"):
                    out[k] = int(v.split()[0])
                elif k == "State":
                    out["zombie"] = int(v.strip().startswith("Z"))
    except OSError:
        pass
    return out


class RunWatch:
    """Polls a tracer process: its VmHWM, the RSS of tracer + its own helper processes (everything it
    started except the traced command and that command's descendants), and when the command exited."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.pid = pid
        self.hwm_kb = 0
        self.peak_sum_kb = 0
        self.helpers_seen: set[int] = set()
        self.command: int | None = None
        self.command_exit: float | None = None
        self.end_peak_kb = 0          # tracer + helpers after the command exited: drain and viewer build
        self.end_rss0_kb = 0          # tracer's RSS when the command exited
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._t.start()

    def _run(self, interval):
        while not self._stop.is_set():
            st = _status(self.pid)
            if not st:
                return
            self.hwm_kb = max(self.hwm_kb, st.get("VmHWM", 0))
            kids = proc_children()
            direct = kids.get(self.pid, [])
            if self.command is None and direct:
                self.command = min(direct)
            if self.command is not None and self.command_exit is None:
                cs = _status(self.command)
                if not cs or cs.get("zombie"):
                    self.command_exit = time.monotonic()
            total = st.get("VmRSS", 0)
            stack = [p for p in direct if p != self.command]
            while stack:
                p = stack.pop()
                self.helpers_seen.add(p)
                total += _status(p).get("VmRSS", 0)
                stack.extend(kids.get(p, []))
            self.peak_sum_kb = max(self.peak_sum_kb, total)
            if self.command_exit is not None:
                if not self.end_rss0_kb:
                    self.end_rss0_kb = st.get("VmRSS", 0)
                self.end_peak_kb = max(self.end_peak_kb, total)
            time.sleep(interval)

    def stop(self):
        self._stop.set()
        self._t.join(2)


def expected_text_sha(size: int, delta: int) -> str:
    h = hashlib.sha256()
    for piece in text_pieces(REPLY, Knobs(text=REPLY, text_bytes=size, delta_size=delta)):
        h.update(piece.encode())
    return h.hexdigest()


def run_case(srv, size: int, delta: int, tmp: Path) -> None:
    from tracer.viewer.analyze import analyze_call
    from tracer.viewer.logs import BigString, iter_lines
    from tracer.protocols.sse import reconstruct

    out = tmp / f"log-{delta}"
    cmd = tracer_cmd("run", "-o", str(out), "--", "/usr/bin/python3", str(PY_CLIENT), srv.url, str(srv.ca_path),
                     "--stream", "--header", f"x-mock-text-bytes: {size}", "--header", f"x-mock-delta-size: {delta}",
                     "--header", f"x-mock-text: {REPLY}")
    t0 = time.monotonic()
    env = dict(os.environ, ANTHROPIC_BASE_URL=srv.url)   # the API host tracer logs by default
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT), env=env)
    w = RunWatch(p.pid)
    stdout, stderr = p.communicate(timeout=1800)
    t_end = time.monotonic()
    w.stop()
    lf = logs(out)
    page = lf[0].with_suffix(".html") if lf else None
    print(f"-- {size / 1e6:.0f} MB answer in {delta:,}-byte deltas: tracer exit {p.returncode}, "
          f"command ran {((w.command_exit or t_end) - t0):.1f} s")
    if not lf:
        print("   no log!\n" + stderr[-2000:])
        return
    rec_m = srv.records()[-1]
    sha_body = hashlib.sha256()
    text_sha = hashlib.sha256()
    r = None
    for ln in iter_lines(lf[0]):
        raw = ln.record["response"]["body_raw"]
        pieces = raw.pieces() if isinstance(raw, BigString) else [raw]
        chunks = (s.encode() for s in pieces)

        def hashing(chunks):
            for c in chunks:
                sha_body.update(c)
                yield c
        r = reconstruct(hashing(chunks), max_field_chars=0,
                        on_text=lambda i, f, piece: f == "text" and text_sha.update(piece.encode()))
        break
    exact_body = sha_body.hexdigest() == rec_m["response_body"]["sha256"]
    exact_text = text_sha.hexdigest() == expected_text_sha(size, delta)
    after = t_end - w.command_exit if w.command_exit else float("nan")
    print(f"   logged body {rec_m['response_body']['length'] / 1e6:.1f} MB sha256 "
          f"{'== mock' if exact_body else '!= mock'}; rebuilt answer from the log "
          f"{'== mock text' if exact_text else '!= mock text'}"
          + (f" ({r.events:,} events, complete {r.complete})" if r else " (no record)"))
    build = (page.stat().st_mtime - lf[0].stat().st_mtime) if page and page.exists() else float("nan")
    print(f"   seconds from the command's exit to tracer's exit: {after:.1f} (target <= 10); of which the "
          f"viewer build ~{build:.1f} (page written - log last written), the rest draining the capture")
    print(f"   memory: tracer VmHWM {w.hwm_kb / 1024:.0f} MB; peak RSS tracer + helpers "
          f"{w.peak_sum_kb / 1024:.0f} MB ({len(w.helpers_seen)} helper process(es)) (target <= 100 MB); "
          f"after the command's exit (drain + viewer build): RSS {w.end_rss0_kb / 1024:.0f} MB -> peak "
          f"{w.end_peak_kb / 1024:.0f} MB")
    if page and page.exists():
        html = page.read_bytes()
        m = re.search(rb"\[\xe2\x80\xa6 ([^\]]{0,60}) more, not in this page", html)
        print(f"   page {page.stat().st_size / 1e6:.1f} MB; cut marker: {m.group(1).decode() if m else 'none'}")
    else:
        print("   no page written!")
    last = [l for l in stderr.splitlines() if l.startswith(("pairs:", "losses:", "html:", "tracer:"))]
    print("   " + "\n   ".join(last[-6:]))


def html_case(tmp: Path, shape: str) -> None:
    from tracer.viewer.synth import big_log, unique_log, write_jsonl

    log = tmp / f"{shape}.jsonl"
    recs = big_log(1000, 100 << 20) if shape == "sessions" else unique_log(1000, 100 << 20)
    write_jsonl(recs, log)
    del recs
    t0 = time.monotonic()
    p = subprocess.Popen(tracer_cmd("html", str(log), "-o", str(tmp / f"{shape}.html")), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=str(ROOT))
    w = RunWatch(p.pid, 0.01)
    _, err = p.communicate(timeout=600)
    dt = time.monotonic() - t0
    w.stop()
    # VmHWM from wait4's rusage is exact; the poll above can miss a short peak
    print(f"-- tracer html, 1,000 pairs, {shape}: log {log.stat().st_size / 1e6:.0f} MB -> page "
          f"{(tmp / f'{shape}.html').stat().st_size / 1e6:.1f} MB in {dt:.2f} s (target <= 5 s); "
          f"VmHWM {w.hwm_kb / 1024:.0f} MB (target <= 150 MB); exit {p.returncode}"
          + (f"; stderr: {err.strip()[:200]}" if err.strip() else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="store_true")
    ap.add_argument("--html", action="store_true")
    ap.add_argument("--delta", type=int, action="append")
    ap.add_argument("--mb", type=int, default=100)
    args = ap.parse_args()
    if not args.run and not args.html:
        args.run = args.html = True
    print(machine())
    with tempfile.TemporaryDirectory(prefix="tracer-bench-vb-") as tmpd:
        tmp = Path(tmpd)
        if args.run:
            with MockServerProcess() as srv:
                for d in args.delta or [1024, 60000]:
                    run_case(srv, args.mb * 1_000_000, d, tmp)
        if args.html:
            for shape in ("sessions", "unique"):
                html_case(tmp, shape)
    print(machine())


if __name__ == "__main__":
    main()
