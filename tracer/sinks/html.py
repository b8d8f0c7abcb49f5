"""HTML sink: turn a JSONL log into the self-contained viewer page."""

from __future__ import annotations

from pathlib import Path

from tracer.invoker import InvokingUser, as_user
from tracer.userfiles import UserDir
from tracer.viewer.page import build_page_from_log


def default_html_path(log_path: str | Path) -> Path:
    p = Path(log_path)
    return p.with_suffix(".html") if p.suffix else p.with_name(p.name + ".html")


def write_html(log_path: str | Path, out_path: str | Path | None = None,
               warnings: list[str] | None = None, *, user: InvokingUser | None = None) -> Path:
    """Write the viewer for ``log_path`` (ours or claude-trace's) and return the HTML file's path.

    Default output: the log's path with ``.html``. Built in two streaming passes over the log (bounded
    memory); lines that cannot be read or shown are skipped, listed in the page and appended to
    ``warnings``. The log is read, and the page written, as the invoking user (tracer/userfiles.py,
    all on this thread): 0600, in a directory of theirs, through a temporary name that is renamed, so
    a reader never sees half a page.
    """
    log_path = Path(log_path)
    out = Path(out_path) if out_path is not None else default_html_path(log_path)
    warnings = warnings if warnings is not None else []
    with as_user(user) as u, UserDir(out.parent, u) as d:
        d.write_atomic(out.name, writer=lambda f: build_page_from_log(log_path, f, source=str(log_path),
                                                                     warnings=warnings))
    return out
