"""HTTP/2, observed passively from both directions of one captured connection.

- ``frames``: the connection preface, frame-header rules, and finding frame boundaries in bytes that
  did not start at one (``looks_like_h2``, ``looks_like_h2_frames``, ``h2_frames_offset`` are what a
  dispatcher uses to pick this parser);
- ``hpack_observer``: HPACK decoding that tolerates a dynamic table whose start it never saw;
- ``connection``: per-direction framing, gaps and resynchronisation (:class:`Http2Connection`);
- ``streams``: roles, the request and response of every stream, and when a pair is written out.
"""

from tracer.protocols.http2.connection import Http2Connection
from tracer.protocols.http2.frames import PREFACE, h2_frames_offset, looks_like_h2, looks_like_h2_frames

__all__ = ["PREFACE", "Http2Connection", "h2_frames_offset", "looks_like_h2", "looks_like_h2_frames"]
