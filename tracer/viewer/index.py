"""``index.html`` for a log directory: every log with its sessions, models, calls, tokens and duration.

A plain static page (no script); every value from the logs is HTML-escaped.
"""

from __future__ import annotations

import datetime as _dt
import html
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from tracer.invoker import InvokingUser, as_user
from tracer.userfiles import UserDir
from tracer.viewer.analyze import analyze_log


@dataclass
class LogSummary:
    path: Path
    size: int
    mtime: float
    calls: int = 0
    sessions: list[dict] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    tokens: dict = field(default_factory=dict)
    start: float | None = None
    end: float | None = None
    warnings: int = 0
    html: Path | None = None
    error: str = ""

    @property
    def duration_ms(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        return (self.end - self.start) * 1000.0


def summarize_log(path: Path) -> LogSummary:
    st = path.stat()
    s = LogSummary(path=path, size=st.st_size, mtime=st.st_mtime)
    warnings: list[str] = []
    try:
        an, _lines = analyze_log(path, warnings)     # streamed: bounded memory for any log size
    except OSError as e:
        s.error = e.strerror or str(e)
        return s
    s.warnings = len(warnings)
    s.calls = len(an.calls)
    s.models = sorted({c.model for c in an.calls if c.model})
    s.tokens = {k: sum(getattr(c, a) for c in an.calls) for k, a in
                (("in", "input_tokens"), ("out", "output_tokens"), ("cr", "cache_read_tokens"),
                 ("cc", "cache_creation_tokens"))}
    starts = [c.t for c in an.calls if c.t is not None]
    ends = [c.t_end or c.t for c in an.calls if (c.t_end or c.t) is not None]
    s.start = min(starts) if starts else None
    s.end = max(ends) if ends else None
    for sess in an.sessions:
        t = sess.totals(an.calls)
        s.sessions.append({"id": sess.id, "title": an.threads[sess.root].title, "calls": t["calls"], "models": t["models"],
                           "in": t["in"], "out": t["out"], "cr": t["cr"], "cc": t["cc"],
                           "wall_ms": t["wall_ms"], "start": t["start"],
                           "subagents": sum(1 for tid in sess.threads if an.threads[tid].kind == "subagent")})
    return s


def _tok(n: int) -> str:
    if n < 1000:
        return str(n)
    if n < 1_000_000:
        return f"{n / 1000:.1f}k"
    return f"{n / 1e6:.2f}M"


def _dur(ms: float | None) -> str:
    if ms is None:
        return "–"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    return f"{int(ms // 60000)} min {round(ms % 60000 / 1000)} s"


def _time(t: float | None) -> str:
    if t is None:
        return "–"
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:1.5em;background:#fafaf8;color:#1d1d1f}
h1{font-size:20px}h1 span{color:#b4532a}table{border-collapse:collapse;width:100%;margin-bottom:1.5em}
th,td{border-bottom:1px solid #e2e2dc;padding:.3em .6em;text-align:left;vertical-align:top}
th{font-size:12px;color:#6b6b70;text-transform:uppercase}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.log td{background:#fff;font-weight:600}tr.sess td{font-size:13px}tr.sess td.title{padding-left:1.8em;color:#333}
.mut{color:#6b6b70;font-weight:400}code{font-size:12.5px}"""


def render_index(dir_path: Path, logs: list[LogSummary]) -> str:
    e = html.escape
    rows = []
    for lg in logs:
        name = e(lg.path.name)
        link = (f'<a href="{e(quote(lg.html.name))}">{name}</a>' if lg.html is not None else
                f'{name} <span class="mut">(no viewer yet: <code>tracer html {e(str(lg.path))}</code>)</span>')
        if lg.error:
            rows.append(f'<tr class="log"><td colspan="8">{link} <span class="mut">{e(lg.error)}</span></td></tr>')
            continue
        t = lg.tokens
        rows.append(
            f'<tr class="log"><td>{link}<div class="mut">{_time(lg.start)} · {lg.size / 1e6:.1f} MB'
            f'{" · " + str(lg.warnings) + " bad line(s)" if lg.warnings else ""}</div></td>'
            f'<td class="n">{len(lg.sessions)}</td><td>{e(", ".join(lg.models))}</td><td class="n">{lg.calls}</td>'
            f'<td class="n">{_tok(t.get("in", 0))} / {_tok(t.get("out", 0))}</td>'
            f'<td class="n">{_tok(t.get("cr", 0))} / {_tok(t.get("cc", 0))}</td>'
            f'<td class="n">{_dur(lg.duration_ms)}</td></tr>')
        for s in lg.sessions:
            sub = f' <span class="mut">+{s["subagents"]} subagent(s)</span>' if s["subagents"] else ""
            title = e(s["title"] or "(no prompt)")
            if lg.html is not None:  # opens the viewer on that session
                title = f'<a href="{e(quote(lg.html.name))}#session={int(s["id"])}">{title}</a>'
            rows.append(
                f'<tr class="sess"><td class="title">{title}{sub}</td><td></td>'
                f'<td>{e(", ".join(s["models"]))}</td><td class="n">{s["calls"]}</td>'
                f'<td class="n">{_tok(s["in"])} / {_tok(s["out"])}</td>'
                f'<td class="n">{_tok(s["cr"])} / {_tok(s["cc"])}</td><td class="n">{_dur(s["wall_ms"])}</td></tr>')
    body = "\n".join(rows) or '<tr><td colspan="7" class="mut">No logs (*.jsonl) in this directory.</td></tr>'
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'">'
            f'<title>tracer logs — {e(str(dir_path))}</title><style>{_CSS}</style></head><body>'
            f'<h1><span>tracer</span> logs in <code>{e(str(dir_path))}</code></h1>'
            f'<table><thead><tr><th>log / session</th><th>sessions</th><th>models</th><th>calls</th>'
            f'<th>tokens in / out</th><th>cache read / write</th><th>duration</th></tr></thead>'
            f'<tbody>{body}</tbody></table></body></html>\n')


def write_index(dir_path: str | Path, build_missing: bool = False, *, user: InvokingUser | None = None) -> Path:
    """Write ``index.html`` in ``dir_path``; with ``build_missing``, also build stale/missing viewers.

    Everything - reading the logs, writing the viewers and the index - is done as the invoking user,
    in a directory that must be theirs (tracer/userfiles.py); the index goes through a temporary file
    created with O_EXCL | O_NOFOLLOW and renamed.
    """
    from tracer.sinks.html import default_html_path, write_html

    d = Path(dir_path)
    with as_user(user) as u, UserDir(d, u, create=False) as out:
        logs = []
        files = [p for p in d.glob("*.jsonl") if p.is_file()]
        for p in sorted(files, key=lambda p: p.stat().st_mtime, reverse=True):
            s = summarize_log(p)
            h = default_html_path(p)
            if build_missing and not s.error and (not h.exists() or h.stat().st_mtime < s.mtime):
                try:
                    write_html(p, h, user=u)
                except Exception as ex:  # one broken log must not hide the others
                    s.error = f"viewer not built: {ex}"
            if h.exists():
                s.html = h
            logs.append(s)
        out.write_atomic("index.html", render_index(d, logs).encode("utf-8"))
    return d / "index.html"
