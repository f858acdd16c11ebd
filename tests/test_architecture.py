"""Keep the layering of STYLE.md honest by parsing imports (no module is imported or run)."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "score_jax"
MATH_MODULES = ["sde", "sampling", "likelihood", "controllable"]
FRAMEWORKS = ("flax", "optax", "orbax", "tensorflow", "tensorflow_datasets")


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("name", MATH_MODULES)
def test_maths_takes_score_functions_not_frameworks(name):
    path = PACKAGE / f"{name}.py"
    if not path.exists():
        pytest.skip(f"{name}.py not written yet")
    bad = {m for m in _imports(path) if m.split(".")[0] in FRAMEWORKS}
    assert not bad, f"score_jax/{name}.py imports {sorted(bad)}; it must only take score_fn(x, t)"


def test_sde_imports_nothing_from_score_jax_but_errors():
    imported = {m for m in _imports(PACKAGE / "sde.py") if m.startswith("score_jax")}
    assert not {m for m in imported if not m.startswith("score_jax.errors")}


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_library_never_reads_flags(path):
    assert not {m for m in _imports(path) if m.startswith("absl.flags") or m == "absl.flags"}


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_small(path):
    n = len(path.read_text().splitlines())
    assert n <= 650, f"{path.name} has {n} lines; split it by concept"


RUNTIME_MODES = ["train", "evaluate", "sample", "train_classifier", "fid_stats"]


@pytest.mark.parametrize("name", [m for m in RUNTIME_MODES if (PACKAGE / f"{m}.py").exists()])
def test_runtime_modes_do_not_import_each_other(name):
    """train, evaluate, sample, ... sit side by side: what they share belongs in experiment.py."""
    others = [f"score_jax.{m}" for m in RUNTIME_MODES if m != name]
    bad = {m for m in _imports(PACKAGE / f"{name}.py")
           if any(m == o or m.startswith(o + ".") for o in others)}
    assert not bad, f"score_jax/{name}.py imports {sorted(bad)}"
