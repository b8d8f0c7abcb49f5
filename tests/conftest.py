import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Under `sudo make test` the environment names the invoking user, and tracer would then create files
# as that user (tracer/invoker.py) - in pytest's root-owned temp dirs, where it may not. Tests that
# exercise that behaviour set SUDO_UID/SUDO_GID themselves, for the tracer processes they start.
for _k in ("SUDO_UID", "SUDO_GID", "SUDO_USER", "SUDO_COMMAND"):
    os.environ.pop(_k, None)
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
