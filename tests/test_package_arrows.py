"""The package arrows of DESIGN.md and docs/INTERFACES.md, read from the source with `ast` (issue 13).

Data flows one way: `pipeline -> trainer (uses model) -> runstore <- evals`; the trainer's per-epoch
evals are a call into `evals`; `experiments` (sweeps and their report) drives `trainer` and `evals`
from above; `inspector` reads `runstore` (and `model` for live re-masking and parameter counts);
`common` imports nothing of the project, so every package may import it. Nothing imports
`experiments`, `inspector` or `benchmarks`. Every import counts, at any depth: one hidden inside a
function is still an arrow.
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# what each package may import of the project (itself included)
ALLOWED = {
    "common": {"common"},
    "model": {"common", "model"},
    "pipeline": {"common", "pipeline"},
    "runstore": {"common", "runstore"},
    "evals": {"common", "model", "pipeline", "runstore", "evals"},
    "trainer": {"common", "model", "pipeline", "runstore", "evals", "trainer"},
    "experiments": {"common", "model", "runstore", "evals", "trainer", "experiments"},
    "inspector": {"common", "model", "runstore", "inspector"},
    "benchmarks": {"common", "model", "pipeline", "runstore", "evals", "trainer", "benchmarks"},
}
PROJECT = set(ALLOWED)
# arrows still broken, as strict xfails (one that starts passing fails, so the mark goes when the
# import does); none left: evals reads checkpoint names and checksums from runstore.layout and
# common.files, the inspector its standard errors from common.stats
KNOWN_WRONG: dict[tuple[str, str], str] = {}


@functools.lru_cache(maxsize=None)
def _imports(package: str) -> tuple[tuple[str, str], ...]:
    """(top-level project package imported, 'file:line') of every import in ``package``, at any depth."""
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=rel)):
            if isinstance(node, ast.Import):
                tops = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                tops = [package] if node.level else [node.module.split(".")[0]]
            else:
                continue
            found += [(top, f"{rel}:{node.lineno}") for top in tops if top in PROJECT]
    return tuple(found)


def _arrow_cases() -> list:
    cases = []
    for package in sorted(ALLOWED):
        for target in sorted(PROJECT - ALLOWED[package]):
            reason = KNOWN_WRONG.get((package, target))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            cases.append(pytest.param(package, target, marks=marks, id=f"{package}-not-{target}"))
    return cases


@pytest.mark.parametrize("package, target", _arrow_cases())
def test_package_does_not_import(package, target):
    wrong = [where for top, where in _imports(package) if top == target]
    assert not wrong, f"{package} must not import {target}: {wrong}"


def test_every_package_is_known():
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    assert packages <= PROJECT, f"packages without arrows here: {sorted(packages - PROJECT)}"


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names)


def test_experiments_imports_at_module_top_and_never_optional():
    """A project import inside a function or behind `except ImportError` turns a breakage into a
    silent switch-off (issue 13); experiments has none."""
    wrong = []
    for path in sorted((REPO / "experiments").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        top = set(tree.body)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and node not in top:
                wrong.append(f"{rel}:{node.lineno} imports below module level")
            if isinstance(node, ast.Try) and any(_catches_import_error(h) for h in node.handlers):
                wrong.append(f"{rel}:{node.lineno} except ImportError")
    assert not wrong, wrong


def test_experiments_broad_excepts_say_why():
    """Each `except Exception` in experiments carries a comment on its line saying why it is broad."""
    wrong = []
    for path in sorted((REPO / "experiments").rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.ExceptHandler) and (node.type is None or (
                    isinstance(node.type, ast.Name) and node.type.id in ("Exception", "BaseException"))):
                if "#" not in lines[node.lineno - 1]:
                    wrong.append(f"{path.relative_to(REPO).as_posix()}:{node.lineno}")
    assert not wrong, wrong
