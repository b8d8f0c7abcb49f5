"""The error every layer raises for a problem the user can act on: printed as is, no traceback."""

from __future__ import annotations


class TracerError(Exception):
    """An error to show the user as is (no traceback)."""
