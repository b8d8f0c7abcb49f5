"""AWS event stream decoding (Bedrock's streaming answers): reference vectors, any split, CRC checks,
truncated frames, resynchronisation after damage, and the Anthropic answer rebuilt as from SSE."""

from __future__ import annotations

import base64
import json

import orjson
from hypothesis import given, settings, strategies as st

from tests.unit.test_sse import EXPECTED, anthropic_stream, split_at
from tracer.protocols.eventstream import (EventStreamDecoder, bedrock_chunk, encode_message,
                                          reconstruct_eventstream)
from tracer.protocols.sse import parse_events

# Reference messages of the format (byte vectors as published with AWS SDKs' decoders).
EMPTY = b"\x00\x00\x00\x10\x00\x00\x00\x00\x05\xc2H\xeb}\x98\xc8\xff"
ONE_STR_HEADER = (b"\x00\x00\x00=\x00\x00\x00 \x07\xfd\x83\x96\x0ccontent-type\x07\x00\x10"
                  b"application/json{'foo':'bar'}\x8d\x9c\x08\xb1")
ALL_TYPES = (b"\x00\x00\x00\x62\x00\x00\x00\x52\x03\xb5\xcb\x9c"
             b"\x010\x00\x011\x01\x012\x02\x02\x013\x03\x00\x03"
             b"\x014\x04\x00\x00\x00\x04\x015\x05\x00\x00\x00\x00\x00\x00\x00\x05"
             b"\x016\x06\x00\x05bytes\x017\x07\x00\x04utf8"
             b"\x018\x08\x00\x00\x00\x00\x00\x00\x00\x08\x019\x090123456789abcdef"
             b"\x63\x35\x36\x71")
BAD_PAYLOAD = b"\x00\x00\x00\x1d\x00\x00\x00\x00\xfdR\x8cZ{'foo':'bar'\x8d\xc3e96"


def test_reference_vectors():
    d = EventStreamDecoder()
    msgs = d.feed(EMPTY + ONE_STR_HEADER + ALL_TYPES)
    assert [m.payload for m in msgs] == [b"", b"{'foo':'bar'}", b""]
    assert msgs[1].headers == {"content-type": "application/json"}
    h = msgs[2].headers
    assert (h["0"], h["1"], h["2"], h["3"], h["4"], h["5"], h["6"], h["7"], h["8"]) == \
        (True, False, 2, 3, 4, 5, b"bytes", "utf8", 8)
    assert h["9"] == "30313233-3435-3637-3839-616263646566"
    assert [(m.start, m.end) for m in msgs] == [(0, 16), (16, 77), (77, 175)]
    assert d.errors == [] and d.pending == 0


def test_crc_mismatch_is_counted_and_skipped():
    d = EventStreamDecoder()
    msgs = d.feed(EMPTY + BAD_PAYLOAD + ONE_STR_HEADER)
    d.close()
    assert [m.payload for m in msgs] == [b"", b"{'foo':'bar'}"]
    assert any("CRC" in e for e in d.errors) and d.skipped_bytes == len(BAD_PAYLOAD)


def test_truncated_frame_at_close():
    d = EventStreamDecoder()
    assert d.feed(ONE_STR_HEADER[:40]) == []
    d.close()
    assert d.skipped_bytes == 40 and "ended inside a message" in d.errors[-1]


def _bedrock_body(events) -> bytes:
    return b"".join(bedrock_chunk(e) for e in events)


def _events():
    return [json.loads(e.data) for e in parse_events(anthropic_stream())]


@given(st.data())
@settings(max_examples=200, deadline=None)
def test_any_split_decodes_the_same(data):
    body = _bedrock_body(_events())
    r = reconstruct_eventstream(split_at(body, data.draw(st.lists(st.integers(0, len(body)), max_size=30))))
    assert r.message == EXPECTED and r.errors == [] and r.complete
    assert r.frames == len(_events()) and r.skipped_bytes == 0


@given(st.data())
@settings(max_examples=200, deadline=None)
def test_damage_costs_only_the_damaged_messages(data):
    events = _events()
    frames = [bedrock_chunk(e) for e in events]
    body = bytearray(b"".join(frames))
    k = data.draw(st.integers(0, len(frames) - 1))
    start = sum(len(f) for f in frames[:k])
    at = data.draw(st.integers(start, start + len(frames[k]) - 1))
    body[at] ^= data.draw(st.integers(1, 255))
    d = EventStreamDecoder()
    got = d.feed(bytes(body))
    d.close()
    want = [f for i, f in enumerate(frames) if i != k]
    assert [m.end - m.start for m in got] == [len(f) for f in want]
    assert d.errors and d.skipped_bytes == len(frames[k])


def test_garbage_between_messages_and_exception_event():
    ev = _events()
    body = (bedrock_chunk(ev[0]) + b"\x00garbage\xff" * 3 + bedrock_chunk(ev[2])
            + encode_message({":message-type": "exception", ":exception-type": "throttlingException",
                              ":content-type": "application/json"}, b'{"message":"Too many requests"}'))
    r = reconstruct_eventstream(body)
    assert r.error == {"type": "throttlingException", "message": "Too many requests"}
    assert r.message["id"] == "msg_01" and r.skipped_bytes == 27 and not r.complete


def test_bad_chunk_payload_is_said():
    body = encode_message({":message-type": "event", ":event-type": "chunk"}, b'{"bytes": "!!notbase64"}')
    r = reconstruct_eventstream(body)
    assert any("not decodable" in e for e in r.errors)


def test_invocation_metrics_kept():
    ev = _events()
    ev[-1] = dict(ev[-1], **{"amazon-bedrock-invocationMetrics": {"inputTokenCount": 12, "outputTokenCount": 87,
                                                                   "invocationLatency": 900, "firstByteLatency": 300}})
    r = reconstruct_eventstream(_bedrock_body(ev))
    assert r.metrics["outputTokenCount"] == 87 and r.complete
    [m] = EventStreamDecoder().feed(bedrock_chunk({"a": 1}))
    assert m.headers[":event-type"] == "chunk" and base64.b64decode(orjson.loads(m.payload)["bytes"]) == b'{"a":1}'
