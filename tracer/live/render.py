"""Drawing the live view with rich: a live region on a terminal of its own, append-only lines elsewhere.

Two renderers, one look:
  * ``LiveRenderer`` (the view's output is a terminal nobody else writes to): the calls in flight in
    a region at the bottom, redrawn at most ``max_fps`` times a second - header, the last lines of the
    answer as it streams, tool calls, tokens so far - and every finished call printed once above it,
    for good (scrollback): its answer, tools, tokens, time to first token, duration, cost, losses;
  * ``LinesRenderer`` (a file or pipe - plain, no escape sequences at all - or a terminal the traced
    command writes to as well, where redrawing would tear through the command's output): lines are
    only ever appended: a call's header when it starts, each line of its answer as it completes,
    tool calls, then the summary line.
Subagent calls are indented under the call that started them.

Safety: every string that comes from the target (prompts, answers, tool inputs, model names, URLs,
process names) goes through tracer.textsafe.printable - control characters and other terminal
tricks are shown escaped - and is put into rich ``Text`` objects, never parsed as console markup, so
``[bold]`` in an answer is shown as typed.
"""

from __future__ import annotations

import time
from typing import TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from tracer.live.model import TOOL_INPUT, Call, Model, Tool
from tracer.textsafe import printable

FINAL_LINES = 20           # lines of a finished answer printed (the log and the viewer have the rest)
STREAM_LINES = 400         # lines of one answer the lines renderer prints while it streams


def safe(s: object) -> str:
    """One-line target text for the terminal."""
    return printable("" if s is None else s)


def safe_block(s: str) -> str:
    """Multi-line target text for the terminal (newlines and tabs kept, everything else escaped)."""
    return printable(s, multiline=True)


def make_console(file: TextIO, *, terminal: bool, width: int | None = None) -> Console:
    """Our console: no markup, no highlighting, no emoji codes; on a non-terminal no styles or
    control sequences at all and no wrapping."""
    if terminal:
        return Console(file=file, force_terminal=True, markup=False, highlight=False, emoji=False,
                       width=width)
    return Console(file=file, force_terminal=False, no_color=True, markup=False, highlight=False,
                   emoji=False, soft_wrap=True, width=width or 10_000, color_system=None)


def _num(n: int | None) -> str:
    return f"{n:,}" if isinstance(n, int) else "?"


def _secs(s: float | None) -> str:
    if s is None:
        return "?"
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"


def indent(call: Call) -> str:
    return "    " * call.depth


def header(call: Call, mark: str) -> Text:
    t = Text(indent(call))
    style = {"✓": "green", "✗": "red", "…": "yellow", "→": "cyan"}.get(mark, "")
    t.append(f"{mark} #{call.n}", style=f"bold {style}".strip())
    if call.depth:
        parent = call.parent
        t.append(f" subagent of #{parent.n}" if parent is not None else " subagent", style="magenta")
    if call.model:
        t.append("  " + safe(call.model), style="bold")
    elif call.kind != "messages":
        t.append("  " + safe(call.method) + " " + safe(call.url), style="bold")
    if call.process:
        who = safe(call.process)
    else:
        name = call.proc_name
        who = safe(name) + (f" ({safe(call.comm)})" if call.comm and call.comm != name else "") \
            if name else safe(call.comm)
    t.append(f"  pid {call.pid}" + (f" {who}" if who else ""), style="dim")
    if call.prompt:
        t.append("  «" + safe(call.prompt) + "»", style="italic")
    elif call.request_cut:
        t.append(f"  (request of {_bytes(call.request_cut)} not shown live)", style="dim")
    return t


def tokens_line(call: Call, final: bool) -> Text:
    u = call.usage or {}
    t = Text(indent(call) + "  ")
    parts = []
    if u:
        parts.append(f"in {_num(u.get('input_tokens'))}")
        parts.append(f"out {_num(u.get('output_tokens'))}")
        parts.append(f"cache read {_num(u.get('cache_read_input_tokens', 0))}")
        parts.append(f"cache write {_num(u.get('cache_creation_input_tokens', 0))}")
    else:
        parts.append("tokens ?")
    if call.ttft_s is not None:
        parts.append(f"ttft {_secs(call.ttft_s)}")
    if final:
        parts.append(_secs(call.duration_s))
        if call.cost is not None:
            parts.append(f"${call.cost:.4f}")
        if call.status is not None and call.kind != "messages":
            parts.append(f"HTTP {call.status}")
    else:
        if call.t0 is not None:
            parts.append(f"{_secs(max(0.0, time.time() - call.t0))} so far")
    t.append(" · ".join(parts), style="cyan" if final else "dim cyan")
    if call.stop_reason and final:
        t.append(f" · {safe(call.stop_reason)}", style="dim")
    return t


def problems(call: Call) -> list[Text]:
    out = []
    pre = indent(call) + "  "
    if call.error:
        out.append(Text(pre + "error: " + safe(call.error), style="bold red"))
    losses = []
    if call.final and not call.complete:
        losses.append("incomplete")
    if call.gap_bytes:
        losses.append(f"capture gap {_bytes(call.gap_bytes)}")
    if call.notes:
        losses.append("; ".join(safe(n) for n in call.notes))
    if losses:
        out.append(Text(pre + "⚠ " + " · ".join(losses), style="yellow"))
    if call.live_lost:
        out.append(Text(pre + f"(live view skipped {_bytes(call.live_lost)} of this answer; "
                              "the log has it all)", style="dim yellow"))
    if call.stream is not None and call.stream.broken:
        out.append(Text(pre + "(live text stopped: " + safe(call.stream.broken) + ")", style="dim yellow"))
    return out


def tool_line(call: Call, tool: Tool) -> Text:
    t = Text(indent(call) + "  ")
    t.append("⚙ " + safe(tool.name), style="bold magenta")
    if tool.input:
        shown = tool.input[:TOOL_INPUT]
        more = "…" if tool.input_chars > len(shown) else ""
        t.append(" " + safe(shown) + more)
    elif not tool.done:
        t.append(" …", style="dim")
    return t


def text_lines(call: Call, text: str, console: Console | None = None) -> list[Text]:
    """Answer text as lines under its call's header; on a terminal wrapped to its width (each piece
    with the prefix), elsewhere one line per line of text."""
    pre = indent(call) + "  │ "
    if console is None or not console.is_terminal:
        return [Text(pre + line) for line in safe_block(text).split("\n")]
    width = max(10, console.size.width - len(pre))
    return [Text(pre) + piece for piece in Text(safe_block(text)).wrap(console, width)]


def final_block(call: Call, *, max_lines: int = FINAL_LINES, with_text: bool = True,
                skip_tools: int = 0, console: Console | None = None) -> Group:
    """A finished call, printed once (``with_text``: its answer too; the first ``skip_tools`` tool
    calls were printed already)."""
    mark = "✓" if call.state == "done" and call.complete and not call.error else "✗" \
        if call.error or (call.status or 0) >= 400 else "…" if call.state == "lost" else "⚠"
    parts: list = [header(call, mark)]
    if with_text:
        text = call.final_text if call.final_text is not None else call.text.value()
        if text:
            lines = text_lines(call, text.rstrip("\n"), console)
            if len(lines) > max_lines:
                rest = len(lines) - max_lines
                lines = lines[:max_lines] + [Text(indent(call) + f"  │ … {rest} more lines", style="dim")]
            elif call.final_text is not None and call.final_text_chars > len(call.final_text):
                lines.append(Text(indent(call) + f"  │ … {call.final_text_chars - len(call.final_text):,} "
                                  "more characters (see the log)", style="dim"))
            parts += lines
        if call.thinking_chars and call.final_text is None:
            parts.append(Text(indent(call) + f"  (thinking: {call.thinking_chars:,} characters)", style="dim"))
    for tool in call.tools[skip_tools:]:
        parts.append(tool_line(call, tool))
    if call.kind == "messages" or call.usage:
        parts.append(tokens_line(call, True))
    else:
        parts.append(Text(indent(call) + f"  HTTP {call.status} · {_secs(call.duration_s)}", style="cyan"))
    parts += problems(call)
    return Group(*parts)


class LiveRenderer:
    """The in-place view (see the module docstring)."""

    def __init__(self, console: Console, *, title: str = "", final_lines: int = FINAL_LINES):
        self.console = console
        self.title = safe(title)
        self.final_lines = final_lines
        self.live = Live(console=console, auto_refresh=False, transient=True, redirect_stdout=False,
                         redirect_stderr=False, vertical_overflow="crop")
        self.started = False

    def start(self) -> None:
        self.live.start()
        self.started = True

    def stop(self, model: Model | None = None) -> None:
        if model is not None:
            self.draw(model)
        if self.started:
            self.live.update(Text(""), refresh=True)
            self.live.stop()
            self.started = False

    def draw(self, model: Model) -> None:
        for kind, call in model.take_changes():
            if kind == "done":
                self.live.console.print(final_block(call, max_lines=self.final_lines, console=self.console))
        self.live.update(self._region(model), refresh=True)
        model.dirty = False

    def _region(self, model: Model) -> Group:
        height = max(6, self.console.size.height - 2)
        active = model.active()
        parts: list = []
        budget = height - 1
        if active:
            per = max(1, min(8, (budget // len(active)) - 3))
            for call in active:
                if budget <= 0:
                    parts.append(Text(f"… {len(active)} calls in flight", style="dim"))
                    break
                block = [header(call, "→" if call.state == "sent" else "…")]
                text = call.text.value()
                if text:
                    block += text_lines(call, text, self.console)[-per:]
                elif call.thinking_chars:
                    block.append(Text(indent(call) + f"  (thinking: {call.thinking_chars:,} characters)",
                                      style="dim"))
                for tool in call.tools[-3:]:
                    block.append(tool_line(call, tool))
                block.append(tokens_line(call, False))
                block += problems(call)
                parts += block[:max(1, budget)]
                budget -= len(block)
        parts.append(self._footer(model, len(active)))
        return Group(*parts)

    def _footer(self, model: Model, active: int) -> Text:
        feed = {"connected": "live", "ended": "tracer finished", "none": "no live feed (records only)"}
        t = Text(f"── {self.title} · {model.records} finished · {active} in flight · "
                 f"{feed.get(model.feed_state, model.feed_state)}", style="dim")
        if model.live_lost:
            t.append(f" · live view skipped {_bytes(model.live_lost)}", style="yellow")
        return t


class LinesRenderer:
    """Append-only output (see the module docstring)."""

    def __init__(self, console: Console, *, final_lines: int = FINAL_LINES, stream_lines: int = STREAM_LINES,
                 wrap: int = 100):
        self.console = console
        self.wrap = wrap                       # a partial line longer than this is printed as it grows
        self.final_lines = final_lines
        self.stream_lines = stream_lines
        self.printed: dict[int, int] = {}      # call -> characters of its streamed text printed
        self.lines: dict[int, int] = {}        # call -> lines of its streamed text printed
        self.tools: dict[int, int] = {}        # call -> tool calls printed

    def start(self) -> None:
        pass

    def stop(self, model: Model | None = None) -> None:
        if model is not None:
            self.draw(model)
        self.console.file.flush()

    def draw(self, model: Model) -> None:
        for kind, call in model.take_changes():
            if kind == "start":
                if not call.final:
                    self.console.print(header(call, "→"))
            else:
                self._stream(call, final=True)
                self._done(call)
        for call in model.active():
            self._stream(call, final=False)
        model.dirty = False
        self.console.file.flush()

    def _stream(self, call: Call, final: bool) -> None:
        """Newly completed lines of a streaming answer (at the end: the last, partial one too)."""
        tail = call.text
        done = self.printed.get(call.n, 0)
        if tail.total > done and self.lines.get(call.n, 0) < self.stream_lines:
            text = tail.value()
            start = tail.start
            if done < start:
                self.console.print(Text(indent(call) + f"  │ … {start - done:,} characters not shown",
                                        style="dim"))
                done = start
            new = text[done - start:]
            cut = len(new) if final else new.rfind("\n") + 1
            if not final and len(new) - cut > self.wrap:
                # a long paragraph still being written: print it up to a word break, so plain output
                # streams too
                brk = new.rfind(" ", cut, len(new) - 1)
                cut = brk + 1 if brk > cut else len(new)
            if cut > 0:
                chunk = new[:cut]
                for line in text_lines(call, chunk[:-1] if chunk.endswith("\n") else chunk, self.console):
                    if self.lines.get(call.n, 0) >= self.stream_lines:
                        self.console.print(Text(indent(call) + "  │ … (more: see the log)", style="dim"))
                        self.lines[call.n] = self.stream_lines + 1
                        break
                    self.console.print(line)
                    self.lines[call.n] = self.lines.get(call.n, 0) + 1
                self.printed[call.n] = done + cut
        n = self.tools.get(call.n, 0)
        for tool in call.tools[n:]:
            if not tool.done and not final:
                break
            self.console.print(tool_line(call, tool))
            n += 1
        self.tools[call.n] = n

    def _done(self, call: Call) -> None:
        streamed = self.printed.pop(call.n, 0) > 0
        self.lines.pop(call.n, None)
        printed_tools = self.tools.pop(call.n, 0)
        if not streamed:
            printed_tools = 0      # what streaming showed was partial: the record's tools instead
        self.console.print(final_block(call, max_lines=self.final_lines, with_text=not streamed,
                                       skip_tools=printed_tools, console=self.console))
