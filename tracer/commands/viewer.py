"""`tracer html` and `tracer index`: the offline HTML viewer."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("html")
@click.argument("log", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write (default: the log's name with .html).")
def html_cmd(log: Path, out: Path | None) -> None:
    """Build the self-contained HTML viewer for LOG (ours or claude-trace's) and print its path."""
    from tracer.sinks.html import write_html

    click.echo(str(write_html(log, out)))


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
