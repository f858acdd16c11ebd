"""The XLA:CPU workarounds stay behind score_jax.models.cpu, checked on the source with `ast` (nothing
is imported or run):
  (a) a network file (score_jax/models/*.py) reaches them only as `from score_jax.models import cpu`
      and `cpu.<name>` for a name of the package's __all__, and never branches on the backend itself;
  (b) the cpu package imports nothing of score_jax outside itself (no network file, so no cycle)
      and its modules import each other without a cycle;
  (c) outside score_jax/models only the package's surface is imported (tests/test_cpu_*.py, the
      workarounds' own tests, look inside), and score_jax/xla_cpu.py, the XLA flags main.py applies
      before JAX starts, imports only the standard library.

Run as a script it prints score_jax's import graph as "module -> imports" lines:
  python tests/test_layering.py [prefix]     # e.g. score_jax.models (the default: all of score_jax)
"""

from __future__ import annotations

import ast
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CPU = "score_jax.models.cpu"
CPU_DIR = ROOT / "score_jax" / "models" / "cpu"
NETWORK_FILES = sorted((ROOT / "score_jax" / "models").glob("*.py"))  # not cpu/: glob does not recurse
OUTSIDE = sorted([p for p in (ROOT / "score_jax").rglob("*.py") if (ROOT / "score_jax" / "models") not in p.parents]
                 + [ROOT / "main.py"] + list((ROOT / "bench").glob("*.py")) + list((ROOT / "tests").glob("*.py")))


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: pathlib.Path) -> list[tuple[ast.stmt, str]]:
    """(import statement, imported module) pairs of a file; `from m import n` names module m.n when
    that is a module, else m."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package, up level - 1
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found += [(node, f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base) for a in node.names]
    return found


def graph(prefix: str = "score_jax") -> dict[str, list[str]]:
    """module -> the score_jax modules it imports, for every module of score_jax/ under `prefix`."""
    edges = {}
    for path in sorted((ROOT / "score_jax").rglob("*.py")):
        name = module_name(path)
        if name == prefix or name.startswith(prefix + "."):
            edges[name] = sorted({m for _, m in imports(path) if m.split(".")[0] == "score_jax"})
    return edges


def _surface() -> set[str]:
    """The names of score_jax.models.cpu's __all__."""
    for node in ast.parse((CPU_DIR / "__init__.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError("score_jax/models/cpu/__init__.py has no __all__")


def _inside_cpu(module: str) -> bool:
    return module.startswith(CPU + ".")


@pytest.mark.parametrize("path", NETWORK_FILES, ids=lambda p: p.name)
def test_network_files_use_the_workarounds_as_cpu_dot_name(path):
    for node, module in imports(path):
        assert not _inside_cpu(module), (
            f"{path.name}:{node.lineno} imports {module}; write `from score_jax.models import cpu` and cpu.<name>")
        if module == CPU:
            assert isinstance(node, ast.ImportFrom) and node.module == "score_jax.models" and all(
                a.asname is None for a in node.names if a.name == "cpu"), (
                f"{path.name}:{node.lineno}: import the package as `from score_jax.models import cpu`")
    tree = ast.parse(path.read_text())
    used = {(n.attr, n.lineno) for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "cpu"}
    outside = sorted((attr, line) for attr, line in used if attr not in _surface())
    assert not outside, f"{path.name} uses cpu.<name> outside the package's __all__: {outside}"
    backend = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "default_backend"]
    assert not backend, f"{path.name}:{backend} branches on the backend; that belongs in score_jax/models/cpu/"


def test_cpu_package_imports_only_itself_without_cycles():
    edges = graph(CPU)
    assert set(edges) >= {CPU, f"{CPU}.sums", f"{CPU}.switches"}
    for name, targets in edges.items():
        foreign = [t for t in targets if not _inside_cpu(t)]
        assert not foreign, f"{name} imports {foreign}: the workarounds may not depend on the networks"
    # Depth-first search for a cycle; the package's __init__ may import its modules, not the reverse.
    state = {}

    def visit(name, trail):
        assert state.get(name) != "open", f"import cycle: {' -> '.join(trail + [name])}"
        if state.get(name) is None:
            state[name] = "open"
            for target in edges.get(name, []):
                visit(target, trail + [name])
            state[name] = "done"

    for name in edges:
        visit(name, [])


@pytest.mark.parametrize("path", OUTSIDE, ids=lambda p: str(p.relative_to(ROOT)))
def test_outside_models_only_the_surface_is_imported(path):
    if path.parent.name == "tests" and path.name.startswith("test_cpu_"):
        return  # a workaround's own test looks inside it
    inside = sorted({m for _, m in imports(path) if _inside_cpu(m)})
    assert not inside, f"{path.relative_to(ROOT)} imports {inside}; use score_jax.models.cpu's __all__"


def test_xla_flags_load_nothing_but_the_standard_library():
    modules = {m.split(".")[0] for _, m in imports(ROOT / "score_jax" / "xla_cpu.py")}
    assert modules <= set(sys.stdlib_module_names) | {"__future__"}, modules


if __name__ == "__main__":
    for module, targets in graph(sys.argv[1] if len(sys.argv) > 1 else "score_jax").items():
        print(f"{module} -> {', '.join(targets) if targets else '(nothing in score_jax)'}")
