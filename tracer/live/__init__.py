"""The live terminal view (`tracer run/attach --follow`, `tracer tail LOG`).

    feed.py     in the tracing process: pairs in flight (parser progress) as frames on a Unix socket
    wire.py     the frame format, both ends
    follow.py   the log file followed like `tail -f` (finished records), opened safely
    model.py    what the view knows: calls (streamed text, tools, tokens), subagent nesting
    render.py   rich renderers: a live region on a terminal, append-only lines otherwise
    view.py     the view's loop: feed + log -> model -> renderer, at a bounded refresh rate
"""
