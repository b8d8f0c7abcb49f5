"""`tracer tail LOG`: the live terminal view of a log another tracer is writing (and the view process
that `tracer run/attach --follow` start)."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import click

VIEWS = ("auto", "live", "lines")


def newest_log(directory: Path) -> Path | None:
    try:
        logs = [p for p in directory.iterdir() if p.name.endswith(".jsonl") and not p.is_symlink()]
    except OSError:
        return None
    return max(logs, key=lambda p: p.stat().st_mtime, default=None)


@click.command("tail")
@click.argument("log", required=False)
@click.option("--last", "-n", "last", type=click.IntRange(0, 10_000), default=10, show_default=True,
              help="Finished calls shown from the end of the log when starting.")
@click.option("--view", "view", type=click.Choice(VIEWS), default="auto", show_default=True,
              help="live: redraw the calls in flight in place (needs a terminal); lines: append-only "
                   "lines (what a pipe or file gets, plain); auto: live on a terminal, else lines.")
@click.option("--no-feed", is_flag=True,
              help="Show finished calls from the log only; do not connect to the tracer's live feed.")
@click.option("--max-fps", type=click.FloatRange(0.5, 30), default=10, show_default=True,
              help="Most redraws per second.")
@click.option("--log-fd", type=int, default=None, hidden=True)     # run/attach --follow: the log, opened
@click.option("--feed-fd", type=int, default=None, hidden=True)    # ... and the feed's socket
@click.option("--title", default=None, hidden=True)
def tail_cmd(log, last, view, no_feed, max_fps, log_fd, feed_fd, title):
    """Follow LOG (default: the newest log in .claude-trace/) in the terminal, as the tracer writing it
    goes: each call's process, model and last user message, the answer as it streams, tool calls with
    their input, then tokens (input, output, cache read, cache write), time to first token, duration,
    cost and any loss. Subagent calls are indented under the call that started them.

    \b
    Finished calls come from the log (complete lines only, like tail -f; the log may grow while it is
    read). Answers stream live when the tracer offers its live feed next to the log (LOG's name with
    .live: a socket only its user and root can use; tracer run/attach offer it unless --no-live-feed).
    With the feed, tail ends when that tracer ends; without it, it follows the log until Ctrl-C.

    \b
    Needs no privileges: run it as the user who owns the log. Under sudo it drops to the invoking
    user first. It follows a symbolic link only when the link belongs to root or to you. Text from
    the traced program is shown with control characters escaped; it cannot drive the terminal.
    """
    from tracer.errors import TracerError
    from tracer.live.follow import OpenedLog, UnsafeLog, connect_feed, open_log
    from tracer.live.render import LinesRenderer, LiveRenderer, make_console
    from tracer.live.view import View
    from tracer.textsafe import printable

    internal = log_fd is not None
    if internal:
        # started by run/attach --follow: Ctrl-C is the tracer's to handle; it ends the feed, we end.
        # Below the traced program in priority (the tracer's own threads may run raised; we would
        # inherit that): drawing can wait, the program should not.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            os.setpriority(os.PRIO_PROCESS, 0, max(10, os.getpriority(os.PRIO_PROCESS, 0)))
        except OSError:
            pass
        opened = OpenedLog(log_fd, os.open("/", os.O_PATH | os.O_CLOEXEC), title or "log", os.fstat(log_fd).st_uid)
        feed = socket.socket(fileno=feed_fd) if feed_fd is not None else None
        if feed is not None:
            feed.setblocking(False)
    else:
        from tracer.invoker import become
        try:
            become()                       # no privileges needed: the invoking user's, for good
        except TracerError as e:
            raise click.ClickException(str(e)) from None
        if log is None:
            found = newest_log(Path(".claude-trace"))
            if found is None:
                raise click.ClickException("no log given and none in .claude-trace/")
            log = str(found)
        try:
            opened = open_log(log)
        except UnsafeLog as e:
            raise click.ClickException(printable(str(e))) from None
        except OSError as e:
            raise click.ClickException(f"{printable(log)}: {e.strerror or e}") from None
        feed = None if no_feed else connect_feed(opened)
        title = title or opened.name
    out = sys.stdout
    tty = out.isatty()
    style = view if view != "auto" else ("live" if tty else "lines")
    if style == "live" and not tty:
        style = "lines"
    console = make_console(out, terminal=tty)
    renderer = LiveRenderer(console, title=title) if style == "live" else LinesRenderer(console)
    v = View(opened, feed, renderer, history=last, max_fps=max_fps)
    if not internal and not tty:
        console.print(f"tracer tail: {printable(title)}" + ("" if feed else " (no live feed: finished calls only)"))
    try:
        v.run()
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
    finally:
        opened.close()
        if feed is not None:
            feed.close()
    for w in (v.model.warnings + v.follower.warnings)[:5]:
        click.echo(f"tracer tail: {printable(w)}", err=True)


COMMANDS = [tail_cmd]
