import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def bpf_unavailable_reason() -> str | None:
    """Why real-eBPF tests cannot run here, or None. In CI (root, BCC installed) they always run."""
    if os.geteuid() != 0:
        return "needs root for eBPF"
    try:
        import bcc  # noqa: F401
    except ImportError as e:
        return f"BCC not importable: {e}"
    return None
