"""The package's structure, read from the source (no imports executed): no import cycles anywhere in
tracer/, and the BPF compile child - which runs as root - imports nothing but the standard library,
BCC and a few tracer modules."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "tracer"


def modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every module `name` imports, at any level of the file (functions included).

    `from pkg import sub` counts as importing pkg.sub when that is a module, else pkg; the parent
    packages Python initialises on the way are not counted (every module depends on its package)."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known]
            found.update(subs)
            if len(subs) < len(node.names):
                found.add(mod)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)):
            found.add(node.args[0].value)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: {d for d in imports(m, p, known) if d != m} for m, p in known.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    g = graph()
    assert len(g) > 40
    assert cycles(g) == []


def test_cycle_detection_sees_function_level_imports():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]
    src = "def f():\n    from tracer.probes import locate\n"
    tree_imports = imports("tracer.x", _write(src), {"tracer.probes.locate": Path()})
    assert tree_imports == {"tracer.probes.locate"}


def _write(text: str) -> Path:
    import tempfile
    f = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
    f.write(text)
    f.close()
    return Path(f.name)


def closure(g: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(g.get(m, ()))
    return seen


def test_compile_child_imports_only_stdlib_bcc_and_tracer_leaves():
    g = graph()
    reach = closure(g, "tracer.probes.compile")
    outside = {m.split(".")[0] for m in reach if not m.startswith("tracer")}
    assert outside - set(sys.stdlib_module_names) <= {"bcc"}, outside
    # nothing of the locator (numpy, pyelftools, capstone) or the capture path
    assert not any(m.startswith(("tracer.capture", "tracer.protocols", "tracer.sinks"))
                   or m == "tracer.probes.locate" for m in reach), sorted(reach)


def test_readme_how_it_works_lists_the_modules():
    """README's "How it works" block names every module of the data path (a directory entry such as
    tracer/viewer/ stands for all of its files), and everything it names exists."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## How it works", 1)[1].split("```", 2)[1]
    named = set()
    for line in block.splitlines():
        first = line.split()[0] if line.strip() else ""
        if first.startswith(("tracer/", "bpf/")):
            named.add(first.rstrip(","))
    for n in named:
        assert (ROOT / n).exists(), f"README names {n}, which does not exist"
    dirs = {n for n in named if n.endswith("/")}
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(ROOT).as_posix()
        if p.name == "__init__.py" or rel.startswith("tracer/commands/"):
            continue                      # packages; the commands are named through tracer/cli.py
        assert rel in named or any(rel.startswith(d) for d in dirs), f"{rel} is not in README's block"
