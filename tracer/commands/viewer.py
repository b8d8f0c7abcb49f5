"""`tracer html` and `tracer index`: the offline HTML viewer.

Neither needs root. Run as root for someone else (sudo), both first become the invoking user for
good (tracer/invoker.py `become`): logs are read, and pages written, with that user's permissions,
in directories of theirs (tracer/userfiles.py).
"""

from __future__ import annotations

from pathlib import Path

import click

from tracer.errors import TracerError


def _user():
    from tracer.invoker import become
    try:
        return become()
    except TracerError as e:
        raise click.ClickException(str(e)) from None


@click.command("html")
@click.argument("log", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write (default: the log's name with .html), in a directory of yours.")
def html_cmd(log: Path, out: Path | None) -> None:
    """Build the self-contained HTML viewer for LOG (ours or claude-trace's) and print its path.

    Lines that cannot be read (not JSON, nested too deeply, torn) are skipped, counted on stderr and
    listed in the page. Bodies of very long lines are cut in the page, with a marker naming the line."""
    from tracer.sinks.html import write_html
    from tracer.textsafe import printable

    user = _user()
    warnings: list[str] = []
    try:
        path = write_html(log, out, warnings=warnings, user=user)
    except TracerError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"{printable(e.filename or log)}: {e.strerror or e}") from None
    report_skipped(log, warnings)
    click.echo(printable(str(path)))


def report_skipped(log: Path, warnings: list[str]) -> None:
    """Say on stderr how many lines of ``log`` the viewer left out, and why (the first few)."""
    from tracer.textsafe import printable

    if not warnings:
        return
    shown = "; ".join(warnings[:5]) + (f"; … {len(warnings) - 5} more" if len(warnings) > 5 else "")
    click.echo(printable(f"tracer: viewer for {log}: skipped {len(warnings)} line(s): {shown}"), err=True)


@click.command("index")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--build/--no-build", default=True, show_default=True,
              help="Also build the viewer of each log whose HTML is missing or older than the log.")
def index_cmd(directory: Path | None, build: bool) -> None:
    """Write index.html in DIRECTORY (default .claude-trace) listing every log with its sessions, models,
    call count, token totals and duration; print its path. DIRECTORY must be yours and writable by
    you only."""
    from tracer.textsafe import printable
    from tracer.viewer.index import write_index

    user = _user()
    d = directory if directory is not None else Path(".claude-trace")
    try:
        path = write_index(d, build_missing=build, user=user)
    except TracerError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"{printable(e.filename or d)}: {e.strerror or e}") from None
    click.echo(printable(str(path)))


COMMANDS = [html_cmd, index_cmd]
