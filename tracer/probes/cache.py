"""Cache of locator results keyed by ELF build-id.

Discovery in a 400 MB Bun binary takes about a second; the answer only depends on the bytes of the
binary, which the GNU build-id identifies. One small JSON file per build-id:

    <cache dir>/<build-id>.json
    {"version": 1, "build_id": "...", "size": 402325736, "library": "boringssl",
     "functions": {"SSL_read": {"address": "0x35314b0", "found_by": "boringssl error-site fingerprint"}, ...}}

The key is the build-id alone: Bun computes it over the linked runtime, and Claude Code releases
that only differ in the JavaScript payload appended to the same runtime share it (and the
addresses). ``size``/``binary`` are informational.

Cache directory: ``$TRACER_CACHE_DIR/locate`` if set, else ``/var/cache/tracer/locate`` as root, else
``$XDG_CACHE_HOME/tracer/locate`` (``~/.cache/tracer/locate``). Everything here is best effort: an
unreadable, corrupt, foreign or stale entry is a miss (and gets overwritten), a read-only cache
directory only means no caching. Hits are reported with method ``"cache"``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from tracer.paths import locate_cache_dir
from tracer.probes.located import ALL_FUNCS, FunctionLocation, Located

CACHE_VERSION = 1
METHOD = "cache"
_BUILD_ID = re.compile(r"^[0-9a-f]{8,128}$")


def _entry(build_id: str) -> Path | None:
    bid = build_id.lower()
    if not _BUILD_ID.match(bid):
        return None
    return locate_cache_dir() / (bid + ".json")


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def load(build_id: str, path: str) -> Located | None:
    """The cached result for this build-id (reported as method "cache"), or None."""
    entry = _entry(build_id)
    if entry is None:
        return None
    try:
        data = json.loads(entry.read_text())
        if data.get("version") != CACHE_VERSION or data.get("build_id") != build_id.lower():
            return None
        funcs = {}
        for name, f in data["functions"].items():
            if name not in ALL_FUNCS:
                continue
            addr = int(f["address"], 16)
            if addr <= 0:
                return None
            funcs[name] = FunctionLocation(name, addr, METHOD)
        res = Located(path=path, build_id=build_id, library=str(data.get("library", "")),
                      functions=funcs)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    return res if res.has_data_funcs else None


def store(res: Located) -> bool:
    """Remember a result; False when it could not be written (never raises for I/O problems)."""
    entry = _entry(res.build_id)
    if entry is None or not res.has_data_funcs:
        return False
    data = {
        "version": CACHE_VERSION,
        "build_id": res.build_id.lower(),
        "size": _file_size(res.path),
        "binary": res.path,
        "library": res.library,
        "functions": {n: {"address": hex(f.address), "found_by": f.method}
                      for n, f in sorted(res.functions.items())},
    }
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=entry.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1)
            os.chmod(tmp, 0o644)
            os.replace(tmp, entry)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError:
        return False
    return True


def forget(build_id: str) -> None:
    entry = _entry(build_id)
    if entry is not None:
        try:
            entry.unlink()
        except OSError:
            pass
