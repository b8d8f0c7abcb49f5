#!/usr/bin/env python3
"""Run BoringSSL discovery over every native Claude Code release of a platform (or any package).

    .venv/bin/python bench/locate_releases.py [--platform x64|arm64|x64-musl|arm64-musl]
                                              [--from 2.1.110] [--to LATEST] [--keep 2.1.113,2.1.332]
                                              [--json OUT.json] [VERSION ...]
    .venv/bin/python bench/locate_releases.py --package @oven/bun-linux-aarch64 1.3.14

Discovery reads the binary's own architecture (ELF e_machine), so every platform runs on any host.

For each release: download (cached, tracer.testing.releases), evict the binary from the page cache
(fsync + POSIX_FADV_DONTNEED) so the first discovery is cold, run discovery without the build-id
cache, time a second (warm) run, and print one table row. Unpacked releases not listed in --keep
are deleted afterwards (they are 200-400 MB each). Exit status 1 when any release failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from elftools.elf.elffile import ELFFile  # noqa: E402

from tracer.probes.boringssl import analyze_path  # noqa: E402
from tracer.probes.locate import LocateError, build_id  # noqa: E402
from _util import machine  # noqa: E402
from tracer.testing import releases  # noqa: E402


def vkey(v: str):
    return tuple(int(x) if x.isdigit() else 0 for x in v.split("."))


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def one(package: str, version: str, keep: bool) -> dict:
    row = {"package": package, "version": version}
    was_cached = releases.is_cached(package, version)
    t = time.monotonic()
    try:
        prog = releases.fetch_npm_release(package, version)
    except releases.ReleaseError as e:
        row.update(status="download failed", error=str(e)[-300:])
        return row
    row["fetch_s"] = round(time.monotonic() - t, 2)
    row["size_mb"] = round(prog.stat().st_size / 1e6, 1)
    with open(prog, "rb") as f:
        row["build_id"] = build_id(ELFFile(f))
    evict(prog)
    try:
        t = time.monotonic()
        an = analyze_path(str(prog))
        row["cold_s"] = round(time.monotonic() - t, 3)
        t = time.monotonic()
        analyze_path(str(prog))
        row["warm_s"] = round(time.monotonic() - t, 3)
        if an is None:
            row.update(status="no boringssl")
        else:
            row.update(status="ok", SSL_read=hex(an.found["SSL_read"]),
                       SSL_write=hex(an.found["SSL_write"]),
                       ssl_read_impl=hex(an.internal.get("ssl_read_impl", 0)),
                       sites=len(an.sites), functions=len(an.functions))
    except LocateError as e:
        row.update(status="LocateError", error=str(e))
    finally:
        if not keep and not was_cached:
            releases.remove_npm_release(package, version)
    return row


def _span(xs: list[float]) -> str:
    xs = [float(x) for x in xs]
    if len(xs) == 1:
        return "%.2f" % xs[0]
    if len(xs) == 2:
        return "%.2f, %.2f" % tuple(xs)
    return "%.2f–%.2f" % (min(xs), max(xs))


def summarize(rows: list[dict]) -> str:
    """Markdown: one line per run of consecutive releases sharing a Bun runtime (build-id), then
    the totals (what BENCHMARKS.md shows)."""
    ok = [r for r in rows if r["status"] == "ok"]
    groups: list[list[dict]] = []
    for r in ok:
        if groups and groups[-1][-1]["build_id"] == r["build_id"]:
            groups[-1].append(r)
        else:
            groups.append([r])
    out = ["| releases | n | build-id | SSL_read | SSL_write | size MB | cold s | warm s |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for g in groups:
        vs = g[0]["version"] if len(g) == 1 else "%s – %s" % (g[0]["version"], g[-1]["version"])
        sizes = [r["size_mb"] for r in g]
        size = "%.0f" % sizes[0] if len(g) == 1 else "%.0f–%.0f" % (min(sizes), max(sizes))
        out.append("| %s | %d | `%s` | %s | %s | %s | %s | %s |" % (
            vs, len(g), g[0]["build_id"][:12], g[0]["SSL_read"], g[0]["SSL_write"], size,
            _span([r["cold_s"] for r in g]), _span([r["warm_s"] for r in g])))
    cold = sorted(r["cold_s"] for r in ok)
    out.append("")
    out.append("%d/%d located; %d runtimes (build-ids), %d address pairs; cold median %.2f s, p90 %.2f s, "
               "max %.2f s" % (len(ok), len(rows), len({r["build_id"] for r in ok}),
                               len({(r["SSL_read"], r["SSL_write"]) for r in ok}),
                               cold[len(cold) // 2] if cold else 0, cold[int(len(cold) * 0.9)] if cold else 0,
                               cold[-1] if cold else 0))
    for r in rows:
        if r["status"] != "ok":
            out.append("%s: %s %s" % (r["version"], r["status"], r.get("error", "")))
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("versions", nargs="*")
    ap.add_argument("--platform", default="x64", choices=releases.CLAUDE_CODE_PLATFORMS,
                    help="native Claude Code platform (default: %(default)s)")
    ap.add_argument("--package", default="", help="any npm package instead (e.g. @oven/bun-linux-x64)")
    ap.add_argument("--from", dest="vfrom", default="2.1.110")
    ap.add_argument("--to", dest="vto", default="")
    ap.add_argument("--keep", default="", help="comma-separated versions to keep unpacked")
    ap.add_argument("--json", dest="json_out", default="")
    ap.add_argument("--summarize", metavar="JSON", help="print the per-runtime table of an earlier --json run")
    args = ap.parse_args()
    if args.summarize:
        print(summarize(json.loads(Path(args.summarize).read_text())))
        return 0
    args.package = args.package or releases.claude_code_package(args.platform)
    print(machine())
    print("package: %s" % args.package, flush=True)
    versions = args.versions or [
        v for v in releases.npm_versions(args.package)
        if vkey(v) >= vkey(args.vfrom) and (not args.vto or vkey(v) <= vkey(args.vto))]
    versions.sort(key=vkey)
    keep = set(filter(None, args.keep.split(",")))
    rows = []
    print("| version | size MB | build-id | SSL_read | SSL_write | cold s | warm s | status |")
    print("|---|---|---|---|---|---|---|---|")
    for v in versions:
        row = one(args.package, v, v in keep)
        rows.append(row)
        print("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            v, row.get("size_mb", ""), row.get("build_id", "")[:12], row.get("SSL_read", ""),
            row.get("SSL_write", ""), row.get("cold_s", ""), row.get("warm_s", ""),
            row["status"] if row["status"] == "ok" else "%s: %s" % (row["status"], row.get("error", ""))),
            flush=True)
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(rows, indent=1))
    ok = [r for r in rows if r["status"] == "ok"]
    if ok:
        cold = sorted(r["cold_s"] for r in ok)
        print("\n%d/%d ok; cold discovery median %.2f s, max %.2f s" % (
            len(ok), len(rows), cold[len(cold) // 2], cold[-1]))
    print(machine())
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
