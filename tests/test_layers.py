"""The import graph (DESIGN.md section 1): imports point down the layers only, imports inside
functions included; no module imports itself through a cycle; ``kernels/`` imports nothing
outside itself. Read from the source with ``ast`` (nothing is imported)."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = {"fastgan": "fastgan", "fastgan.kernels": "kernels", "fastgan.benchmarks": "benchmarks"}

# lower number = lower layer; a module may import its own layer and the layers below
LAYERS = [
    ("fastgan.kernels", 0),
    ("fastgan.atomic", 1), ("fastgan.nvml", 1), ("fastgan.monitor", 2), ("fastgan.data", 1),
    ("fastgan.backend", 3),
    ("fastgan.functional", 4),
    ("fastgan.nn", 5),
    ("fastgan.accelerate", 6),
    ("fastgan.compat", 7),
    ("fastgan.models", 8),
    ("fastgan.train", 9),
    ("fastgan.apps", 10),
    ("fastgan.benchmarks", 11),
    ("fastgan.cli", 12), ("fastgan.__main__", 12), ("fastgan.benchmarks.__main__", 12),
]


def _modules():
    """{module name: path} of every project module."""
    out = {}
    for package, folder in FOLDERS.items():
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            if "__pycache__" in dirpath:
                continue
            rel = os.path.relpath(dirpath, os.path.join(ROOT, folder))
            parts = [] if rel == "." else rel.split(os.sep)
            for f in files:
                if not f.endswith(".py") or f.startswith("test_"):
                    continue
                name = ".".join([package] + parts + ([] if f == "__init__.py" else [f[:-3]]))
                out[name] = os.path.join(dirpath, f)
    return out


MODULES = _modules()


def _imports(name: str, path: str) -> set:
    """Every project module ``name`` imports, at any depth of its code."""
    is_pkg = path.endswith("__init__.py")
    package = name if is_pkg else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == \
                "import_module" and node.args and isinstance(node.args[0], ast.Constant):
            targets = [node.args[0].value]
        for t in targets:
            if t in MODULES and t != name:
                found.add(t)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(name: str):
    best = None
    for prefix, rank in LAYERS:
        if name == prefix or name.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, rank)
    return best[1] if best else None


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if m != "fastgan" and _layer(m) is None]
    assert not missing, f"modules outside the layer table: {missing}"


def test_imports_point_down_only():
    bad = [(m, t) for m, targets in GRAPH.items() if m != "fastgan" for t in targets
           if t != "fastgan" and _layer(t) > _layer(m)]
    assert not bad, "imports pointing up: " + ", ".join(f"{m} -> {t}" for m, t in bad)


def _torch_uses(path: str) -> set:
    """The ``torch.<x>`` submodules a file imports or reads (``torch.nn``, ``torch.autograd``, ...)."""
    used = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "torch":
            used.add(f"torch.{node.attr}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            used.update(n for n in names if n.startswith("torch."))
    return used


def test_kernels_import_nothing_outside_themselves():
    for m, targets in GRAPH.items():
        if m.startswith("fastgan.kernels"):
            assert all(t.startswith("fastgan.kernels") for t in targets), (m, targets)
            assert not _torch_uses(MODULES[m]) & {"torch.nn", "torch.autograd"}, m


def test_no_import_cycles():
    # a package imports its own submodules (__init__ re-exports); a cycle is any other loop
    def edges(m):
        return [t for t in GRAPH[m] if not (t.startswith(m + ".") and MODULES[m].endswith("__init__.py"))]

    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in edges(m):
            if state.get(t) == "open":
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_the_checks_see_a_bad_import():
    """The checks can fail: an import up the layers and an import cycle are both reported."""
    assert "fastgan.kernels.common" in GRAPH["fastgan.kernels.bias_act"]
    for src, dst, test, match in (
            ("fastgan.functional.bias_act", "fastgan.train.trainer", test_imports_point_down_only,
             "fastgan.functional.bias_act -> fastgan.train.trainer"),
            ("fastgan.kernels.common", "fastgan.kernels.bias_act", test_no_import_cycles, "import cycle")):
        GRAPH[src].add(dst)
        try:
            with pytest.raises((AssertionError, pytest.fail.Exception), match=match):
                test()
        finally:
            GRAPH[src].discard(dst)
