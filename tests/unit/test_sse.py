"""SSE parsing and Anthropic Messages reconstruction, including every way of splitting the stream."""

from __future__ import annotations

import json

from hypothesis import given, settings, strategies as st

from tracer.protocols.sse import MessageBuilder, SSEParser, parse_events, reconstruct


def sse(event: str, payload: dict, eol: str = "\n") -> str:
    return f"event: {event}{eol}data: {json.dumps(payload)}{eol}{eol}"


def split_at(body: bytes, cuts: list[int]) -> list[bytes]:
    """``body`` cut at the given offsets (any order, repeats allowed)."""
    chunks, prev = [], 0
    for c in sorted(cuts) + [len(body)]:
        chunks.append(body[prev:c])
        prev = c
    return chunks


def anthropic_stream(eol: str = "\n") -> str:
    """A stream with every event and delta type the Messages API sends."""
    parts = [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 120, "cache_creation_input_tokens": 30,
                      "cache_read_input_tokens": 4000, "output_tokens": 1}}}),
        ("ping", {"type": "ping"}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "thinking_delta", "thinking": "Let me list "}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "thinking_delta", "thinking": "the files — ünïcödé 🙂"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "signature_delta", "signature": "EqQBCkYIBxgCKkB"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("content_block_start", {"type": "content_block_start", "index": 1,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "text_delta", "text": "I'll run `ls`.\n\n"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "citations_delta", "citation": {
                                     "type": "char_location", "cited_text": "x", "document_index": 0,
                                     "start_char_index": 0, "end_char_index": 1}}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ("content_block_start", {"type": "content_block_start", "index": 2,
                                 "content_block": {"type": "tool_use", "id": "toolu_01", "name": "Bash",
                                                   "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 2,
                                 "delta": {"type": "input_json_delta", "partial_json": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 2,
                                 "delta": {"type": "input_json_delta", "partial_json": "{\"command\": \"l"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 2,
                                 "delta": {"type": "input_json_delta", "partial_json": "s -la\", \"n\": [1, 2]}"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 2}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                           "usage": {"output_tokens": 87}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return ": keep-alive comment" + eol + "".join(sse(e, p, eol) for e, p in parts)


EXPECTED = {
    "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
    "content": [
        {"type": "thinking", "thinking": "Let me list the files — ünïcödé 🙂", "signature": "EqQBCkYIBxgCKkB"},
        {"type": "text", "text": "I'll run `ls`.\n\n", "citations": [{
            "type": "char_location", "cited_text": "x", "document_index": 0,
            "start_char_index": 0, "end_char_index": 1}]},
        {"type": "tool_use", "id": "toolu_01", "name": "Bash", "input": {"command": "ls -la", "n": [1, 2]}},
    ],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 120, "cache_creation_input_tokens": 30, "cache_read_input_tokens": 4000,
              "output_tokens": 87},
}


def test_reconstructs_every_event_type():
    r = reconstruct(anthropic_stream())
    assert r.message == EXPECTED
    assert r.complete and r.errors == []
    assert r.event_counts["content_block_delta"] == 8
    assert r.event_counts["ping"] == 1


def test_offsets_point_at_event_ends():
    body = anthropic_stream().encode()
    r = reconstruct(body)
    first_delta = body.index(b"event: content_block_delta")
    # first_delta_end is just past the blank line that ends the first delta event
    assert body[:r.first_delta_end].endswith(b"\n\n")
    assert body.rfind(b"event:", 0, r.first_delta_end) == first_delta
    assert r.last_event_end == len(body)
    assert r.body_bytes == len(body)


@given(st.data(), st.sampled_from(["\n", "\r\n", "\r"]))
@settings(max_examples=200, deadline=None)
def test_any_split_gives_same_result(data, eol):
    body = anthropic_stream(eol).encode()
    chunks = split_at(body, data.draw(st.lists(st.integers(0, len(body)), max_size=40)))
    r = reconstruct(chunks)
    assert r.message == EXPECTED
    assert r.errors == []
    whole = reconstruct(body)
    assert (r.first_delta_end, r.last_event_end) == (whole.first_delta_end, whole.last_event_end)


def test_byte_by_byte_with_bom_and_crlf():
    body = b"\xef\xbb\xbf" + anthropic_stream("\r\n").encode()
    p = SSEParser()
    evs = []
    for i in range(len(body)):
        evs += p.feed(body[i:i + 1])
    assert [e.event for e in evs][:2] == ["message_start", "ping"]
    b = MessageBuilder()
    for e in evs:
        b.apply(e)
    assert b.finish() == EXPECTED
    assert evs[-1].end == len(body) - 1   # just past the CR of the final CRLF


def test_spec_details():
    evs = parse_events("data: a\ndata:b\ndata\n\n"        # multi-line data, no space, empty field value
                       "id: 7\nretry: 1500\nevent: x\ndata: y\n\n"
                       ": comment only\n\n"              # no data -> no event
                       "event: ignored\n\n"              # no data -> no event
                       "data:  two spaces\n\n"
                       "data: unterminated")             # dropped at close
    assert [(e.event, e.data) for e in evs] == [("message", "a\nb\n"), ("x", "y"), ("message", " two spaces")]
    assert evs[1].id == "7" and evs[1].retry == 1500


def test_cr_at_chunk_edge_is_one_line_end():
    p = SSEParser()
    out = p.feed(b"data: a\r")
    out += p.feed(b"\n\r")
    out += p.feed(b"\n")
    assert [(e.data, e.end) for e in out] == [("a", 10)]


def test_truncated_stream_keeps_what_arrived():
    body = anthropic_stream()
    cut = body.rfind("\n\n", 0, body.index('"s -la')) + 2  # before the tool input's last piece
    r = reconstruct(body[:cut])
    assert not r.complete
    assert r.message["content"][1]["text"] == "I'll run `ls`.\n\n"
    tool = r.message["content"][2]
    assert tool["name"] == "Bash" and tool["input"] == "{\"command\": \"l"  # kept as text
    assert any("no message_stop" in e for e in r.errors)
    assert any("not valid JSON" in e for e in r.errors)


def test_error_event_and_non_json_data():
    body = (sse("message_start", {"type": "message_start", "message": {"id": "m", "content": [],
                                                                       "usage": {"input_tokens": 5}}})
            + "event: junk\ndata: not json\n\n"
            + sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
    r = reconstruct(body)
    assert r.error == {"type": "overloaded_error", "message": "Overloaded"}
    assert r.message["usage"] == {"input_tokens": 5}
    assert any("not JSON" in e for e in r.errors)


def test_message_delta_usage_merges_and_empty_tool_input():
    body = (sse("message_start", {"type": "message_start", "message": {
                "id": "m", "content": [], "usage": {"input_tokens": 5, "output_tokens": 1}}})
            + sse("content_block_start", {"type": "content_block_start", "index": 0,
                                          "content_block": {"type": "tool_use", "id": "t", "name": "LS",
                                                            "input": {}}})
            + sse("content_block_stop", {"type": "content_block_stop", "index": 0})
            + sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                    "usage": {"output_tokens": 9, "input_tokens": None,
                                              "server_tool_use": {"web_search_requests": 1}}})
            + sse("message_stop", {"type": "message_stop"}))
    r = reconstruct(body)
    assert r.message["content"] == [{"type": "tool_use", "id": "t", "name": "LS", "input": {}}]
    assert r.message["usage"] == {"input_tokens": 5, "output_tokens": 9,
                                  "server_tool_use": {"web_search_requests": 1}}
    assert r.first_delta_end is None and r.complete


# --------------------------------------------------------------------------- linear reconstruction

class _Counted(str):
    """A delta piece that records every concatenation it takes part in (and the size of the result)."""
    copied = 0

    def __add__(self, other):
        r = str.__add__(self, other)
        _Counted.copied += len(r)
        return r

    def __radd__(self, other):
        r = str.__add__(other, self)
        _Counted.copied += len(r)
        return r


def _deltas(builder: MessageBuilder, n: int, piece: str, kind: str = "text_delta", field: str = "text") -> None:
    builder.apply_payload({"type": "message_start", "message": {"id": "m", "content": []}}, 1)
    builder.apply_payload({"type": "content_block_start", "index": 0,
                           "content_block": {"type": "text", field: ""}}, 2)
    for i in range(n):
        builder.apply_payload({"type": "content_block_delta", "index": 0,
                               "delta": {"type": kind, field: _Counted(piece)}}, 3 + i)
    builder.apply_payload({"type": "message_stop"}, n + 3)


@given(st.integers(1, 3000), st.sampled_from([("text_delta", "text"), ("thinking_delta", "thinking")]))
@settings(max_examples=30, deadline=None)
def test_text_is_joined_once_not_regrown(n, kind):
    """Bytes copied while accumulating N deltas stay proportional to the text, never N^2 (the old
    `text = text + piece` copied ~N^2/2 pieces)."""
    _Counted.copied = 0
    b = MessageBuilder()
    _deltas(b, n, "abcd", *kind)
    msg = b.finish()
    assert msg["content"][0][kind[1]] == "abcd" * n
    assert _Counted.copied <= 2 * 4 * n


def test_capped_fields_keep_head_and_count_the_rest():
    seen = []
    b = MessageBuilder(max_field_chars=10, on_text=lambda i, f, p: seen.append(p))
    _deltas(b, 1000, "0123456789abc")
    msg = b.finish()
    assert msg["content"][0]["text"] == "0123456789"
    assert b.truncated == [{"index": 0, "field": "text", "kept": 10, "chars": 13000}]
    assert "".join(seen) == "0123456789abc" * 1000      # the sink saw all of it
    # tool input JSON over the cap is kept as (cut) text and said so
    b = MessageBuilder(max_field_chars=8)
    b.apply_payload({"type": "content_block_start", "index": 0,
                     "content_block": {"type": "tool_use", "id": "t", "name": "X", "input": {}}})
    b.apply_payload({"type": "content_block_delta", "index": 0,
                     "delta": {"type": "input_json_delta", "partial_json": '{"a": "0123456789"}'}})
    b.apply_payload({"type": "content_block_stop", "index": 0})
    m = b.finish()
    assert m["content"][0]["input"] == '{"a": "0' and b.truncated[0]["field"] == "input"


def test_block_index_cannot_allocate_unbounded():
    b = MessageBuilder()
    b.apply_payload({"type": "message_start", "message": {"content": []}})
    b.apply_payload({"type": "content_block_delta", "index": 10**12, "delta": {"type": "text_delta", "text": "x"}})
    for i in range(20_000):
        b.apply_payload({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}})
    m = b.finish()
    assert len(m["content"]) == 10_000                  # 9,999 started blocks + the odd one, in index order
    assert m["content"][-1] == {"type": "text", "text": "x"}
    assert any("more than" in e for e in b.errors)


def test_repeated_errors_listed_once_with_count():
    body = "".join(sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "weird"}}) for _ in range(500))
    r = reconstruct(body)
    assert len(r.errors) <= 4
    assert any("(x500)" in e for e in r.errors)


def test_a_long_line_in_small_pieces_is_searched_once(monkeypatch):
    """Bytes searched for line ends stay proportional to the stream, however a 4 MB line is split
    (before, every piece searched the whole line again: quadratic)."""
    import tracer.protocols.sse as sse_mod

    scanned = [0]

    class Counting(bytearray):
        def find(self, sub, start=0, end=None):
            stop = len(self) if end is None else min(end, len(self))
            scanned[0] += max(0, stop - start)
            return bytearray.find(self, sub, start, stop)

    monkeypatch.setattr(sse_mod, "bytearray", Counting, raising=False)
    text = "y" * (4 << 20)
    body = (sse("content_block_start", {"type": "content_block_start", "index": 0,
                                        "content_block": {"type": "text", "text": ""}})
            + sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                          "delta": {"type": "text_delta", "text": text}})).encode()
    p = SSEParser()
    evs = []
    for i in range(0, len(body), 4096):
        evs += p.feed(body[i:i + 4096])
    assert len(evs) == 2 and len(evs[1].data) > len(text)
    assert scanned[0] <= 3 * len(body)


def test_gap_drops_the_event_it_touches_and_keeps_the_next():
    a = sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                    "delta": {"type": "text_delta", "text": "first half"}}).encode()
    b = sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                    "delta": {"type": "text_delta", "text": "second"}}).encode()
    p = SSEParser()
    got = p.feed(a[:40])
    p.gap()                                   # the rest of event a is lost
    got += p.feed(a[60:] + b)
    assert [json.loads(e.data)["delta"]["text"] for e in got] == ["second"]
    # without the gap call the two halves are glued into one event made of both
    glued = parse_events(a[:40] + a[60:] + b)
    assert glued[0].data.startswith('{"type"ta"')


def test_gap_ending_on_an_event_boundary_keeps_that_event():
    evs = [sse("ping", {"type": "ping", "n": i}).encode() for i in range(3)]
    p = SSEParser()
    got = p.feed(evs[0] + evs[1][:10])
    p.gap()
    got += p.feed(evs[2])
    assert [json.loads(e.data)["n"] for e in got] == [0, 2]
    assert got[1].start == len(evs[0]) + 10    # offsets are in the body as logged (without the hole)


def test_reconstruct_with_holes_from_the_record():
    body = anthropic_stream().encode()
    cut = body.index(b"event: content_block_delta")       # lose part of the first thinking delta
    logged = body[:cut + 30] + body[cut + 90:]
    r = reconstruct(logged, [[cut + 30, 60, 0]])
    assert any("capture gap" in e for e in r.errors)
    assert r.message["content"][0]["thinking"] == "the files — ünïcödé 🙂"
    assert r.message["content"][2]["input"] == EXPECTED["content"][2]["input"]
    assert r.complete
