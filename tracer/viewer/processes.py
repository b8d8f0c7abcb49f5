"""The processes that made a log's calls, as a tree for the viewer: each record's
`tracer.process.chain` (the traced ancestors, root first, then the process itself) joins one tree.

Logs are input like any other: only well-formed entries count, commands are cut, and the tree has
a bounded size.
"""

from __future__ import annotations

MAX_PROCESSES = 5000
MAX_CHAIN = 32
COMMAND_CHARS = 200


class ProcessTree:
    def __init__(self) -> None:
        self.procs: dict[int, dict] = {}

    def add(self, index: int, rec: dict) -> None:
        tr = rec.get("tracer")
        proc = tr.get("process") if isinstance(tr, dict) else None
        chain = proc.get("chain") if isinstance(proc, dict) else None
        if not isinstance(chain, list) or not chain:
            return
        parent = None
        for entry in chain[-MAX_CHAIN:]:
            if not isinstance(entry, dict):
                return
            pid = entry.get("pid")
            if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
                return
            node = self.procs.get(pid)
            if node is None:
                if len(self.procs) >= MAX_PROCESSES:
                    return
                cmd = entry.get("command")
                node = self.procs[pid] = {"pid": pid, "command": str(cmd)[:COMMAND_CHARS] if cmd else "?",
                                          "parent": parent, "calls": 0}
            parent = pid
        self.procs[parent]["calls"] += 1

    def summary(self) -> list[dict]:
        """[{pid, command, parent (pid or None), calls}] in the order processes first appeared."""
        return list(self.procs.values())
