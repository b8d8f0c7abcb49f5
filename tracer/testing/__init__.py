"""Helpers for tests and benchmarks (downloads of real client releases, ...)."""
