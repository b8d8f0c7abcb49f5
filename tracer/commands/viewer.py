"""`tracer html` and `tracer index`: the offline HTML viewer."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("html")
@click.argument("log", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write (default: the log's name with .html).")
def html_cmd(log: Path, out: Path | None) -> None:
    """Build the self-contained HTML viewer for LOG (ours or claude-trace's) and print its path.

    Lines that cannot be read (not JSON, nested too deeply, torn) are skipped, counted on stderr and
    listed in the page. Bodies of very long lines are cut in the page, with a marker naming the line."""
    from tracer.sinks.html import write_html

    warnings: list[str] = []
    path = write_html(log, out, warnings=warnings)
    report_skipped(log, warnings)
    click.echo(str(path))


def report_skipped(log: Path, warnings: list[str]) -> None:
    """Say on stderr how many lines of ``log`` the viewer left out, and why (the first few)."""
    if not warnings:
        return
    shown = "; ".join(warnings[:5]) + (f"; … {len(warnings) - 5} more" if len(warnings) > 5 else "")
    click.echo(f"tracer: viewer for {log}: skipped {len(warnings)} line(s): {shown}", err=True)


@click.command("index")
@click.argument("directory", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--build/--no-build", default=True, show_default=True,
              help="Also build the viewer of each log whose HTML is missing or older than the log.")
def index_cmd(directory: Path | None, build: bool) -> None:
    """Write index.html in DIRECTORY (default .claude-trace) listing every log with its sessions, models,
    call count, token totals and duration; print its path."""
    from tracer.viewer.index import write_index

    d = directory if directory is not None else Path(".claude-trace")
    if not d.is_dir():
        raise click.ClickException(f"no log directory {d} (pass one)")
    click.echo(str(write_index(d, build_missing=build)))


COMMANDS = [html_cmd, index_cmd]
