"""HTML sink: turn a JSONL log into the self-contained viewer page."""

from __future__ import annotations

import os
from pathlib import Path

from tracer.sinks.jsonl import _owner_ids
from tracer.viewer.page import build_page_from_log


def default_html_path(log_path: str | Path) -> Path:
    p = Path(log_path)
    return p.with_suffix(".html") if p.suffix else p.with_name(p.name + ".html")


def write_html(log_path: str | Path, out_path: str | Path | None = None,
               warnings: list[str] | None = None) -> Path:
    """Write the viewer for ``log_path`` (ours or claude-trace's) and return the HTML file's path.

    Default output: the log's path with ``.html``. Written to a temporary name and renamed, so a
    reader never sees half a page. Built in two streaming passes over the log (bounded memory); lines
    that cannot be read or shown are skipped, listed in the page and appended to ``warnings``.
    """
    log_path = Path(log_path)
    out = Path(out_path) if out_path is not None else default_html_path(log_path)
    warnings = warnings if warnings is not None else []
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        # private like the log (0600, the invoking user's under sudo), never through a planted link
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        uid, gid = _owner_ids()
        if uid is not None:
            os.fchown(fd, uid, gid if gid is not None else -1)
        with os.fdopen(fd, "wb", buffering=1 << 20) as f:
            build_page_from_log(log_path, f, source=str(log_path), warnings=warnings)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
