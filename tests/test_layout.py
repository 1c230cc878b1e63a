"""The map in ARCHITECTURE.md, checked against the code: which package may import which, no product
function over 80 lines, no ``hasattr`` probes in product code, tasks never run ``data_prep``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = {"bio_fm", "code_fm", "chem_fm"}
PRODUCT = ("fm_core", "bio_fm", "code_fm", "chem_fm", "tasks", "data_prep")
# what each package may import from this repository (ARCHITECTURE.md, "Allowed imports")
ALLOWED = {
    "fm_core": {"fm_core"},
    "bio_fm": {"bio_fm", "fm_core"},
    "code_fm": {"code_fm", "fm_core"},
    "chem_fm": {"chem_fm", "fm_core"},
    "tasks": {"tasks", "fm_core", *DOMAINS},
    "data_prep": {"data_prep", "fm_core", *DOMAINS},
}
OURS = set(PRODUCT) | {"bench", "tests", "fm_conf", "conf"}
MAX_FUNCTION_LINES = 80


def product_files() -> list[Path]:
    return sorted(p for pkg in PRODUCT for p in (ROOT / pkg).rglob("*.py"))


def imported_packages(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            found.add(str(node.args[0].value).split(".")[0])
    return found & OURS


@pytest.mark.parametrize("path", product_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path):
    package = path.relative_to(ROOT).parts[0]
    wrong = imported_packages(ast.parse(path.read_text())) - ALLOWED[package]
    assert not wrong, f"{path.relative_to(ROOT)} ({package}) imports {sorted(wrong)}; allowed: {sorted(ALLOWED[package])}"


def test_engine_names_no_domain():
    """fm_core knows no domain, not even by a list of names in code (docstrings and comments aside)."""
    offenders = []
    for path in (ROOT / "fm_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in OURS - {"fm_core"}:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not offenders, offenders


def test_no_long_functions():
    long = []
    for path in product_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long


def test_no_hasattr_probes():
    """Behaviour is chosen by ``_target_`` or by a method, never by probing an object for an attribute."""
    probes = []
    for path in product_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "hasattr":
                probes.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not probes, probes
