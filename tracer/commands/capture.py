"""`tracer attach` and `tracer run`."""

from __future__ import annotations

import functools
import grp
import os
import pwd
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import click

from tracer.errors import TracerError
from tracer.session import Options, Session, command_files, ssl_library_candidates
from tracer.sinks.summary import format_summary, write_summary_json


def capture_options(f):
    """Options shared by attach and run."""
    opts = [
        click.option("--output-dir", "-o", type=click.Path(file_okay=False, path_type=Path),
                     default=Path(".claude-trace"), show_default=True,
                     help="Directory for log-YYYY-MM-DD-HH-MM-SS.jsonl (created 0700)."),
        click.option("--include-all-requests", is_flag=True,
                     help="Log every HTTP pair, not only Messages API calls on the API host "
                          "(api.anthropic.com, the target's ANTHROPIC_BASE_URL host, Bedrock runtime)."),
        click.option("--no-redact", is_flag=True,
                     help="Keep credentials in headers (authorization, x-api-key, cookies, ...) as sent."),
        click.option("--write-buffer-size", type=click.IntRange(1, 100_000), default=100, show_default=True,
                     help="Records per batched write."),
        click.option("--flush-ms", type=click.IntRange(1, 60_000), default=100, show_default=True,
                     help="Longest a finished record waits before it is written."),
        click.option("--durable", is_flag=True, help="fsync after every record (slower, crash-proof)."),
        click.option("--ring-buffer-mb", type=click.IntRange(1, 1024), default=8, show_default=True,
                     help="Kernel ring buffer size (rounded down to a power of two pages)."),
        click.option("--copy-limit-kb", type=click.IntRange(16, 8192), default=1024, show_default=True,
                     help="Bytes copied per SSL call; the rest of a bigger call is logged as a gap."),
        click.option("--no-deferred-parsing", is_flag=True,
                     help="Parse in the ring-buffer callback instead of on the worker thread."),
        click.option("--no-html", is_flag=True, help="Do not build the HTML viewer at the end."),
        click.option("--summary-json", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Also write the end-of-run summary (pairs, bytes, every loss counter) to this "
                          "file as JSON. A new file: an existing one is refused."),
        click.option("--quiet", "-q", is_flag=True, help="No live status line."),
        click.option("--follow", "-f", is_flag=True,
                     help="Live terminal view of the calls as they happen (on stderr, where tracer's "
                          "messages go; the command's stdout is untouched): process, model, last user "
                          "message, the answer as it streams, tool calls, tokens, time to first token, "
                          "duration, losses; subagents indented. Same as `tracer tail LOG` in another "
                          "terminal. The log is the same with or without it."),
        click.option("--view", type=click.Choice(["auto", "live", "lines"]), default="auto",
                     show_default=True,
                     help="With --follow: live redraws the calls in flight in place; lines only appends "
                          "(plain when stderr is not a terminal); auto picks lines when stderr is not a "
                          "terminal or the traced program writes to the same terminal, else live."),
        click.option("--no-live-feed", is_flag=True,
                     help="Do not offer the live feed beside the log (LOG's name with .live: a socket "
                          "owned by you, mode 0600) that `tracer tail` uses to show answers as they "
                          "stream. It costs nothing while no view is connected."),
        click.option("--duration", type=float, default=None, help="Stop after this many seconds."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _options(kw) -> Options:
    return Options(
        output_dir=kw["output_dir"], include_all=kw["include_all_requests"], redact=not kw["no_redact"],
        batch_size=kw["write_buffer_size"], flush_ms=kw["flush_ms"], durable=kw["durable"],
        ring_buffer_mb=kw["ring_buffer_mb"], copy_limit=kw["copy_limit_kb"] * 1024,
        deferred=not kw["no_deferred_parsing"], html=not kw["no_html"],
        status=not kw["quiet"] and not kw["follow"], summary_json=kw["summary_json"],
        live_feed=not kw["no_live_feed"])


def _fail(msg: str, code: int = 2):
    click.echo(f"tracer: {msg}", err=True)
    sys.exit(code)


def _sudo_id(name: str, default: int | None = None) -> int | None:
    """SUDO_UID/SUDO_GID as a number; unset -> default. A value that is not a number is refused:
    guessing would mean running the command, or tracing any process, as root."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        v = int(raw)
        if v < 0:
            raise ValueError
        return v
    except ValueError:
        _fail(f"{name}={raw!r} is not a user or group id; refusing to guess who invoked tracer")


def _invoking_uid() -> int:
    uid = _sudo_id("SUDO_UID")
    return os.getuid() if uid is None else uid


def _proc_uid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


class _Stopper:
    """SIGINT/SIGTERM handling: ask the main loop to stop (twice: stop now)."""

    def __init__(self):
        self.event = threading.Event()
        self.count = 0
        self.signals: list[int] = []

    def __call__(self, signum, _frame):
        self.count += 1
        self.signals.append(signum)
        self.event.set()

    def install(self):
        signal.signal(signal.SIGINT, self)
        signal.signal(signal.SIGTERM, self)


def _status_printer(session: Session, enabled: bool):
    tty = enabled and sys.stderr.isatty()
    last = [0.0]

    def tick(final: bool = False):
        if not tty:
            return
        now = time.monotonic()
        if final:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            return
        if now - last[0] >= 0.5:
            last[0] = now
            sys.stderr.write("\r\033[K" + session.status_line())
            sys.stderr.flush()
    return tick


def _finish(session: Session, opts: Options, view=None) -> dict:
    summary = session.finish()
    if view is not None:
        from tracer.live.launch import finish_view
        finish_view(view)        # the view has drawn the end before the summary is printed
    html_path = None
    if opts.html and summary["records_written"]:
        from tracer.sinks.html import write_html     # the viewer's code is loaded only when used
        try:
            skipped: list[str] = []
            html_path = write_html(session.log_path, warnings=skipped)
            from tracer.commands.viewer import report_skipped
            report_skipped(session.log_path, skipped)
        except Exception as e:  # the log is what matters; say why the viewer is missing
            click.echo(f"tracer: building the HTML viewer failed: {e}", err=True)
    summary["html"] = str(html_path) if html_path else None
    text = format_summary(summary)
    if html_path:
        text += f"\nhtml: {html_path}"
    click.echo(text, err=True)
    if opts.summary_json is not None:
        try:
            write_summary_json(opts.summary_json, summary)
        except OSError as e:
            click.echo(f"tracer: cannot write the summary to {opts.summary_json}: {e.strerror or e}",
                       err=True)
    return summary


def _start_session(opts: Options) -> Session:
    if opts.summary_json is not None and os.path.lexists(opts.summary_json):
        _fail(f"--summary-json {opts.summary_json} exists; give a new file name")
    try:
        return Session(opts)
    except TracerError as e:
        _fail(str(e), 1)
    except OSError as e:
        _fail(f"cannot open the log in {opts.output_dir}: {e.strerror or e}", 1)


@click.command("attach")
@click.option("--pid", "-p", "pids", type=int, multiple=True, required=True,
              help="Process to trace (repeat for several).")
@click.option("--allow-other-users", is_flag=True,
              help="Allow tracing a process owned by another user than the one who invoked sudo.")
@capture_options
def attach_cmd(pids, allow_other_users, **kw):
    """Trace running processes' TLS traffic until Ctrl-C, until they all exit, or --duration.

    Finds every mapped object that carries TLS functions (libssl, node, Bun/Claude Code) and puts
    uprobes on them for these pids only. Connections that were already open are picked up at their
    next message boundary.
    """
    opts = _options(kw)
    me = _invoking_uid()
    for pid in pids:
        if not _alive(pid):
            _fail(f"no such process: {pid}")
        owner = _proc_uid(pid)
        if not allow_other_users and me != 0 and owner != me:
            _fail(f"pid {pid} belongs to uid {owner}, not to you (uid {me}); "
                  "pass --allow-other-users to trace it anyway")
    stopper = _Stopper()
    stopper.install()
    session = _start_session(opts)
    try:
        for pid in pids:
            tgt = session.add_target(pid)
            if not tgt.files:
                errs = "; ".join(f"{p}: {m}" for p, m in session.locator.errors.items())
                click.echo(f"tracer: pid {pid}: no TLS library found yet in its mappings"
                           + (f" ({errs})" if errs else "") + "; watching for one to be loaded", err=True)
            for path, lib, methods in tgt.files:
                click.echo(f"tracer: pid {pid}: probes on {path} ({lib})", err=True)
    except TracerError as e:
        session.finish()
        _fail(str(e), 1)
    click.echo(f"tracer: tracing {len(pids)} process(es); log {session.log_path}; Ctrl-C to stop",
               err=True)
    view = _start_view(session, kw, pids=tuple(pids))
    tick = _status_printer(session, opts.status)
    deadline = time.monotonic() + kw["duration"] if kw["duration"] else None
    while not stopper.event.is_set():
        if deadline and time.monotonic() >= deadline:
            break
        for pid in session.live_targets():
            if not _alive(pid):
                session.target_exited(pid)
            else:
                try:
                    session.refresh_target(session.targets[pid])
                except TracerError as e:
                    click.echo(f"tracer: {e}", err=True)
        if not session.live_targets():
            break
        tick()
        stopper.event.wait(opts.watch_interval)
    tick(final=True)
    _finish(session, opts, view)


def _start_view(session: Session, kw: dict, **how):
    if not kw["follow"]:
        return None
    from tracer.live.launch import follow_style, start_view
    return start_view(session, follow_style(kw["view"], **how))


def _child_credentials():
    """Run the command as the user who invoked sudo, never as root unless root ran us directly."""
    if os.geteuid() != 0 or "SUDO_UID" not in os.environ:
        return None
    uid = _sudo_id("SUDO_UID")
    gid = _sudo_id("SUDO_GID", uid)
    if uid == 0:
        return None
    try:
        pw = pwd.getpwuid(uid)
        groups = os.getgrouplist(pw.pw_name, gid)
        home = pw.pw_dir
        name = pw.pw_name
    except KeyError:
        groups, home, name = [gid], None, None
    return uid, gid, groups, home, name


@click.command("run", context_settings={"ignore_unknown_options": False})
@capture_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run_cmd(command, **kw):
    """Start COMMAND with probes attached before its first TLS call; trace it until it exits.

    \b
    Example:  sudo tracer run -- claude -p "hello"
    The command runs as the user who invoked sudo (not root), with its stdin/stdout/stderr untouched;
    tracer's own messages go to stderr. tracer exits with the command's exit code.

    \b
    With --follow the live view is drawn on stderr too (the command's stdout stays its own: redirect
    it, e.g. > answer.txt, and the view redraws in place; when the command writes to the same
    terminal the view only appends lines, so the two interleave instead of overwriting each other).
    """
    opts = _options(kw)
    env = dict(os.environ)
    creds = _child_credentials()
    if creds:
        uid, gid, groups, home, name = creds
        if home and env.get("HOME") in (None, "", "/root", pwd.getpwuid(0).pw_dir):
            env["HOME"] = home
        if name:
            env["USER"] = env["LOGNAME"] = name
    files = command_files(command[0], env)
    if not files:
        _fail(f"command not found: {command[0]}", 127)
    stopper = _Stopper()
    stopper.install()
    session = _start_session(opts)
    r, w = os.pipe()
    launcher = ("import os,sys\n"
                "fd=int(sys.argv[1]); os.read(fd,1); os.close(fd)\n"
                "os.execvp(sys.argv[2], sys.argv[2:])\n")
    popen_kw = {}
    if creds:
        popen_kw.update(user=creds[0], group=creds[1], extra_groups=creds[2])
    try:
        child = subprocess.Popen([sys.executable, "-c", launcher, str(r), *command], pass_fds=(r,),
                                 env=env, **popen_kw)
    except OSError as e:
        session.finish()
        _fail(f"cannot start {command[0]}: {e}", 127)
    os.close(r)
    try:
        session.add_target(child.pid, extra_files=files + ssl_library_candidates(), env=env)
    except TracerError as e:
        child.kill()
        session.finish()
        _fail(str(e), 1)
    tgt = session.targets[child.pid]
    if not kw["quiet"]:
        for path, lib, _m in tgt.files:
            click.echo(f"tracer: probes on {path} ({lib})", err=True)
    if not tgt.files:
        errs = "; ".join(f"{p}: {m}" for p, m in session.locator.errors.items())
        click.echo(f"tracer: no TLS library found for {command[0]} yet"
                   + (f" ({errs})" if errs else "") + "; watching its mappings", err=True)
    view = _start_view(session, kw, run_stdout=True)
    os.write(w, b"x")      # release the command
    os.close(w)
    tick = _status_printer(session, opts.status)
    deadline = time.monotonic() + kw["duration"] if kw["duration"] else None
    forwarded = False
    while child.poll() is None:
        if stopper.event.is_set():
            stopper.event.clear()
            if stopper.count >= 2:
                child.kill()
            elif signal.SIGTERM in stopper.signals and not forwarded:
                child.terminate()
                forwarded = True
        if deadline and time.monotonic() >= deadline:
            child.terminate()
            deadline = None
        try:
            session.refresh_target(tgt)
        except TracerError as e:
            click.echo(f"tracer: {e}", err=True)
        tick()
        try:
            child.wait(timeout=opts.watch_interval)
        except subprocess.TimeoutExpired:
            pass
    session.target_exited(child.pid)
    tick(final=True)
    _finish(session, opts, view)
    rc = child.returncode
    sys.exit(128 - rc if rc < 0 else rc)


COMMANDS = [attach_cmd, run_cmd]
