"""tracer: out-of-process eBPF tracer for LLM API traffic."""

__version__ = "0.1.0"
