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
        deferred=not kw["no_deferred_parsing"], html=not kw["no_html"], status=not kw["quiet"],
        summary_json=kw["summary_json"])


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


def _finish(session: Session, opts: Options) -> dict:
    summary = session.finish()
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


def _invoking_ids() -> tuple[int, int]:
    """(uid, gid) of the user tracer works for (the sudo caller, else tracer's own)."""
    uid = _invoking_uid()
    gid = _sudo_id("SUDO_GID") if "SUDO_UID" in os.environ else None
    if gid is None:
        try:
            gid = pwd.getpwuid(uid).pw_gid if uid != os.getuid() else os.getgid()
        except KeyError:
            gid = uid
    return uid, gid


def _show(text: str) -> str:
    """Text from a target (paths, command lines) with control characters made visible."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _say_probed(proc, prefix: str = "") -> None:
    for f in proc.files.values():
        where = "" if f.mapped else ", when loaded"
        click.echo(f"tracer: {prefix}probes on {_show(f.path)} ({f.library}{where})", err=True)
    for why in proc.problems:
        click.echo(f"tracer: {prefix}TLS code NOT probed: {_show(why)}", err=True)


@click.command("attach")
@click.option("--pid", "-p", "pids", type=int, multiple=True,
              help="Process to trace (repeat for several).")
@click.option("--children", is_flag=True,
              help="Also trace the processes below each --pid: those running now and those they "
                   "start later (fork, exec), at any depth. A new program is held stopped for the "
                   "moment its probes take, so its first request is captured too.")
@click.option("--cgroup", "cgroup_path", metavar="PATH",
              help="Trace every process in this cgroup v2 directory and below it, present and future "
                   "(e.g. a Docker container's or a systemd unit's cgroup; absolute, or relative to "
                   "the cgroup2 mount). Runs until Ctrl-C, --duration or the cgroup is removed.")
@click.option("--allow-other-users", is_flag=True,
              help="Allow tracing a process owned by another user than the one who invoked sudo.")
@capture_options
def attach_cmd(pids, children, cgroup_path, allow_other_users, **kw):
    """Trace running processes' TLS traffic until Ctrl-C, until they all exit, or --duration.

    Finds every mapped object that carries TLS functions (libssl, node, Bun/Claude Code) and puts
    uprobes on them for these pids only, reaching each file through the process' own mount
    namespace (containers). Connections that were already open are picked up at their next
    message boundary.
    """
    opts = _options(kw)
    if not pids and not cgroup_path:
        _fail("say what to trace: --pid PID (with --children for its process tree) or --cgroup PATH")
    me = _invoking_uid()
    for pid in pids:
        if not _alive(pid):
            _fail(f"no such process: {pid}")
        owner = _proc_uid(pid)
        if not allow_other_users and me != 0 and owner != me:
            _fail(f"pid {pid} belongs to uid {owner}, not to you (uid {me}); "
                  "pass --allow-other-users to trace it anyway")
    cgroup_dir = None
    if cgroup_path:
        from tracer.processes import cgroup as cg
        try:
            cgroup_dir = cg.resolve(cgroup_path)
        except TracerError as e:
            _fail(str(e))
    stopper = _Stopper()
    stopper.install()
    session = _start_session(opts)
    follow = children or cgroup_dir is not None
    try:
        if follow:
            uid, gid = _invoking_ids()
            follower = session.follow(uid=uid, gid=gid, allow_other_users=allow_other_users)
            roots = [follower.add_tree(pid) if children else follower.add_root(pid, "attached", children=False)
                     for pid in pids]
            if cgroup_dir is not None:
                roots += follower.follow_cgroup(cgroup_dir)
            shown = roots if not children else [p for p in session.procs.all()]
        else:
            shown = [session.add_target(pid) for pid in pids]
        for proc in shown:
            if not proc.traced:
                click.echo(f"tracer: pid {proc.pid} ({_show(proc.command)}): not traced: {proc.why_not}",
                           err=True)
                continue
            if not proc.files and not proc.problems:
                errs = "; ".join(f"{p}: {m}" for p, m in session.locator.errors.items())
                click.echo(f"tracer: pid {proc.pid}: no TLS library found yet in its mappings"
                           + (f" ({_show(errs)})" if errs else "") + "; watching for one to be loaded",
                           err=True)
            _say_probed(proc, f"pid {proc.pid}: ")
    except TracerError as e:
        session.finish()
        _fail(str(e), 1)
    what = f"{len(pids)} process(es)" + (" and their children" if children else "")
    if cgroup_dir is not None:
        what = (what + " and " if pids else "") + f"every process in cgroup {_show(cgroup_dir)}"
    click.echo(f"tracer: tracing {what}; log {session.log_path}; Ctrl-C to stop", err=True)
    tick = _status_printer(session, opts.status)
    deadline = time.monotonic() + kw["duration"] if kw["duration"] else None
    while not stopper.event.is_set():
        if deadline and time.monotonic() >= deadline:
            break
        if follow:
            if cgroup_dir is not None:
                from tracer.processes import cgroup as cg
                if not cg.exists(cgroup_dir):
                    click.echo(f"tracer: cgroup {_show(cgroup_dir)} is gone", err=True)
                    break
            elif not session.follower.live():
                break
        else:
            for pid in session.live_targets():
                if not _alive(pid):
                    session.target_exited(pid)
                else:
                    try:
                        session.refresh_target(session.procs.get(pid))
                    except TracerError as e:
                        click.echo(f"tracer: {e}", err=True)
            if not session.live_targets():
                break
        tick()
        stopper.event.wait(opts.watch_interval)
    tick(final=True)
    _finish(session, opts)


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
@click.option("--no-children", is_flag=True,
              help="Trace only COMMAND's own process, not the processes it starts.")
@capture_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run_cmd(command, no_children, **kw):
    """Start COMMAND with probes attached before its first TLS call; trace it until it exits.

    \b
    Example:  sudo tracer run -- claude -p "hello"
              sudo tracer run -- python my_agent.py     (the Claude Code it starts is traced too)
    Every process COMMAND starts is traced as well, at any depth (--no-children: only COMMAND).
    Each new program is held stopped until its probes are in place, so even a request sent right
    after exec is captured. The command runs as the user who invoked sudo (not root), with its
    stdin/stdout/stderr untouched; tracer's own messages go to stderr. tracer exits with the
    command's exit code.
    """
    opts = _options(kw)
    follow = not no_children
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
    # the launcher waits for the go byte; if tracer dies first, the command does not run untraced
    launcher = ("import os,sys\n"
                "fd=int(sys.argv[1]); go=os.read(fd,1); os.close(fd)\n"
                "go==b'x' or sys.exit('tracer: tracer ended before the command could start')\n"
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
        if follow:
            uid, gid = _invoking_ids()
            follower = session.follow(uid=uid, gid=gid)
            # the launcher runs tracer's own Python: probed after it execs the command, which the
            # kernel side holds until then
            follower.add_root(child.pid, "command", probe=False, check=False, env=env)
            tgt = None
        else:
            tgt = session.add_target(child.pid, extra_files=files + ssl_library_candidates(), env=env,
                                     origin="command")
    except TracerError as e:
        child.kill()
        session.finish()
        _fail(str(e), 1)
    if tgt is not None:
        if not kw["quiet"]:
            _say_probed(tgt)
        if not tgt.files:
            errs = "; ".join(f"{p}: {m}" for p, m in session.locator.errors.items())
            click.echo(f"tracer: no TLS library found for {_show(command[0])} yet"
                       + (f" ({_show(errs)})" if errs else "") + "; watching its mappings", err=True)
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
        if tgt is not None:
            try:
                session.refresh_target(tgt)
            except TracerError as e:
                click.echo(f"tracer: {e}", err=True)
        tick()
        try:
            child.wait(timeout=opts.watch_interval)
        except subprocess.TimeoutExpired:
            pass
    if follow:
        session.wait_ring_drained()
    else:
        session.target_exited(child.pid)
    tick(final=True)
    _finish(session, opts)
    rc = child.returncode
    sys.exit(128 - rc if rc < 0 else rc)


COMMANDS = [attach_cmd, run_cmd]
