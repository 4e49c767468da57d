"""The house rules, checked on the source: one-way layering, no import cycles, no private
names across modules, small modules.

Layers, lowest first: ``zoo`` (twin architectures) < ``converters`` (model <-> ONNX <-> model)
< ``parity`` (what a user runs). A module may import its own layer and the ones below it.
Every import statement counts, also those inside functions: a function-level import is
still a dependency, and a cycle through one is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"zoo": 0, "converters": 1, "parity": 2}
MAX_LINES = 400
LONG_FILE_MARKER = "Longer than 400 lines:"  # a module over the limit says why, near its top


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in LAYERS:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(imported project module, names taken from it, line) for every import statement in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if _is_package(path) else name.rpartition(".")[0]
    found: list[tuple[str, list[str], int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    found.append((alias.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = []
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:  # `from pkg import submodule`
                    found.append((sub, [], node.lineno))
                else:
                    names.append(alias.name)
            if names and base in modules:
                found.append((base, names, node.lineno))
    return found


def layer_of(module: str) -> int:
    return LAYERS[module.split(".")[0]]


def layering_violations(modules: dict[str, Path]) -> list[str]:
    out = []
    for name, path in modules.items():
        for target, _, line in imports_of(name, path, modules):
            if layer_of(target) > layer_of(name):
                out.append(f"{path.relative_to(ROOT)}:{line}: {name} imports {target} (a higher layer)")
    return out


def private_name_violations(modules: dict[str, Path]) -> list[str]:
    out = []
    for name, path in modules.items():
        for target, names, line in imports_of(name, path, modules):
            for n in names:
                if n.startswith("_") and target != name:
                    out.append(f"{path.relative_to(ROOT)}:{line}: {name} takes the private name {n!r} from {target}")
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in modules:
                        aliases[a.asname or a.name] = a.name
            elif isinstance(node, ast.ImportFrom) and node.module:
                for a in node.names:
                    if f"{node.module}.{a.name}" in modules:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.attr.startswith("_")
                    and not node.attr.startswith("__") and aliases.get(node.value.id, name) != name):
                out.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name} uses the private name "
                           f"{node.value.id}.{node.attr}")
    return out


def import_cycles(modules: dict[str, Path]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself)."""
    graph = {name: sorted({t for t, _, _ in imports_of(name, path, modules)}) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def long_files(modules: dict[str, Path]) -> list[str]:
    out = []
    for path in modules.values():
        text = path.read_text()
        n = text.count("\n")
        if n > MAX_LINES and LONG_FILE_MARKER not in "\n".join(text.splitlines()[:40]):
            out.append(f"{path.relative_to(ROOT)}: {n} lines, no '{LONG_FILE_MARKER} <reason>' near its top")
    return out


@pytest.fixture(scope="module")
def modules() -> dict[str, Path]:
    return project_modules()


def test_lower_layers_never_import_higher_ones(modules: dict[str, Path]) -> None:
    assert layering_violations(modules) == []


def test_no_import_cycles(modules: dict[str, Path]) -> None:
    assert import_cycles(modules) == []


def test_no_private_name_crosses_a_module_boundary(modules: dict[str, Path]) -> None:
    assert private_name_violations(modules) == []


def test_modules_stay_small_or_say_why(modules: dict[str, Path]) -> None:
    assert long_files(modules) == []


# The checks themselves, on a planted tree: each must see what it is for.


def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for package in LAYERS:
        (tmp_path / package).mkdir(exist_ok=True)
        (tmp_path / package / "__init__.py").touch()
    return project_modules(tmp_path)


def test_checks_catch_planted_violations(tmp_path: Path) -> None:
    mods = _tree(tmp_path, {
        "zoo/a.py": "def f():\n    from parity import b\n",          # upward, inside a function
        "parity/b.py": "from parity.c import _hidden\n",              # private name
        "parity/c.py": "import parity.b\n_hidden = 1\n",              # cycle b <-> c
        "converters/d.py": "from converters import e\ne._x\n",        # private attribute of a module
        "converters/e.py": "_x = 1\n",
        "converters/long.py": "x = 1\n" * (MAX_LINES + 1),
    })
    globals()["ROOT"], saved = tmp_path, ROOT
    try:
        assert [v.split(": ", 1)[1] for v in layering_violations(mods)] == ["zoo.a imports parity.b (a higher layer)"]
        assert import_cycles(mods) == [["parity.b", "parity.c"]]
        private = private_name_violations(mods)
        assert any("'_hidden' from parity.c" in v for v in private) and any("e._x" in v for v in private)
        assert len(long_files(mods)) == 1
    finally:
        globals()["ROOT"] = saved
