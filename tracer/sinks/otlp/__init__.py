"""OpenTelemetry export of traced LLM calls: OTLP/HTTP spans following the GenAI semantic conventions,
with the OpenInference attributes Arize Phoenix and Langfuse render natively.

Modules
- ``config``   endpoint and option resolution (``--otlp-endpoint``, the standard ``OTEL_*`` environment).
- ``reader``   log lines -> records, bounded: records too large to parse whole become partial records.
- ``grouping`` the viewer's conversation grouping (``tracer.viewer.analyze.GroupingWindow``), run again as
               calls arrive (live export) or once over a whole log.
- ``spans``    one record -> span attributes (pure: no I/O, no OpenTelemetry import).
- ``engine``   records in, finished spans out: sessions, tool calls, subagents, when spans end.
- ``export``   the OpenTelemetry SDK side: resources, the batching processor, the OTLP/HTTP exporter,
               delivery accounting.
- ``worker``   the exporter process started by ``tracer run/attach``: follows the JSONL log as it is
               written, so the capture path does no export work at all.
- ``sink``     the tracer side of that process (start, targets, bounded shutdown, summary).

Only ``sink`` is imported by the capture session; it never imports the SDK.
"""
