"""ChunkTimes (tracer/protocols/base.py): the body read times of an exchange, bounded and evenly spread."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tracer.protocols.base import ChunkTimes, Exchange, Message
from tracer.testing.helpers import CONN


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5000), st.integers(2, 64))
def test_bounded_evenly_spread_and_the_newest_last(n, limit):
    c = ChunkTimes(limit=limit)
    for i in range(n):
        c.append((i * 10, i))
    idx = [ts for _, ts in c]
    assert len(c) <= limit + 1
    assert idx[0] == 0 and idx[-1] == n - 1 and idx == sorted(set(idx))
    inner = {b - a for a, b in zip(idx[:-1], idx[1:-1])}
    assert len(inner) <= 1                       # one stride between all kept points
    if n <= limit:
        assert idx == list(range(n))             # nothing dropped until full


def test_exchanges_get_one_and_it_is_still_a_list():
    ex = Exchange(conn=CONN, request=Message())
    assert isinstance(ex.body_times, ChunkTimes) and isinstance(ex.body_times, list)
    for i in range(100_000):
        ex.body_times.append((i, i))
    assert len(ex.body_times) <= 8193 and ex.body_times[-1] == (99_999, 99_999)
