"""`tracer attach` and `tracer run`."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import click

from tracer.errors import TracerError
from tracer.invoker import InvokingUser, as_user, child_credentials, invoking_user, user_environment
from tracer.session import Options, Session, command_files
from tracer.sinks.otlp.config import (DEFAULT_SESSION_IDLE_S, DEFAULT_SHUTDOWN_TIMEOUT_S, OtlpConfigError,
                                      OtlpOptions, otel_environment, resolve_endpoint)
from tracer.sinks.summary import format_summary, write_summary_json
from tracer.textsafe import printable
from tracer.threads import EXIT_FAILED


def capture_options(f):
    """Options shared by attach and run."""
    opts = [
        click.option("--output-dir", "-o", type=click.Path(file_okay=False, path_type=Path),
                     default=Path(".claude-trace"), show_default=True,
                     help="Directory for log-YYYY-MM-DD-HH-MM-SS.jsonl: created (0700) as the user who "
                          "invoked sudo; if it exists it must be theirs and writable by them only."),
        click.option("--include-all-requests", is_flag=True,
                     help="Log every HTTP pair, not only Messages API calls on the API host "
                          "(api.anthropic.com, the target's ANTHROPIC_BASE_URL host, Bedrock runtime)."),
        click.option("--no-redact", is_flag=True,
                     help="Log credentials as sent. By default they are redacted: credential headers "
                          "(authorization, x-api-key, cookies, any name with token/secret/key/auth), "
                          "secret query parameters, and OAuth tokens/passwords in bodies "
                          "(docs/log-format.md lists the rules)."),
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
                     help="Parse in tracer's own process, record by record as the ring is read, instead "
                          "of in a low-priority parsing process behind a spool (slower at saturation; "
                          "for debugging and comparisons)."),
        click.option("--spool-max-mb", type=click.IntRange(16, 1 << 20), default=1024, show_default=True,
                     help="Most captured bytes waiting to be parsed (kept in an unnamed file under "
                          "tracer's cache directory, not in memory). The parsing process gets normal "
                          "priority past a quarter of it; at the limit records wait in the ring buffer, "
                          "and are dropped (and counted) when it is full."),
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
        click.option("--otlp-endpoint", metavar="URL", default=None,
                     help="Also export spans (OpenTelemetry GenAI conventions + OpenInference) over OTLP/HTTP to "
                          "this base URL, e.g. http://localhost:4318 (/v1/traces is appended). Without it, "
                          "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT turn export on; "
                          "OTEL_EXPORTER_OTLP_HEADERS, OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES apply."),
        click.option("--otlp-content", is_flag=True,
                     help="Put message content (prompts, answers, system prompt, tool arguments and results, "
                          "the traced command's arguments) on the spans, as in the log. Off by default: "
                          "content is sensitive."),
        click.option("--otlp-session-idle", type=click.FloatRange(1, 86400), default=DEFAULT_SESSION_IDLE_S,
                     show_default=True, metavar="SECONDS",
                     help="End (and export) a session's span after this long without a call; a later call "
                          "continues the session in a new span with the same session.id."),
        click.option("--otlp-shutdown-timeout", type=click.FloatRange(0.1, 600), default=DEFAULT_SHUTDOWN_TIMEOUT_S,
                     show_default=True, metavar="SECONDS",
                     help="At the end, wait at most this long for spans to be delivered (the rest is counted "
                          "as undelivered in the summary)."),
        click.option("--no-otlp", is_flag=True, help="Do not export, whatever the OTEL_* environment says."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _options(kw, user: InvokingUser, allow_other_users: bool = False) -> Options:
    return Options(
        user=user, allow_other_users=allow_other_users,
        output_dir=kw["output_dir"], include_all=kw["include_all_requests"], redact=not kw["no_redact"],
        batch_size=kw["write_buffer_size"], flush_ms=kw["flush_ms"], durable=kw["durable"],
        ring_buffer_mb=kw["ring_buffer_mb"], copy_limit=kw["copy_limit_kb"] * 1024,
        deferred=not kw["no_deferred_parsing"], spool_max_mb=kw["spool_max_mb"], html=not kw["no_html"],
        status=not kw["quiet"] and not kw["follow"], summary_json=kw["summary_json"],
        otlp=_otlp_options(kw, user), live_feed=not kw["no_live_feed"])


def _otlp_options(kw, user: InvokingUser) -> OtlpOptions | None:
    """OTLP export settings from the options and the invoking user's OTEL_* environment (under sudo,
    pass them with `sudo --preserve-env=...` or use --otlp-endpoint). The exporter process runs as
    the invoking user (tracer/invoker.py) whenever tracer works for someone else."""
    if kw["no_otlp"]:
        return None
    try:
        url, source = resolve_endpoint(kw["otlp_endpoint"], os.environ)
    except OtlpConfigError as e:
        _fail(str(e))
    if not url:
        if kw["otlp_content"]:
            _fail("--otlp-content needs an endpoint: --otlp-endpoint URL or OTEL_EXPORTER_OTLP_ENDPOINT")
        return None
    o = OtlpOptions(endpoint=url, source=source, content=kw["otlp_content"],
                    session_idle_s=kw["otlp_session_idle"], shutdown_timeout_s=kw["otlp_shutdown_timeout"],
                    env=otel_environment(os.environ),
                    run_as=user if user.acting_for_other else None)
    _say(f"exporting spans to {o.display_endpoint} (OTLP/HTTP, from {source}"
         + (", with message content" if o.content else "") + ")")
    return o


def _fail(msg: str, code: int = 2):
    click.echo(f"tracer: {printable(msg, multiline=True)}", err=True)
    sys.exit(code)


def _say(msg: str) -> None:
    """A message on stderr; anything in it that came from a target is escaped."""
    click.echo(f"tracer: {printable(msg, multiline=True)}", err=True)


def _user() -> InvokingUser:
    try:
        return invoking_user()
    except TracerError as e:
        _fail(str(e))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
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
            html_path = write_html(session.log_path, warnings=skipped, user=session.user)
            from tracer.commands.viewer import report_skipped
            report_skipped(session.log_path, skipped)
        except Exception as e:  # the log is what matters; say why the viewer is missing
            _say(f"building the HTML viewer failed: {e}")
    summary["html"] = str(html_path) if html_path else None
    text = format_summary(summary)
    if html_path:
        text += f"\nhtml: {html_path}"
    click.echo(printable(text, multiline=True), err=True)
    if opts.summary_json is not None:
        try:       # created as the invoking user, like the log (tracer/userfiles.py)
            write_summary_json(opts.summary_json, summary)
        except (OSError, TracerError) as e:
            _say(f"cannot write the summary to {opts.summary_json}: {getattr(e, 'strerror', None) or e}")
    # the run is over: a Ctrl-C from now on changes nothing. (The interpreter's exit puts the default
    # action back for signals with a Python handler; one arriving then killed a complete run.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return summary


def _exit_status(summary: dict, default: int) -> int:
    """EXIT_FAILED (70) when tracer itself failed - a thread or its parsing process died: the log is short."""
    return EXIT_FAILED if summary.get("thread_failures") else default


def _start_session(opts: Options) -> Session:
    if opts.summary_json is not None and os.path.lexists(opts.summary_json):
        _fail(f"--summary-json {opts.summary_json} exists; give a new file name")
    try:
        return Session(opts)
    except TracerError as e:
        _fail(str(e), 1)
    except OSError as e:
        _fail(f"cannot open the log in {opts.output_dir}: {e.strerror or e}", 1)


def _watch_targets(session: Session) -> None:
    """One round of the watch loop: targets that exited, lost the right to be traced (a setuid exec,
    a change of credentials) or mapped a new TLS library."""
    for pid in session.live_targets():
        if not _alive(pid):
            session.target_exited(pid)
            continue
        why = session.recheck_target(pid)
        if why:
            _say(f"pid {pid}: stopped tracing it: {why}")
            continue
        try:
            session.refresh_target(session.procs.get(pid))
        except TracerError as e:
            _say(str(e))


def _say_probed(proc, prefix: str = "") -> None:
    for f in proc.files.values():
        where = "" if f.mapped else ", when loaded"
        _say(f"{prefix}probes on {f.path} ({f.library}{where})")
    for why in proc.problems:
        _say(f"{prefix}TLS code NOT probed: {why}")


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
              help="Trace processes whatever user they run as. This lets the caller read every user's "
                   "TLS traffic (root's included): without it a pid must pass the kernel's ptrace "
                   "rule for the user who invoked sudo (same real/effective/saved/fs uid and gid, "
                   "dumpable).")
@capture_options
def attach_cmd(pids, children, cgroup_path, allow_other_users, **kw):
    """Trace running processes' TLS traffic until Ctrl-C, until they all exit, or --duration.

    Finds every mapped object that carries TLS functions (libssl, node, Bun/Claude Code) and puts
    uprobes on them for these pids only, reaching each file through the process' own mount
    namespace (containers). Connections that were already open are picked up at their next
    message boundary. Under sudo, only processes the invoking user could ptrace are traced (with
    --children and --cgroup: each one as tracer finds it); a traced process that exec's a
    setuid/setgid program stops being traced (noted in the summary).

    Exit status: 0; 70 when tracer itself failed (one of its threads died: the summary says which
    and what stopped working); 1 or 2 when it could not start.
    """
    from tracer.access import may_trace

    user = _user()
    opts = _options(kw, user, allow_other_users)
    if not pids and not cgroup_path:
        _fail("say what to trace: --pid PID (with --children for its process tree) or --cgroup PATH")
    for pid in pids:
        if not _alive(pid):
            _fail(f"no such process: {pid}")
        ok, why = may_trace(pid, user, allow_other_users=allow_other_users)
        if not ok:
            _fail(f"{why}; pass --allow-other-users to trace it anyway (that lets you read every "
                  "user's TLS traffic)")
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
            follower = session.follow()
            roots = [follower.add_tree(pid) if children else follower.add_root(pid, "attached", children=False)
                     for pid in pids]
            if cgroup_dir is not None:
                roots += follower.follow_cgroup(cgroup_dir)
            shown = roots if not children else [p for p in session.procs.all()]
        else:
            shown = [session.add_target(pid) for pid in pids]
        for proc in shown:
            if not proc.traced:
                _say(f"pid {proc.pid} ({proc.command}): not traced: {proc.why_not}")
                continue
            if not proc.files and not proc.problems:
                errs = "; ".join(f"{p}: {m}" for p, m in session.locator.errors.items())
                _say(f"pid {proc.pid}: no TLS library found yet in its mappings"
                     + (f" ({errs})" if errs else "") + "; watching for one to be loaded")
            _say_probed(proc, f"pid {proc.pid}: ")
    except TracerError as e:
        session.finish()
        _fail(str(e), 1)
    what = f"{len(pids)} process(es)" + (" and their children" if children else "")
    if cgroup_dir is not None:
        what = (what + " and " if pids else "") + f"every process in cgroup {cgroup_dir}"
    # the view first: once tracer says it is tracing, the view sees every answer from its start
    view = _start_view(session, kw, pids=tuple(pids))
    _say(f"tracing {what}; log {session.log_path}; Ctrl-C to stop")
    tick = _status_printer(session, opts.status)
    deadline = time.monotonic() + kw["duration"] if kw["duration"] else None
    while not stopper.event.is_set():
        if deadline and time.monotonic() >= deadline:
            break
        if follow:           # the follower watches its processes (tracer/processes/follower.py)
            if cgroup_dir is not None:
                from tracer.processes import cgroup as cg
                if not cg.exists(cgroup_dir):
                    _say(f"cgroup {cgroup_dir} is gone")
                    break
            elif not session.follower.live():
                break
        else:
            _watch_targets(session)
            if not session.live_targets():
                break
        tick()
        stopper.event.wait(opts.watch_interval)
    tick(final=True)
    if _finish(session, opts, view).get("thread_failures"):
        sys.exit(EXIT_FAILED)


def _wait_exit(child: subprocess.Popen, pidfd: int | None, timeout: float) -> None:
    """Until the command exits or `timeout` seconds pass. On its pidfd: one wake-up, where
    Popen.wait(timeout) polls with sleeps that grow from 0.5 ms (~11 wake-ups in 0.25 s, each one
    taken from the CPUs the traced command uses)."""
    if pidfd is None:
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        return
    select.select([pidfd], [], [], timeout)


def _start_view(session: Session, kw: dict, **how):
    if not kw["follow"]:
        return None
    from tracer.live.launch import follow_style, start_view
    return start_view(session, follow_style(kw["view"], **how))


@click.command("run", context_settings={"ignore_unknown_options": False})
@click.option("--no-children", is_flag=True,
              help="Trace only COMMAND's own process (through the programs it execs, each held "
                   "until probed), not the processes it starts.")
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
    stdin/stdout/stderr untouched; tracer's own messages go to stderr. A process that exec's a
    setuid/setgid program has nothing logged from that program and stops being traced (noted in
    the summary).

    \b
    Exit status: the command's (128+N when signal N ended it), unless tracer
    itself failed -- one of its threads died (the summary says which, what
    stopped working, and the command's status) -- then 70. 127: the command
    was not found or could not start; 1 or 2: tracer could not start.

    \b
    With --follow the live view is drawn on stderr too (the command's stdout stays its own: redirect
    it, e.g. > answer.txt, and the view redraws in place; when the command writes to the same
    terminal the view only appends lines, so the two interleave instead of overwriting each other).
    """
    user = _user()
    opts = _options(kw, user)
    env = user_environment(dict(os.environ), user)   # the command runs as the user (child_credentials)
    with as_user(user):          # resolved and read with the user's permissions, as their exec will be
        files = command_files(command[0], env)
    if not files:
        _fail(f"command not found: {command[0]}", 127)
    stopper = _Stopper()
    stopper.install()
    session = _start_session(opts)
    r, w = os.pipe()
    # the launcher waits for the go byte; if tracer dies first, the command does not run untraced.
    # It runs with the nice value tracer was started with (the session raised its own threads'
    # priority: session.boost_threads)
    launcher = ("import os,sys\n"
                "fd=int(sys.argv[1]); go=os.read(fd,1); os.close(fd)\n"
                "go==b'x' or sys.exit('tracer: tracer ended before the command could start')\n"
                "os.setpriority(os.PRIO_PROCESS,0,int(sys.argv[2]))\n"
                "os.execvp(sys.argv[3], sys.argv[3:])\n")
    popen_kw = child_credentials(user)
    try:
        child = subprocess.Popen([sys.executable, "-c", launcher, str(r), str(session.original_nice), *command],
                                 pass_fds=(r,),
                                 env=env, **popen_kw)
    except OSError as e:
        session.finish()
        _fail(f"cannot start {command[0]}: {e}", 127)
    os.close(r)
    try:
        # the command's process is followed through its execs either way - the kernel side holds each
        # new program until it is probed and reports the exec in order with the records, so a short
        # program exec'd by a script is probed before it runs and its records name it - and with
        # children (the default) so is every process it starts
        follower = session.follow()
        # the launcher runs tracer's own Python (as the user): admitted now, probed after it
        # execs the command, which the kernel side holds until then
        root = follower.add_root(child.pid, "command", children=not no_children, probe=False, env=env,
                                 command=(files[0], list(command)))
        if not root.traced:
            raise TracerError(f"cannot trace {command[0]}: {root.why_not}")
    except TracerError as e:
        child.kill()
        session.finish()
        _fail(str(e), 1)
    view = _start_view(session, kw, run_stdout=True)
    os.write(w, b"x")      # release the command
    os.close(w)
    try:
        pidfd = os.pidfd_open(child.pid)
    except OSError:
        pidfd = None
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
        tick()
        _wait_exit(child, pidfd, opts.watch_interval)
    if pidfd is not None:
        os.close(pidfd)
    session.wait_ring_drained()
    tick(final=True)
    summary = _finish(session, opts, view)
    rc = child.returncode
    rc = 128 - rc if rc < 0 else rc
    if summary.get("thread_failures"):
        _say(f"exit status {EXIT_FAILED} because tracer failed (the command exited with {rc})")
        sys.exit(EXIT_FAILED)
    sys.exit(rc)


COMMANDS = [attach_cmd, run_cmd]
